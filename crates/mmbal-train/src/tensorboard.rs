//! TensorBoard event files: scalars as TensorBoard's own writer frames them (TFRecord records,
//! each an `Event` protocol buffer with a `Summary.Value` holding `simple_value`), so that
//! `tensorboard --logdir runs` shows a run live. Written here rather than through a crate: the
//! crates that do (tensorboard-rs, syntaxdot-summary) are no longer maintained, and the format
//! is four protobuf fields in a CRC-framed record. Checked byte for byte against TensorBoard
//! 2.18's `RecordWriter` and `Event` protos (tests/fixtures/gen_tensorboard.py).

use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// CRC-32C as TFRecord masks it.
fn masked_crc(data: &[u8]) -> u32 {
    const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
    let c = CRC32C.checksum(data);
    c.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited field.
fn bytes_field(field: u32, data: &[u8], out: &mut Vec<u8>) {
    varint(u64::from(field << 3 | 2), out);
    varint(data.len() as u64, out);
    out.extend_from_slice(data);
}

/// An `Event` with its wall time, step (left out when 0, as proto3 does) and one more field.
fn event(wall_time: f64, step: i64, rest: &[u8]) -> Vec<u8> {
    let mut e = vec![0x09];
    e.extend_from_slice(&wall_time.to_le_bytes());
    if step != 0 {
        e.push(0x10);
        varint(step as u64, &mut e);
    }
    e.extend_from_slice(rest);
    e
}

/// The TFRecord framing: length, its masked CRC, the data, its masked CRC.
fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut r = Vec::with_capacity(data.len() + 16);
    r.extend_from_slice(&len);
    r.extend_from_slice(&masked_crc(&len).to_le_bytes());
    r.extend_from_slice(data);
    r.extend_from_slice(&masked_crc(data).to_le_bytes());
    r
}

/// The file-version event every event file starts with.
pub fn file_version_record(wall_time: f64) -> Vec<u8> {
    let mut rest = Vec::new();
    bytes_field(3, b"brain.Event:2", &mut rest);
    record(&event(wall_time, 0, &rest))
}

/// One scalar as an event record (`Summary { value { tag, simple_value } }` at `step`).
pub fn scalar_record(tag: &str, step: i64, value: f32, wall_time: f64) -> Vec<u8> {
    let mut v = Vec::new();
    bytes_field(1, tag.as_bytes(), &mut v);
    v.push(0x15);
    v.extend_from_slice(&value.to_le_bytes());
    let mut summary = Vec::new();
    bytes_field(1, &v, &mut summary);
    let mut rest = Vec::new();
    bytes_field(5, &summary, &mut rest);
    record(&event(wall_time, step, &rest))
}

/// An event file in a run folder, written as records come (flushed after each call).
pub struct EventWriter {
    path: PathBuf,
    file: std::fs::File,
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl EventWriter {
    /// A new `events.out.tfevents.<seconds>.mmbal.<pid>.<n>` in `dir`, starting with the
    /// file-version event. A resumed run starts another file; TensorBoard reads them together.
    pub fn create(dir: &Path) -> Result<EventWriter> {
        // One file per writer, even two in one second of one process.
        static WRITERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = WRITERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let t = now();
        let path = dir.join(format!(
            "events.out.tfevents.{:010}.mmbal.{}.{n}",
            t as u64,
            std::process::id()
        ));
        let mut file = std::fs::File::create(&path)
            .with_context(|| format!("{}: cannot create", path.display()))?;
        file.write_all(&file_version_record(t))
            .with_context(|| format!("{}: cannot write", path.display()))?;
        Ok(EventWriter { path, file })
    }

    /// Where the events go.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Scalars `(tag, value)` at `step`, stamped now; non-finite values are written as they
    /// are (TensorBoard shows them).
    pub fn scalars(&mut self, step: i64, values: &[(String, f64)]) -> Result<()> {
        let t = now();
        let mut buf = Vec::new();
        for (tag, v) in values {
            buf.extend(scalar_record(tag, step, *v as f32, t));
        }
        self.file
            .write_all(&buf)
            .and_then(|_| self.file.flush())
            .with_context(|| format!("{}: cannot write", self.path.display()))
    }
}
