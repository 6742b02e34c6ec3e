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
    /// `SLURM_PROCID` and `SLURM_STEP_NUM_TASKS` are set (an `srun` task;
    /// a batch script itself is one process), else one process.
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
        } else if get("SLURM_PROCID").is_some() && get("SLURM_STEP_NUM_TASKS").is_some() {
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

/// SLURM's mapping (3DINO's, commented out there, read from the step):
/// RANK = `SLURM_PROCID`, WORLD_SIZE = `SLURM_STEP_NUM_TASKS`, LOCAL_RANK =
/// `SLURM_LOCALID`, MASTER_ADDR = the first host of `SLURM_STEP_NODELIST`
/// (else `SLURM_JOB_NODELIST`), MASTER_PORT from the job id. The step's
/// variables, not the job's: an srun may use part of the allocation, and a
/// batch script (which has `SLURM_PROCID=0` and the job's `SLURM_NTASKS`
/// but no step variables) is one process.
fn from_slurm<'a>(get: &impl Fn(&str) -> Option<&'a str>) -> Result<LaunchEnv, DistError> {
    // Older SLURM spells some differently.
    let either = |a: &str, b: &str| get(a).or_else(|| get(b));
    let nodelist = get("SLURM_STEP_NODELIST")
        .or_else(|| get("SLURM_JOB_NODELIST"))
        .or_else(|| get("SLURM_NODELIST"));
    let needed = [
        ("SLURM_PROCID", get("SLURM_PROCID")),
        ("SLURM_STEP_NUM_TASKS", get("SLURM_STEP_NUM_TASKS")),
        ("SLURM_LOCALID", get("SLURM_LOCALID")),
        ("SLURM_STEP_NODELIST", nodelist),
        ("SLURM_JOB_ID", either("SLURM_JOB_ID", "SLURM_JOBID")),
    ];
    let missing: Vec<&str> = needed
        .iter()
        .filter(|(_, v)| v.is_none())
        .map(|(k, _)| *k)
        .collect();
    if !missing.is_empty() {
        return Err(DistError::Env(format!(
            "this is an srun task (SLURM_PROCID and SLURM_STEP_NUM_TASKS are set) but {} \
             missing; or set the six torchrun variables instead",
            missing.join(", ")
        )));
    }
    let value = |i: usize| needed[i].1.unwrap_or_default();
    let world_size = number("SLURM_STEP_NUM_TASKS", value(1))?;
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

/// Tasks on this node: the step's `SLURM_STEP_TASKS_PER_NODE` (`2(x3),1`)
/// when every node has the same count, else its entry at `SLURM_NODEID`;
/// else `SLURM_NTASKS_PER_NODE` (`--ntasks-per-node`); else the step's
/// tasks over `SLURM_STEP_NUM_NODES` when that divides.
fn slurm_local_world_size<'a>(
    get: &impl Fn(&str) -> Option<&'a str>,
    world_size: usize,
) -> Result<usize, DistError> {
    if let Some(list) = get("SLURM_STEP_TASKS_PER_NODE") {
        let counts = tasks_per_node(list)?;
        if let Some(&c) = counts.first()
            && counts.iter().all(|&x| x == c)
        {
            return Ok(c);
        }
        if let Some(node) = get("SLURM_NODEID") {
            let node = number("SLURM_NODEID", node)?;
            return counts.get(node).copied().ok_or_else(|| {
                DistError::Env(format!(
                    "SLURM_NODEID={node} is beyond the {} nodes of SLURM_STEP_TASKS_PER_NODE={list}",
                    counts.len()
                ))
            });
        }
    }
    if let Some(v) = get("SLURM_NTASKS_PER_NODE") {
        return number("SLURM_NTASKS_PER_NODE", v);
    }
    if let Some(nodes) = get("SLURM_STEP_NUM_NODES") {
        let nodes = number("SLURM_STEP_NUM_NODES", nodes)?;
        if nodes > 0 && world_size.is_multiple_of(nodes) {
            return Ok(world_size / nodes);
        }
        return Err(DistError::Env(format!(
            "SLURM_STEP_NUM_TASKS={world_size} does not divide over SLURM_STEP_NUM_NODES={nodes}; \
             set --ntasks-per-node"
        )));
    }
    Err(DistError::Env(
        "cannot tell the tasks per node: none of SLURM_STEP_TASKS_PER_NODE, \
         SLURM_NTASKS_PER_NODE, SLURM_STEP_NUM_NODES is set"
            .into(),
    ))
}

