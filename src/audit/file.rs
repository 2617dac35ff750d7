//! The hash-chained JSON-lines file: every line is one record,
//! `{"seq":N,"time":…,"event":…,…,"prev":"<sha256 hex of the previous line>"}`, the
//! first line of a chain having 64 zeros. Removing, inserting or altering a line
//! breaks the chain at the next line (`verify.rs`).
//!
//! - Restart: the chain continues from the last complete line of the file (or of
//!   the newest rotated file, when the live one is missing or empty). A torn last
//!   line (a crash mid-write, no newline) is kept as evidence and ended with a
//!   newline before the next record, which chains to the last *complete* line;
//!   `verify` reports the torn line and accepts the chain around it.
//! - Rotation: before a write would grow the file past `max_size`, it is renamed to
//!   `<path>.<UTC yyyymmddThhmmss.ffffff>` (names sort by age) and a new file starts
//!   whose first line chains to the rotated file's last; the oldest rotated files
//!   beyond `keep` are deleted.
//! - The path is checked before each batch: if it no longer names the open file
//!   (moved or deleted), a new file is created there, continuing the chain. If
//!   that fails (the directory is gone), the write fails and is retried. The
//!   directory is created at start only: one that vanishes later is a fault to
//!   report, not to paper over.
//! - Each batch is one `write_all` and a flush, not fsynced (like pgaudit: best
//!   effort against crashes, not transactional).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use chrono::{TimeDelta, Utc};
use sha2::{Digest, Sha256};

use super::Line;
use super::writer::WriteResult;

/// The `prev` of a chain's first line.
pub(super) const GENESIS: [u8; 32] = [0; 32];

pub(super) fn digest(line: &[u8]) -> [u8; 32] {
    Sha256::digest(line).into()
}

pub(super) fn hex(digest: &[u8; 32]) -> String {
    let mut out = Vec::with_capacity(64);
    super::json::push_hex(&mut out, digest);
    String::from_utf8(out).unwrap_or_default()
}

/// Appends one chained line (without its newline): the record's object `body` with
/// `"seq":N` put first and `"prev":"<hex>"` last. The digest chain covers exactly
/// these bytes, so they must not change shape: `verify` checks files written by
/// every version.
pub(super) fn push_chain_line(out: &mut Vec<u8>, seq: u64, body: &str, prev: &[u8; 32]) {
    let inner = body
        .strip_prefix('{')
        .and_then(|b| b.strip_suffix('}'))
        .unwrap_or("");
    out.extend_from_slice(b"{\"seq\":");
    let mut digits = String::new();
    super::json::push_u64(&mut digits, seq);
    out.extend_from_slice(digits.as_bytes());
    if !inner.is_empty() {
        out.push(b',');
        out.extend_from_slice(inner.as_bytes());
    }
    out.extend_from_slice(b",\"prev\":\"");
    super::json::push_hex(out, prev);
    out.extend_from_slice(b"\"}");
}

pub(super) struct FileSink {
    path: PathBuf,
    file: File,
    /// (device, inode) of the open file, to notice the path naming another file.
    identity: Option<(u64, u64)>,
    /// Bytes known to be in the open file.
    size: u64,
    max_size: u64,
    keep: usize,
    /// `seq` and digest of the chain's last written line (0 and zeros before any).
    seq: u64,
    prev: [u8; 32],
    /// The file ends in an incomplete line: the next write starts with a newline.
    torn: bool,
}

