//! TensorBoard event files for `sparsec train`: every step's scalars (loss and its parts, learning
//! rate, grad norm, sparsity, epoch) and every evaluation's EM/F1, the values of
//! `train_log.jsonl` as `f32`. Files go to `<output-dir>/tensorboard/events.out.tfevents.<secs>.<host>.<pid>.0`,
//! the name PyTorch's `SummaryWriter` (which the HF Trainer uses) gives them, so
//! `tensorboard --logdir <output-dir>` shows them.
//!
//! Format: TFRecord framing (little-endian u64 length, masked CRC-32C of the length, the data,
//! masked CRC-32C of the data) around `tensorflow.Event` protobufs; the first event holds
//! `file_version: "brain.Event:2"`, each later one a `Summary` of `simple_value`s. On a resumed
//! run the folder is rewritten from the kept log lines and evaluations, so that it never holds
//! the steps a killed run did after its last checkpoint.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use prost::Message;

use super::log::{EvalRecord, StepLog};

/// `tensorflow.Event` (the fields sparsec writes).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    #[prost(int64, tag = "2")]
    pub step: i64,
    #[prost(oneof = "EventWhat", tags = "3, 5")]
    pub what: Option<EventWhat>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum EventWhat {
    #[prost(string, tag = "3")]
    FileVersion(String),
    #[prost(message, tag = "5")]
    Summary(Summary),
}

/// `tensorflow.Summary`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<SummaryValue>,
}

/// `tensorflow.Summary.Value` with a `simple_value`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryValue {
    #[prost(string, tag = "1")]
    pub tag: String,
    #[prost(float, optional, tag = "2")]
    pub simple_value: Option<f32>,
}

/// The folder under a training output folder that holds the event files.
pub const DIR: &str = "tensorboard";
const FILE_PREFIX: &str = "events.out.tfevents.";

fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    (crc.rotate_right(15)).wrapping_add(0xa282_ead8)
}

/// One TFRecord: length, its masked CRC, the data, its masked CRC.
pub fn frame(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

/// Reads the TFRecords of an event file back, checking both CRCs.
pub fn read_events(path: &Path) -> Result<Vec<Event>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read '{}'", path.display()))?;
    let mut out = Vec::new();
    let mut at = 0usize;
    let bad = |what: &str, at: usize| anyhow::anyhow!("'{}': {what} at byte {at}", path.display());
    while at < bytes.len() {
        let head = bytes.get(at..at + 12).ok_or_else(|| bad("truncated record header", at))?;
        let len = u64::from_le_bytes(head[..8].try_into().unwrap()) as usize;
        if u32::from_le_bytes(head[8..12].try_into().unwrap()) != masked_crc(&head[..8]) {
            return Err(bad("length CRC mismatch", at));
        }
        let end =
            (at + 12).checked_add(len).filter(|&e| e <= bytes.len()).ok_or_else(|| bad("truncated record", at))?;
        let data = &bytes[at + 12..end];
        let crc = bytes.get(end..end + 4).ok_or_else(|| bad("truncated record CRC", at))?;
        if u32::from_le_bytes(crc.try_into().unwrap()) != masked_crc(data) {
            return Err(bad("data CRC mismatch", at));
        }
        out.push(Event::decode(data).map_err(|e| bad(&format!("not an Event ({e})"), at))?);
        at += 16 + len;
    }
    Ok(out)
}

/// The event files in `dir`, in name order.
pub fn event_files(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list '{}'", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(FILE_PREFIX)))
        .collect();
    v.sort();
    Ok(v)
}

/// Appends events to one event file.
pub struct EventWriter {
    file: BufWriter<std::fs::File>,
    pub path: PathBuf,
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && !s.contains('/'))
        .unwrap_or_else(|| "localhost".into())
}

