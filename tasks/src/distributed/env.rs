//! Who this process is in a job: the torchrun contract, else SLURM's
//! variables, else one process alone.

use std::collections::HashMap;

use super::DistError;
use super::nodelist;

/// The torchrun variables; all six or none (3DINO's `distributed` module).
pub const TORCHRUN_VARS: [&str; 6] = [
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
];

/// First port of the SLURM convention: `MASTER_PORT = 20000 + job id mod
/// 40000`, so concurrent jobs on one node rarely collide and the port stays
/// below the usual ephemeral range (Linux: from 32768 up, a collision there
/// fails loudly at bind).
pub const SLURM_PORT_BASE: u16 = 20000;
/// Size of the SLURM port range.
pub const SLURM_PORT_SPAN: u64 = 40000;

/// Where the layout came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaunchSource {
    /// No launcher variables: one process, rank 0 of 1.
    Single,
    /// torchrun (or `dino-run launch`, which sets the same six).
    Torchrun,
    /// `srun`, derived from `SLURM_*`.
    Slurm,
}

/// This process's place in the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchEnv {
    /// Global rank, `0..world_size`.
    pub rank: usize,
    /// Processes in the job.
    pub world_size: usize,
    /// Rank on this node: the GPU this process takes.
    pub local_rank: usize,
    /// Processes on this node.
    pub local_world_size: usize,
    /// Host of rank 0's bootstrap listener.
    pub master_addr: String,
    /// Its port.
    pub master_port: u16,
    /// Where this came from.
    pub source: LaunchSource,
}

impl LaunchEnv {
    /// One process alone.
    pub fn single() -> Self {
        Self {
            rank: 0,
            world_size: 1,
            local_rank: 0,
            local_world_size: 1,
            master_addr: "127.0.0.1".into(),
            master_port: 29500,
            source: LaunchSource::Single,
        }
    }

    /// Whether this process writes checkpoints, metrics and pictures.
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    /// The six torchrun variables describing this process (what
    /// `dino-run launch` sets for its children).
    pub fn torchrun_vars(&self) -> [(&'static str, String); 6] {
        [
            ("RANK", self.rank.to_string()),
            ("WORLD_SIZE", self.world_size.to_string()),
            ("LOCAL_RANK", self.local_rank.to_string()),
            ("LOCAL_WORLD_SIZE", self.local_world_size.to_string()),
            ("MASTER_ADDR", self.master_addr.clone()),
            ("MASTER_PORT", self.master_port.to_string()),
        ]
    }

    /// Reads the process environment (non-UTF-8 values count as unset).
    pub fn from_process_env() -> Result<Self, DistError> {
        Self::from_vars(&std::env::vars().collect())
    }

    /// Reads `vars`: the torchrun six if any is set, else SLURM's if
    /// `SLURM_PROCID` is set (an `srun` task), else one process.
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Self, DistError> {
        let get = |k: &str| vars.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
        let present: Vec<&str> = TORCHRUN_VARS
            .iter()
            .copied()
            .filter(|k| get(k).is_some())
            .collect();
        let env = if !present.is_empty() {
            let missing: Vec<&str> = TORCHRUN_VARS
                .iter()
                .copied()
                .filter(|k| get(k).is_none())
                .collect();
            if !missing.is_empty() {
                return Err(DistError::Env(format!(
                    "the torchrun variables are set only in part: {} set, {} missing \
                     (set all six for a distributed run, or none for one process)",
                    present.join(", "),
                    missing.join(", ")
                )));
            }
            let num = |k: &str| number(k, get(k).unwrap_or_default());
            Self {
                rank: num("RANK")?,
                world_size: num("WORLD_SIZE")?,
                local_rank: num("LOCAL_RANK")?,
                local_world_size: num("LOCAL_WORLD_SIZE")?,
                master_addr: get("MASTER_ADDR").unwrap_or_default().to_string(),
                master_port: port("MASTER_PORT", get("MASTER_PORT").unwrap_or_default())?,
                source: LaunchSource::Torchrun,
            }
        } else if get("SLURM_PROCID").is_some() {
            from_slurm(&get)?
        } else {
            return Ok(Self::single());
        };
        env.check()?;
        Ok(env)
    }

    fn check(&self) -> Result<(), DistError> {
        let fail = |m: String| Err(DistError::Env(m));
        if self.world_size == 0 {
            return fail("the world size is 0".into());
        }
        if self.rank >= self.world_size {
            return fail(format!(
                "rank {} is not below the world size {}",
                self.rank, self.world_size
            ));
        }
        if self.local_world_size == 0 || self.local_world_size > self.world_size {
            return fail(format!(
                "the local world size {} must be between 1 and the world size {}",
                self.local_world_size, self.world_size
            ));
        }
        if self.local_rank >= self.local_world_size {
            return fail(format!(
                "local rank {} is not below the local world size {}",
                self.local_rank, self.local_world_size
            ));
        }
        if self.local_rank > self.rank {
            return fail(format!(
                "local rank {} is above the global rank {}",
                self.local_rank, self.rank
            ));
        }
        Ok(())
    }
}

fn number(name: &str, value: &str) -> Result<usize, DistError> {
    value
        .parse()
        .map_err(|_| DistError::Env(format!("{name}={value} is not a whole number")))
}

fn port(name: &str, value: &str) -> Result<u16, DistError> {
    match value.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(DistError::Env(format!(
            "{name}={value} is not a port (1 to 65535)"
        ))),
    }
}