impl FileSink {
    /// Opens (or creates) the file and picks up its chain.
    pub(super) fn open(path: &Path, max_size: u64, keep: usize) -> Result<FileSink, String> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create the audit directory {}: {e}", dir.display()))?;
        }
        let mut file = open_append(path)
            .map_err(|e| format!("cannot open the audit file {}: {e}", path.display()))?;
        let read_error =
            |e: io::Error| format!("cannot read the audit file {}: {e}", path.display());
        let meta = file.metadata().map_err(read_error)?;
        let tail = read_tail(&mut file, meta.len()).map_err(read_error)?;
        let mut last = tail.last_line.map(|line| (path.to_owned(), line));
        if last.is_none() {
            // A crash between rotating and writing leaves the live file empty.
            last = newest_rotated_line(path).map_err(read_error)?;
        }
        let (seq, prev) = match last {
            Some((from, line)) => {
                let seq = record_seq(&line).map_err(|why| {
                    format!(
                        "{}: the last line is not an audit record ({why}); move the file away or set another audit.file.path",
                        from.display()
                    )
                })?;
                (seq, digest(&line))
            }
            None => (0, GENESIS),
        };
        Ok(FileSink {
            path: path.to_owned(),
            identity: identity(&meta),
            file,
            size: meta.len(),
            max_size: max_size.max(1),
            keep,
            seq,
            prev,
            torn: tail.torn,
        })
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Appends records, rotating as needed. On error, reports how many of `lines`
    /// are in the file; the chain state covers exactly those.
    pub(super) fn write(&mut self, lines: &[Line]) -> WriteResult {
        self.ensure_open().map_err(|e| (0, e))?;
        let mut committed = 0;
        let mut pending = Pending::default();
        if self.torn {
            pending.bytes.push(b'\n');
            pending.prefix = 1;
        }
        pending
            .bytes
            .reserve(lines.iter().map(|l| l.body.len() + 100).sum());
        let (mut seq, mut prev) = (self.seq, self.prev);
        for line in lines {
            // The line is rendered in place; when it would overflow the file, what
            // comes before it is written, the file rotated, and the line moved to
            // the next batch (its text depends on the chain, not on the file).
            let mut start = pending.bytes.len();
            push_chain_line(&mut pending.bytes, seq + 1, &line.body, &prev);
            let len = (pending.bytes.len() - start) as u64;
            let before = self.size + start as u64;
            if before > 0 && before + len + 1 > self.max_size {
                let text = pending.bytes.split_off(start);
                committed += self.append(&pending).map_err(|(n, e)| (committed + n, e))?;
                pending = Pending {
                    bytes: text,
                    ..Pending::default()
                };
                start = 0;
                self.rotate().map_err(|e| (committed, e))?;
            }
            seq += 1;
            prev = digest(&pending.bytes[start..]);
            pending.bytes.push(b'\n');
            pending.ends.push((pending.bytes.len(), seq, prev));
        }
        self.append(&pending).map_err(|(n, e)| (committed + n, e))?;
        Ok(())
    }

    /// Reopens the path when it no longer names the open file.
    fn ensure_open(&mut self) -> Result<(), String> {
        let current = std::fs::metadata(&self.path).ok();
        if current.is_some_and(|m| identity(&m) == self.identity) {
            return Ok(());
        }
        let mut file = open_append(&self.path)
            .map_err(|e| format!("cannot reopen {}: {e}", self.path.display()))?;
        let meta = file
            .metadata()
            .map_err(|e| format!("cannot read {}: {e}", self.path.display()))?;
        let torn = ends_torn(&mut file, meta.len())
            .map_err(|e| format!("cannot read {}: {e}", self.path.display()))?;
        tracing::warn!(
            path = %self.path.display(),
            "the audit file was moved or deleted; the chain continues in a new file at its path"
        );
        self.file = file;
        self.identity = identity(&meta);
        self.size = meta.len();
        self.torn = torn;
        Ok(())
    }

    /// Writes `pending` with one `write_all`; returns how many records it held.
    fn append(&mut self, pending: &Pending) -> Result<usize, (usize, String)> {
        if pending.bytes.is_empty() {
            return Ok(0);
        }
        let result = self
            .file
            .write_all(&pending.bytes)
            .and_then(|()| self.file.flush());
        match result {
            Ok(()) => {
                self.size += pending.bytes.len() as u64;
                self.torn = false;
                if let Some(&(_, seq, prev)) = pending.ends.last() {
                    (self.seq, self.prev) = (seq, prev);
                }
                Ok(pending.ends.len())
            }
            Err(e) => {
                // The chain continues from whatever complete lines reached the file.
                let now = self.file.metadata().map_or(self.size, |m| m.len());
                let landed = now.saturating_sub(self.size) as usize;
                let complete = pending.ends.iter().take_while(|e| e.0 <= landed).count();
                if let Some(&(_, seq, prev)) = pending.ends[..complete].last() {
                    (self.seq, self.prev) = (seq, prev);
                }
                if landed > 0 {
                    let at_boundary =
                        landed == pending.prefix || pending.ends.iter().any(|end| end.0 == landed);
                    self.torn = !at_boundary;
                }
                self.size = now;
                Err((
                    complete,
                    format!("cannot write {}: {e}", self.path.display()),
                ))
            }
        }
    }

    fn rotate(&mut self) -> Result<(), String> {
        let mut stamp = Utc::now();
        let mut target = rotated_name(&self.path, &stamp);
        // Two rotations within one microsecond: take the next free stamp.
        for _ in 0..1000 {
            if !target.exists() {
                break;
            }
            stamp += TimeDelta::microseconds(1);
            target = rotated_name(&self.path, &stamp);
        }
        std::fs::rename(&self.path, &target).map_err(|e| {
            format!(
                "cannot rotate {} to {}: {e}",
                self.path.display(),
                target.display()
            )
        })?;
        let file = open_append(&self.path)
            .map_err(|e| format!("cannot create {}: {e}", self.path.display()))?;
        let meta = file
            .metadata()
            .map_err(|e| format!("cannot read {}: {e}", self.path.display()))?;
        self.file = file;
        self.identity = identity(&meta);
        self.size = meta.len();
        self.torn = false;
        self.prune();
        Ok(())
    }

    /// Deletes the oldest rotated files beyond `keep`; failures are logged only.
    fn prune(&self) {
        let rotated = match rotated_files(&self.path) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot list rotated audit files");
                return;
            }
        };
        let excess = rotated.len().saturating_sub(self.keep);
        for old in &rotated[..excess] {
            if let Err(e) = std::fs::remove_file(old) {
                tracing::warn!(path = %old.display(), error = %e, "cannot delete an old audit file");
            }
        }
    }
}

