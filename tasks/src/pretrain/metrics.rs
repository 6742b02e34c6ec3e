//! `metrics.jsonl`: one JSON object per iteration, appended and flushed as it
//! happens. On resume the lines of iterations that will be re-run are cut, so
//! the file always describes one uninterrupted run.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Context, Result, TaskError};

/// One iteration's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// 0-based iteration.
    pub iteration: usize,
    /// Total loss.
    pub loss: f64,
    /// DINO, student locals vs teacher globals.
    pub dino_local: f64,
    /// DINO, student globals vs the other teacher global.
    pub dino_global: f64,
    /// KoLeo (weighted).
    pub koleo: f64,
    /// iBOT (weighted).
    pub ibot: f64,
    /// Learning rate.
    pub lr: f64,
    /// Prototype-layer learning rate.
    pub last_layer_lr: f64,
    /// Weight decay.
    pub wd: f64,
    /// Teacher momentum.
    pub momentum: f64,
    /// Teacher temperature.
    pub teacher_temp: f64,
    /// Student backbone gradient norm before clipping.
    pub grad_norm_backbone: f64,
    /// DINO head gradient norm before clipping.
    pub grad_norm_dino_head: f64,
    /// iBOT head gradient norm before clipping.
    pub grad_norm_ibot_head: f64,
    /// Masked tokens.
    pub n_masked: usize,
    /// Seconds spent waiting for the batch.
    pub data_wait_s: f64,
    /// Seconds of model work (forward, backward, update, EMA).
    pub compute_s: f64,
    /// Samples per second of this iteration (wait + compute).
    pub samples_per_s: f64,
    /// Items skipped while making this batch.
    pub skipped: usize,
    /// The losses as 3DINO's own logs show them (see [`ThreeDinoLosses`]),
    /// to overlay a 3DINO run's curves.
    #[serde(flatten)]
    pub threedino: ThreeDinoLosses,
    /// The cache folder could not be written: samples were served
    /// uncached (`--allow-uncached`).
    #[serde(default)]
    pub cache_unwritable: bool,
}

/// 3DINO's (DINOv2's) logged losses, which follow another convention than
/// the fields above: the DINO terms unweighted, KoLeo and iBOT at half of
/// what enters the loss (iBOT also unweighted), and `total_loss` the sum of
/// these four, not the loss that is backpropagated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ThreeDinoLosses {
    /// 3DINO's `dino_local_crops_loss`.
    #[serde(default, rename = "threedino_dino_local_crops_loss")]
    pub dino_local_crops_loss: f64,
    /// 3DINO's `dino_global_crops_loss`.
    #[serde(default, rename = "threedino_dino_global_crops_loss")]
    pub dino_global_crops_loss: f64,
    /// 3DINO's `koleo_loss`.
    #[serde(default, rename = "threedino_koleo_loss")]
    pub koleo_loss: f64,
    /// 3DINO's `ibot_loss`.
    #[serde(default, rename = "threedino_ibot_loss")]
    pub ibot_loss: f64,
    /// 3DINO's `total_loss`.
    #[serde(default, rename = "threedino_total_loss")]
    pub total_loss: f64,
}

impl ThreeDinoLosses {
    /// From dino3d's terms (`dino_local`, `dino_global`, `koleo`, `ibot`, each
    /// weighted as it enters the loss) and the DINO and iBOT weights.
    pub fn new(terms: [f64; 4], dino_weight: f64, ibot_weight: f64) -> ThreeDinoLosses {
        let unweighted = |v: f64, w: f64| if w == 0.0 { 0.0 } else { v / w };
        let [dino_local, dino_global, koleo, ibot] = terms;
        let t = ThreeDinoLosses {
            dino_local_crops_loss: unweighted(dino_local, dino_weight),
            dino_global_crops_loss: unweighted(dino_global, dino_weight),
            koleo_loss: koleo / 2.0,
            ibot_loss: unweighted(ibot, ibot_weight) / 2.0,
            total_loss: 0.0,
        };
        ThreeDinoLosses {
            total_loss: t.dino_local_crops_loss
                + t.dino_global_crops_loss
                + t.koleo_loss
                + t.ibot_loss,
            ..t
        }
    }
}

/// The open log.
pub struct MetricsLog {
    file: File,
    path: PathBuf,
    /// Bytes of whole lines in the file (a failed append is cut back to it).
    len: u64,
    /// Lines a full disk has not let through yet, oldest first.
    pending: Vec<String>,
}

impl MetricsLog {
    /// Opens `<out>/metrics.jsonl`, keeping only the records of iterations
    /// before `resume_at`; returns them too (for the loss curve).
    pub fn open(out: &Path, resume_at: usize) -> Result<(Self, Vec<Record>)> {
        let path = out.join("metrics.jsonl");
        let mut kept = Vec::new();
        // The lines of completed iterations, kept byte for byte: history
        // is never re-serialised (that once moved values by an ulp).
        let mut lines = Vec::new();
        if let Ok(f) = File::open(&path) {
            for line in BufReader::new(f).lines() {
                let line = line?;
                // A torn last line (killed mid-write) is dropped.
                if let Ok(r) = serde_json::from_str::<Record>(&line)
                    && r.iteration < resume_at
                {
                    kept.push(r);
                    lines.push(line);
                }
            }
        }
        // Rewrite atomically, then append.
        let tmp = out.join(".metrics.jsonl.tmp");
        {
            let mut t =
                File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
            for line in &lines {
                writeln!(t, "{line}")?;
            }
            t.sync_all()?;
        }
        fs::rename(&tmp, &path)?;
        let file = OpenOptions::new().append(true).open(&path)?;
        let len = file.metadata()?.len();
        let log = Self {
            file,
            path,
            len,
            pending: Vec::new(),
        };
        Ok((log, kept))
    }