/// SLURM's mapping (3DINO's, commented out there): RANK = `SLURM_PROCID`,
/// WORLD_SIZE = `SLURM_NTASKS`, LOCAL_RANK = `SLURM_LOCALID`, MASTER_ADDR =
/// the first host of `SLURM_JOB_NODELIST`, MASTER_PORT from the job id.
fn from_slurm<'a>(get: &impl Fn(&str) -> Option<&'a str>) -> Result<LaunchEnv, DistError> {
    // Older SLURM spells two of them differently.
    let either = |a: &str, b: &str| get(a).or_else(|| get(b));
    let needed = [
        ("SLURM_PROCID", get("SLURM_PROCID")),
        ("SLURM_NTASKS", either("SLURM_NTASKS", "SLURM_NPROCS")),
        ("SLURM_LOCALID", get("SLURM_LOCALID")),
        (
            "SLURM_JOB_NODELIST",
            either("SLURM_JOB_NODELIST", "SLURM_NODELIST"),
        ),
        ("SLURM_JOB_ID", either("SLURM_JOB_ID", "SLURM_JOBID")),
    ];
    let missing: Vec<&str> = needed
        .iter()
        .filter(|(_, v)| v.is_none())
        .map(|(k, _)| *k)
        .collect();
    if !missing.is_empty() {
        return Err(DistError::Env(format!(
            "SLURM_PROCID is set (an srun task) but {} missing; \
             or set the six torchrun variables instead",
            missing.join(", ")
        )));
    }
    let value = |i: usize| needed[i].1.unwrap_or_default();
    let world_size = number("SLURM_NTASKS", value(1))?;
    let job_id: u64 = value(4)
        .parse()
        .map_err(|_| DistError::Env(format!("SLURM_JOB_ID={} is not a number", value(4))))?;
    Ok(LaunchEnv {
        rank: number("SLURM_PROCID", value(0))?,
        world_size,
        local_rank: number("SLURM_LOCALID", value(2))?,
        local_world_size: slurm_local_world_size(get, world_size)?,
        master_addr: nodelist::first_host(value(3))?,
        master_port: SLURM_PORT_BASE + (job_id % SLURM_PORT_SPAN) as u16,
        source: LaunchSource::Slurm,
    })
}

/// Tasks on this node: `SLURM_NTASKS_PER_NODE` when set (`--ntasks-per-node`),
/// else this node's count in `SLURM_TASKS_PER_NODE` (`2(x3),1`) at
/// `SLURM_NODEID`, else `SLURM_NTASKS / SLURM_JOB_NUM_NODES` when it divides.
fn slurm_local_world_size<'a>(
    get: &impl Fn(&str) -> Option<&'a str>,
    world_size: usize,
) -> Result<usize, DistError> {
    if let Some(v) = get("SLURM_NTASKS_PER_NODE") {
        return number("SLURM_NTASKS_PER_NODE", v);
    }
    if let (Some(list), Some(node)) = (get("SLURM_TASKS_PER_NODE"), get("SLURM_NODEID")) {
        let node = number("SLURM_NODEID", node)?;
        return tasks_on_node(list, node);
    }
    if let Some(nodes) = get("SLURM_JOB_NUM_NODES").or_else(|| get("SLURM_NNODES")) {
        let nodes = number("SLURM_JOB_NUM_NODES", nodes)?;
        if nodes > 0 && world_size.is_multiple_of(nodes) {
            return Ok(world_size / nodes);
        }
        return Err(DistError::Env(format!(
            "SLURM_NTASKS={world_size} does not divide over SLURM_JOB_NUM_NODES={nodes}; \
             set --ntasks-per-node"
        )));
    }
    Err(DistError::Env(
        "cannot tell the tasks per node: none of SLURM_NTASKS_PER_NODE, \
         SLURM_TASKS_PER_NODE with SLURM_NODEID, SLURM_JOB_NUM_NODES is set"
            .into(),
    ))
}