/// A batch's bytes, and where each record ends in them (with its seq and digest).
#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    /// Bytes before the first record: the newline ending a torn line.
    prefix: usize,
    ends: Vec<(usize, u64, [u8; 32])>,
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)
}

#[cfg(unix)]
fn identity(meta: &std::fs::Metadata) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    Some((meta.dev(), meta.ino()))
}

#[cfg(not(unix))]
fn identity(_: &std::fs::Metadata) -> Option<(u64, u64)> {
    None
}

/// `seq` of a chained line.
pub(super) fn record_seq(line: &[u8]) -> Result<u64, String> {
    let value: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| format!("not JSON: {e}"))?;
    value
        .get("seq")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| "no numeric `seq`".to_string())
}

fn rotated_name(path: &Path, stamp: &chrono::DateTime<Utc>) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{}", stamp.format("%Y%m%dT%H%M%S%.6f")));
    PathBuf::from(name)
}

/// The rotated files of `path`, oldest first.
pub(super) fn rotated_files(path: &Path) -> io::Result<Vec<PathBuf>> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return Ok(Vec::new());
    };
    let prefix = format!("{name}.");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let entry = entry?;
        let file_name = entry.file_name();
        let Some(stamp) = file_name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        if is_rotation_stamp(stamp) {
            found.push(dir.join(&file_name));
        }
    }
    found.sort();
    Ok(found)
}