impl EventWriter {
    /// A new event file in `dir` (created), opened with its `file_version` event.
    pub fn create(dir: &Path) -> Result<EventWriter> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create '{}'", dir.display()))?;
        let secs = now() as u64;
        let path = dir.join(format!("{FILE_PREFIX}{secs}.{}.{}.0", hostname(), std::process::id()));
        let file = std::fs::File::create(&path).with_context(|| format!("cannot write '{}'", path.display()))?;
        let mut w = EventWriter { file: BufWriter::new(file), path };
        w.write(&Event { wall_time: now(), step: 0, what: Some(EventWhat::FileVersion("brain.Event:2".into())) })?;
        Ok(w)
    }

    fn write(&mut self, e: &Event) -> Result<()> {
        self.file
            .write_all(&frame(&e.encode_to_vec()))
            .with_context(|| format!("cannot write '{}'", self.path.display()))
    }

    /// One event holding `values` as scalars at `step`.
    pub fn scalars(&mut self, step: i64, values: &[(&str, f32)]) -> Result<()> {
        let value =
            values.iter().map(|(tag, v)| SummaryValue { tag: tag.to_string(), simple_value: Some(*v) }).collect();
        self.write(&Event { wall_time: now(), step, what: Some(EventWhat::Summary(Summary { value })) })
    }

    pub fn flush(&mut self) -> Result<()> {
        self.file.flush().with_context(|| format!("cannot write '{}'", self.path.display()))
    }
}

/// A step's scalars, by TensorBoard tag (HF's `train/…` names where it has one).
pub fn step_scalars(log: &StepLog) -> Vec<(&'static str, f32)> {
    let mut v = vec![("train/loss", log.loss)];
    if let Some(x) = log.loss_span {
        v.push(("train/loss_span", x));
    }
    if let Some(x) = log.loss_distill {
        v.push(("train/loss_distill", x));
    }
    if let Some(x) = log.loss_layer {
        v.push(("train/loss_layer", x));
    }
    v.extend([
        ("train/learning_rate", log.lr),
        ("train/grad_norm", log.grad_norm),
        ("train/sparsity", log.sparsity as f32),
        ("train/epoch", log.epoch as f32),
    ]);
    v
}

/// An evaluation's scalars.
pub fn eval_scalars(rec: &EvalRecord) -> Vec<(&'static str, f32)> {
    vec![("eval/exact_match", rec.exact_match as f32), ("eval/f1", rec.f1 as f32)]
}

/// The event file of one training run, written next to `train_log.jsonl`.
pub struct TrainEvents {
    writer: EventWriter,
}

impl TrainEvents {
    /// Replaces the event files of `output_dir/tensorboard` by one holding `kept` (the log lines a
    /// resumed run keeps) and `evals`, in step order; later steps are appended.
    pub fn open(output_dir: &Path, kept: &[StepLog], evals: &[EvalRecord]) -> Result<TrainEvents> {
        let dir = output_dir.join(DIR);
        for old in event_files(&dir)? {
            std::fs::remove_file(&old).with_context(|| format!("cannot remove '{}'", old.display()))?;
        }
        let mut t = TrainEvents { writer: EventWriter::create(&dir)? };
        let mut evals = evals.iter().peekable();
        for log in kept {
            while let Some(e) = evals.next_if(|e| e.step <= log.step) {
                t.writer.scalars(e.step as i64, &eval_scalars(e))?;
            }
            t.writer.scalars(log.step as i64, &step_scalars(log))?;
        }
        for e in evals {
            t.writer.scalars(e.step as i64, &eval_scalars(e))?;
        }
        t.writer.flush()?;
        Ok(t)
    }

    pub fn step(&mut self, log: &StepLog) -> Result<()> {
        self.writer.scalars(log.step as i64, &step_scalars(log))?;
        self.writer.flush()
    }

    pub fn eval(&mut self, rec: &EvalRecord) -> Result<()> {
        self.writer.scalars(rec.step as i64, &eval_scalars(rec))?;
        self.writer.flush()
    }
}

/// The log lines of a `train_log.jsonl` (after a resume truncated it).
pub fn read_log(path: &Path) -> Vec<StepLog> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<StepLog>(l).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_is_castagnoli() {
        // The CRC-32C check value (RFC 3720, appendix B.4).
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn events_read_back_with_their_scalars() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path()).unwrap();
        w.scalars(3, &[("train/loss", 1.25), ("train/lr", 5e-5)]).unwrap();
        w.flush().unwrap();
        let ev = read_events(&w.path).unwrap();
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0].what, Some(EventWhat::FileVersion("brain.Event:2".into())));
        let Some(EventWhat::Summary(s)) = &ev[1].what else { panic!("no summary") };
        assert_eq!(ev[1].step, 3);
        assert_eq!(s.value[0].tag, "train/loss");
        assert_eq!(s.value[0].simple_value, Some(1.25));
        assert_eq!(s.value[1].simple_value, Some(5e-5));
    }
}