/// Count for `node` in SLURM's `2(x3),1` syntax.
fn tasks_on_node(list: &str, node: usize) -> Result<usize, DistError> {
    let bad = || DistError::Env(format!("SLURM_TASKS_PER_NODE={list} is not like 2(x3),1"));
    let mut seen = 0usize;
    for item in list.split(',') {
        let (count, repeat) = match item.split_once("(x") {
            Some((c, r)) => (c, r.strip_suffix(')').ok_or_else(bad)?),
            None => (item, "1"),
        };
        let count: usize = count.parse().map_err(|_| bad())?;
        let repeat: usize = repeat.parse().map_err(|_| bad())?;
        seen = seen.saturating_add(repeat);
        if node < seen {
            return Ok(count);
        }
    }
    Err(DistError::Env(format!(
        "SLURM_NODEID={node} is beyond the {seen} nodes of SLURM_TASKS_PER_NODE={list}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn torchrun(rank: &str) -> HashMap<String, String> {
        vars(&[
            ("RANK", rank),
            ("WORLD_SIZE", "8"),
            ("LOCAL_RANK", "1"),
            ("LOCAL_WORLD_SIZE", "4"),
            ("MASTER_ADDR", "node01"),
            ("MASTER_PORT", "29500"),
        ])
    }

    fn slurm() -> HashMap<String, String> {
        vars(&[
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_NTASKS_PER_NODE", "4"),
            ("SLURM_JOB_NODELIST", "gpu[01-04,07]"),
            ("SLURM_JOB_ID", "123456"),
        ])
    }

    #[test]
    fn nothing_set_is_one_process() {
        let e = LaunchEnv::from_vars(&vars(&[("PATH", "/bin"), ("RANK", "  ")])).unwrap();
        assert_eq!(e, LaunchEnv::single());
        assert!(e.is_main());
    }

    #[test]
    fn torchrun_contract() {
        let e = LaunchEnv::from_vars(&torchrun("5")).unwrap();
        assert_eq!(
            (e.rank, e.world_size, e.local_rank, e.local_world_size),
            (5, 8, 1, 4)
        );
        assert_eq!((e.master_addr.as_str(), e.master_port), ("node01", 29500));
        assert_eq!(e.source, LaunchSource::Torchrun);
        assert!(!e.is_main());
        // Round trip through the variables `launch` sets.
        let back: HashMap<String, String> = e
            .torchrun_vars()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert_eq!(LaunchEnv::from_vars(&back).unwrap(), e);
    }

    #[test]
    fn torchrun_wins_over_slurm() {
        let mut v = slurm();
        v.extend(torchrun("2"));
        assert_eq!(
            LaunchEnv::from_vars(&v).unwrap().source,
            LaunchSource::Torchrun
        );
    }

    #[test]
    fn partial_torchrun_names_what_is_missing() {
        let mut v = torchrun("0");
        v.remove("LOCAL_WORLD_SIZE");
        v.remove("MASTER_PORT");
        let e = LaunchEnv::from_vars(&v).unwrap_err().to_string();
        assert!(e.contains("missing"), "{e}");
        assert!(e.contains("LOCAL_WORLD_SIZE, MASTER_PORT missing"), "{e}");
        assert!(
            e.contains("RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR set"),
            "{e}"
        );
        let e = LaunchEnv::from_vars(&vars(&[("MASTER_ADDR", "x")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("RANK, WORLD_SIZE"), "{e}");
    }

    #[test]
    fn bad_torchrun_values_are_errors() {
        for (key, value, why) in [
            ("RANK", "8", "rank 8 is not below the world size 8"),
            ("RANK", "-1", "RANK=-1 is not a whole number"),
            ("WORLD_SIZE", "0", "world size is 0"),
            ("LOCAL_RANK", "4", "local rank 4 is not below"),
            ("LOCAL_WORLD_SIZE", "9", "local world size 9"),
            ("MASTER_PORT", "0", "MASTER_PORT=0 is not a port"),
            ("MASTER_PORT", "70000", "is not a port"),
            ("WORLD_SIZE", "eight", "WORLD_SIZE=eight"),
        ] {
            let mut v = torchrun("5");
            v.insert(key.into(), value.into());
            let e = LaunchEnv::from_vars(&v).unwrap_err().to_string();
            assert!(e.contains(why), "{key}={value}: {e}");
        }
        // Local rank above the global rank cannot happen.
        let mut v = torchrun("0");
        v.insert("LOCAL_RANK".into(), "2".into());
        assert!(LaunchEnv::from_vars(&v).is_err());
    }

    #[test]
    fn slurm_mapping() {
        let e = LaunchEnv::from_vars(&slurm()).unwrap();
        assert_eq!(
            (e.rank, e.world_size, e.local_rank, e.local_world_size),
            (5, 8, 1, 4)
        );
        assert_eq!(e.master_addr, "gpu01");
        assert_eq!(e.master_port, 20000 + (123456 % 40000) as u16);
        assert_eq!(e.source, LaunchSource::Slurm);
    }

    #[test]
    fn slurm_port_stays_in_range() {
        for id in ["0", "39999", "40000", "18446744073709551615"] {
            let mut v = slurm();
            v.insert("SLURM_JOB_ID".into(), id.into());
            let p = LaunchEnv::from_vars(&v).unwrap().master_port;
            assert!((20000..60000).contains(&p), "{id}: {p}");
        }
    }

    #[test]
    fn slurm_local_world_size_fallbacks() {
        let mut v = slurm();
        v.remove("SLURM_NTASKS_PER_NODE");
        v.insert("SLURM_TASKS_PER_NODE".into(), "3(x2),2".into());
        v.insert("SLURM_NODEID".into(), "2".into());
        v.insert("SLURM_LOCALID".into(), "1".into());
        assert_eq!(LaunchEnv::from_vars(&v).unwrap().local_world_size, 2);
        v.insert("SLURM_NODEID".into(), "1".into());
        assert_eq!(LaunchEnv::from_vars(&v).unwrap().local_world_size, 3);
        v.insert("SLURM_NODEID".into(), "3".into());
        let e = LaunchEnv::from_vars(&v).unwrap_err().to_string();
        assert!(e.contains("beyond the 3 nodes"), "{e}");
        v.insert("SLURM_TASKS_PER_NODE".into(), "3(x2".into());
        assert!(
            LaunchEnv::from_vars(&v)
                .unwrap_err()
                .to_string()
                .contains("not like")
        );

        let mut v = slurm();
        v.remove("SLURM_NTASKS_PER_NODE");
        v.insert("SLURM_JOB_NUM_NODES".into(), "2".into());
        assert_eq!(LaunchEnv::from_vars(&v).unwrap().local_world_size, 4);
        v.insert("SLURM_JOB_NUM_NODES".into(), "3".into());
        let e = LaunchEnv::from_vars(&v).unwrap_err().to_string();
        assert!(e.contains("does not divide"), "{e}");
        v.remove("SLURM_JOB_NUM_NODES");
        let e = LaunchEnv::from_vars(&v).unwrap_err().to_string();
        assert!(e.contains("tasks per node"), "{e}");
    }

    #[test]
    fn partial_slurm_names_what_is_missing() {
        let mut v = slurm();
        v.remove("SLURM_JOB_NODELIST");
        v.remove("SLURM_JOB_ID");
        let e = LaunchEnv::from_vars(&v).unwrap_err().to_string();
        assert!(
            e.contains("SLURM_JOB_NODELIST, SLURM_JOB_ID missing"),
            "{e}"
        );
        // The old spellings are accepted.
        v.insert("SLURM_NODELIST".into(), "node-[1,3-5],login1".into());
        v.insert("SLURM_JOBID".into(), "7".into());
        let e = LaunchEnv::from_vars(&v).unwrap();
        assert_eq!((e.master_addr.as_str(), e.master_port), ("node-1", 20007));
    }

    #[test]
    fn bad_slurm_values_are_errors() {
        for (key, value, why) in [
            ("SLURM_JOB_NODELIST", "gpu[01-", "without ']'"),
            ("SLURM_JOB_ID", "abc", "SLURM_JOB_ID=abc"),
            ("SLURM_PROCID", "8", "rank 8 is not below"),
            ("SLURM_NTASKS_PER_NODE", "x", "SLURM_NTASKS_PER_NODE=x"),
        ] {
            let mut v = slurm();
            v.insert(key.into(), value.into());
            let e = LaunchEnv::from_vars(&v).unwrap_err().to_string();
            assert!(e.contains(why), "{key}={value}: {e}");
        }
    }
}