/// `yyyymmddThhmmss.ffffff`
fn is_rotation_stamp(stamp: &str) -> bool {
    stamp.len() == 22
        && stamp.bytes().enumerate().all(|(i, b)| match i {
            8 => b == b'T',
            15 => b == b'.',
            _ => b.is_ascii_digit(),
        })
}

fn newest_rotated_line(path: &Path) -> io::Result<Option<(PathBuf, Vec<u8>)>> {
    for rotated in rotated_files(path)?.into_iter().rev() {
        let mut file = File::open(&rotated)?;
        let len = file.metadata()?.len();
        if let Some(line) = read_tail(&mut file, len)?.last_line {
            return Ok(Some((rotated, line)));
        }
    }
    Ok(None)
}

struct Tail {
    /// The last newline-terminated line, without its newline.
    last_line: Option<Vec<u8>>,
    /// Bytes follow the last newline.
    torn: bool,
}

/// Reads the end of a file backwards, so a large file costs one line's worth.
fn read_tail(file: &mut File, len: u64) -> io::Result<Tail> {
    let torn = ends_torn(file, len)?;
    let end = if torn {
        newline_before(file, len)?
    } else {
        len.checked_sub(1)
    };
    let Some(end) = end else {
        return Ok(Tail {
            last_line: None,
            torn,
        });
    };
    let start = newline_before(file, end)?.map_or(0, |p| p + 1);
    let mut line = vec![0; (end - start) as usize];
    file.seek(SeekFrom::Start(start))?;
    file.read_exact(&mut line)?;
    Ok(Tail {
        last_line: Some(line),
        torn,
    })
}

fn ends_torn(file: &mut File, len: u64) -> io::Result<bool> {
    if len == 0 {
        return Ok(false);
    }
    let mut last = [0u8; 1];
    file.seek(SeekFrom::Start(len - 1))?;
    file.read_exact(&mut last)?;
    Ok(last[0] != b'\n')
}

/// The offset of the last newline before `end`.
fn newline_before(file: &mut File, end: u64) -> io::Result<Option<u64>> {
    let mut chunk = vec![0u8; 64 * 1024];
    let mut high = end;
    while high > 0 {
        let low = high.saturating_sub(chunk.len() as u64);
        let part = &mut chunk[..(high - low) as usize];
        file.seek(SeekFrom::Start(low))?;
        file.read_exact(part)?;
        if let Some(i) = part.iter().rposition(|&b| b == b'\n') {
            return Ok(Some(low + i as u64));
        }
        high = low;
    }
    Ok(None)
}

#[cfg(test)]
mod chain_tests {
    /// The chained line as it was built before `push_chain_line` (`format!`).
    fn reference(seq: u64, body: &str, prev: &[u8; 32]) -> String {
        let inner = body
            .strip_prefix('{')
            .and_then(|b| b.strip_suffix('}'))
            .unwrap_or("");
        let prev: String = prev.iter().map(|b| format!("{b:02x}")).collect();
        let parts = [
            format!("\"seq\":{seq}"),
            inner.to_owned(),
            format!("\"prev\":\"{prev}\""),
        ];
        let parts: Vec<&str> = parts
            .iter()
            .map(String::as_str)
            .filter(|p| !p.is_empty())
            .collect();
        format!("{{{}}}", parts.join(","))
    }

    #[test]
    fn chained_lines_keep_their_shape() {
        let prev: [u8; 32] = std::array::from_fn(|i| (i * 37) as u8);
        for body in [
            "{\"time\":\"t\",\"event\":\"login\"}",
            "{}",
            "not an object",
            "",
        ] {
            for seq in [1, 10, 123_456_789] {
                let mut out = b"kept".to_vec();
                super::push_chain_line(&mut out, seq, body, &prev);
                assert_eq!(&out[..4], b"kept");
                assert_eq!(
                    String::from_utf8(out[4..].to_vec()).unwrap(),
                    reference(seq, body, &prev)
                );
            }
        }
    }
}