/// Per-node counts of SLURM's `2(x3),1` syntax, expanded (bounded by the
/// nodes a job can have).
fn tasks_per_node(list: &str) -> Result<Vec<usize>, DistError> {
    const MAX_NODES: usize = 1 << 20;
    let bad = || {
        DistError::Env(format!(
            "SLURM_STEP_TASKS_PER_NODE={list} is not like 2(x3),1"
        ))
    };
    let mut counts = Vec::new();
    for item in list.split(',') {
        let (count, repeat) = match item.split_once("(x") {
            Some((c, r)) => (c, r.strip_suffix(')').ok_or_else(bad)?),
            None => (item, "1"),
        };
        let count: usize = count.parse().map_err(|_| bad())?;
        let repeat: usize = repeat.parse().map_err(|_| bad())?;
        if repeat > MAX_NODES - counts.len() {
            return Err(bad());
        }
        counts.extend(std::iter::repeat_n(count, repeat));
    }
    Ok(counts)
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

    /// What srun gives task 5 of an 8-task step on 2 nodes of a 5-node job.
    fn slurm() -> HashMap<String, String> {
        vars(&[
            ("SLURM_PROCID", "5"),
            ("SLURM_STEP_NUM_TASKS", "8"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_NODEID", "1"),
            ("SLURM_STEP_TASKS_PER_NODE", "4(x2)"),
            ("SLURM_STEP_NUM_NODES", "2"),
            ("SLURM_STEP_NODELIST", "gpu[03-04]"),
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
        // The step's first node, not the job's.
        assert_eq!(e.master_addr, "gpu03");
        assert_eq!(e.master_port, 20000 + (123456 % 40000) as u16);
        assert_eq!(e.source, LaunchSource::Slurm);
    }

    #[test]
    fn a_batch_script_is_one_process() {
        // sbatch --ntasks=4 runs the script as task 0 with the job's
        // variables but no step: it is not one of 4 ranks.
        let v = vars(&[
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "4"),
            ("SLURM_LOCALID", "0"),
            ("SLURM_JOB_NODELIST", "gpu[01-04]"),
            ("SLURM_JOB_ID", "7"),
        ]);
        assert_eq!(LaunchEnv::from_vars(&v).unwrap(), LaunchEnv::single());
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
        let set = |v: &mut HashMap<String, String>, k: &str, x: &str| {
            v.insert(k.to_string(), x.to_string());
        };
        // Uneven step: this node's entry.
        let mut v = slurm();
        set(&mut v, "SLURM_STEP_TASKS_PER_NODE", "3(x2),2");
        set(&mut v, "SLURM_STEP_NUM_TASKS", "8");
        set(&mut v, "SLURM_NODEID", "2");
        assert_eq!(LaunchEnv::from_vars(&v).unwrap().local_world_size, 2);
        set(&mut v, "SLURM_NODEID", "1");
        assert_eq!(LaunchEnv::from_vars(&v).unwrap().local_world_size, 3);
        set(&mut v, "SLURM_NODEID", "3");
        let e = LaunchEnv::from_vars(&v).unwrap_err().to_string();
        assert!(e.contains("beyond the 3 nodes"), "{e}");
        set(&mut v, "SLURM_STEP_TASKS_PER_NODE", "3(x2");
        let e = LaunchEnv::from_vars(&v).unwrap_err().to_string();
        assert!(e.contains("not like"), "{e}");
        set(&mut v, "SLURM_STEP_TASKS_PER_NODE", "1(x99999999999)");
        assert!(LaunchEnv::from_vars(&v).is_err());

        // No per-node list: --ntasks-per-node, then tasks over nodes.
        let mut v = slurm();
        v.remove("SLURM_STEP_TASKS_PER_NODE");
        set(&mut v, "SLURM_NTASKS_PER_NODE", "4");
        assert_eq!(LaunchEnv::from_vars(&v).unwrap().local_world_size, 4);
        v.remove("SLURM_NTASKS_PER_NODE");
        assert_eq!(LaunchEnv::from_vars(&v).unwrap().local_world_size, 4);
        set(&mut v, "SLURM_STEP_NUM_NODES", "3");
        let e = LaunchEnv::from_vars(&v).unwrap_err().to_string();
        assert!(e.contains("does not divide"), "{e}");
        v.remove("SLURM_STEP_NUM_NODES");
        let e = LaunchEnv::from_vars(&v).unwrap_err().to_string();
        assert!(e.contains("tasks per node"), "{e}");
    }

    #[test]
    fn partial_slurm_names_what_is_missing() {
        let mut v = slurm();
        for k in ["SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_JOB_ID"] {
            v.remove(k);
        }
        let e = LaunchEnv::from_vars(&v).unwrap_err().to_string();
        assert!(
            e.contains("SLURM_STEP_NODELIST, SLURM_JOB_ID missing"),
            "{e}"
        );
        v.remove("SLURM_LOCALID");
        let e = LaunchEnv::from_vars(&v).unwrap_err().to_string();
        assert!(e.contains("SLURM_LOCALID, SLURM_STEP_NODELIST"), "{e}");
        // The old spellings are accepted.
        v.insert("SLURM_LOCALID".into(), "1".into());
        v.insert("SLURM_NODELIST".into(), "node-[1,3-5],login1".into());
        v.insert("SLURM_JOBID".into(), "7".into());
        let e = LaunchEnv::from_vars(&v).unwrap();
        assert_eq!((e.master_addr.as_str(), e.master_port), ("node-1", 20007));
    }

    #[test]
    fn bad_slurm_values_are_errors() {
        for (key, value, why) in [
            ("SLURM_STEP_NODELIST", "gpu[01-", "without ']'"),
            ("SLURM_JOB_ID", "abc", "SLURM_JOB_ID=abc"),
            ("SLURM_PROCID", "8", "rank 8 is not below"),
            ("SLURM_STEP_NUM_TASKS", "x", "SLURM_STEP_NUM_TASKS=x"),
            ("SLURM_STEP_TASKS_PER_NODE", "x", "is not like"),
        ] {
            let mut v = slurm();
            v.insert(key.into(), value.into());
            let e = LaunchEnv::from_vars(&v).unwrap_err().to_string();
            assert!(e.contains(why), "{key}={value}: {e}");
        }
    }
}