    /// Appends one record. On a full disk the line is kept in memory (and
    /// any torn part cut off) and written, in order, once space returns:
    /// returns how many lines wait (0 when all are in the file).
    ///
    /// # Errors
    /// Any other write failure.
    pub fn write(&mut self, r: &Record) -> Result<usize> {
        self.pending.push(serde_json::to_string(r)?);
        match self.write_pending() {
            Err(e) if e.is_out_of_space() => Ok(self.pending.len()),
            other => other.map(|()| 0),
        }
    }

    /// Writes the lines a full disk held back.
    ///
    /// # Errors
    /// When they still cannot be written.
    pub fn write_pending(&mut self) -> Result<()> {
        while let Some(line) = self.pending.first() {
            let bytes = format!("{line}\n");
            if let Err(e) = self.file.write_all(bytes.as_bytes()) {
                // A torn line would glue onto the next one: cut it off.
                let _ = self.file.set_len(self.len);
                return Err(TaskError::from(e).context(format!("writing {}", self.path.display())));
            }
            self.len += bytes.len() as u64;
            self.pending.remove(0);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(iteration: usize) -> Record {
        Record {
            iteration,
            loss: iteration as f64,
            dino_local: 0.0,
            dino_global: 0.0,
            koleo: 0.0,
            ibot: 0.0,
            lr: 0.0,
            last_layer_lr: 0.0,
            wd: 0.0,
            momentum: 0.0,
            teacher_temp: 0.0,
            grad_norm_backbone: 0.0,
            grad_norm_dino_head: 0.0,
            grad_norm_ibot_head: 0.0,
            n_masked: 0,
            data_wait_s: 0.0,
            compute_s: 0.0,
            samples_per_s: 0.0,
            skipped: 0,
            threedino: ThreeDinoLosses::default(),
            cache_unwritable: false,
        }
    }

    /// Lines a full disk holds back are written, in order and whole, when
    /// space returns.
    #[cfg(target_os = "linux")]
    #[test]
    fn lines_wait_out_a_full_disk_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = MetricsLog::open(dir.path(), 0).unwrap();
        assert_eq!(log.write(&rec(0)).unwrap(), 0);
        let real = std::mem::replace(
            &mut log.file,
            OpenOptions::new().append(true).open("/dev/full").unwrap(),
        );
        assert_eq!(log.write(&rec(1)).unwrap(), 1);
        assert_eq!(log.write(&rec(2)).unwrap(), 2);
        assert!(log.write_pending().unwrap_err().is_out_of_space());
        log.file = real;
        assert_eq!(log.write(&rec(3)).unwrap(), 0);
        let text = fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
        let its: Vec<usize> = text
            .lines()
            .map(|l| serde_json::from_str::<Record>(l).unwrap().iteration)
            .collect();
        assert_eq!(its, [0, 1, 2, 3]);
        // Other failures are errors at once.
        log.file = File::open(dir.path().join("metrics.jsonl")).unwrap();
        assert!(log.write(&rec(4)).is_err());
    }

    /// 3DINO's convention on a hand-computed case: weights 1 (DINO) and 2
    /// (iBOT); KoLeo and iBOT halved, iBOT unweighted, total the sum.
    #[test]
    fn threedino_losses_follow_its_logging_convention() {
        let t = ThreeDinoLosses::new([3.0, 5.0, 0.25, 4.0], 1.0, 2.0);
        assert_eq!(
            t,
            ThreeDinoLosses {
                dino_local_crops_loss: 3.0,
                dino_global_crops_loss: 5.0,
                koleo_loss: 0.125,
                ibot_loss: 1.0,
                total_loss: 9.125,
            }
        );
        let json = serde_json::to_string(&Record {
            threedino: t,
            ..rec(0)
        })
        .unwrap();
        assert!(json.contains("\"threedino_total_loss\":9.125"), "{json}");
    }

    /// Lines of completed iterations come back byte for byte on resume,
    /// whatever their number formatting.
    #[test]
    fn resume_keeps_earlier_lines_verbatim() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let mut lines = Vec::new();
        for i in 0..3 {
            let mut text = serde_json::to_string(&rec(i)).unwrap();
            // A number as another writer might print it (not serde's shortest form).
            text = text.replacen(
                "\"lr\":0.0",
                "\"lr\":0.1000000000000000055511151231257827",
                1,
            );
            lines.push(text);
        }
        fs::write(&path, lines.join("\n") + "\n").unwrap();
        let (_log, kept) = MetricsLog::open(dir.path(), 2).unwrap();
        assert_eq!(kept.len(), 2);
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text, lines[..2].join("\n") + "\n");
    }

    #[test]
    fn resume_cuts_records_that_will_be_rerun_and_torn_lines() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, old) = MetricsLog::open(dir.path(), 0).unwrap();
        assert!(old.is_empty());
        for i in 0..5 {
            log.write(&rec(i)).unwrap();
        }
        drop(log);
        let path = dir.path().join("metrics.jsonl");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        write!(f, "{{\"iteration\": 5, \"lo").unwrap();
        drop(f);
        let (mut log, kept) = MetricsLog::open(dir.path(), 3).unwrap();
        assert_eq!(
            kept.iter().map(|r| r.iteration).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        log.write(&rec(3)).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 4);
    }
}
