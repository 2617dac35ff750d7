//! Checking a hash chain (`sluice audit verify FILE...`): the files, given oldest
//! first, must form one chain — every line a JSON record whose `prev` is the
//! SHA-256 of the line before and whose `seq` is one more.
//!
//! The first line given is accepted as the start (a chain from its very beginning
//! has 64 zeros as `prev`). Lines removed from the *end* of the newest file cannot
//! be detected from the files alone: the report gives the last `seq` and digest so
//! an operator can record them elsewhere and compare later.
//!
//! A line that is not a record is accepted only as a torn write — an incomplete
//! line left by a crash — and only when the next record chains to the line before
//! it (the writer continues the chain that way); such lines are listed in the
//! report, never silently skipped.

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;

use super::file::{GENESIS, digest, hex};

/// What a successful check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records checked.
    pub lines: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    /// The first record's `prev` is 64 zeros: the chain is complete from its start.
    pub from_genesis: bool,
    /// SHA-256 (hex) of the last record; kept elsewhere, it anchors the end.
    pub last_digest: String,
    /// Torn lines the chain continues around, as `file: line N`.
    pub torn_lines: Vec<String>,
}

/// Where the chain breaks, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyError {
    pub file: PathBuf,
    /// 1-based; `None` for a problem with the whole file.
    pub line: Option<u64>,
    pub message: String,
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for VerifyError {}

/// The last record accepted.
struct Last {
    seq: u64,
    digest: [u8; 32],
    file: usize,
    line: u64,
}

/// A line that is not a record, judged by the record after it.
struct Suspect {
    file: usize,
    line: u64,
    why: String,
}

/// Checks that `paths`, in order, form one chain.
pub fn verify(paths: &[PathBuf]) -> Result<VerifyReport, VerifyError> {
    let error = |file: usize, line: Option<u64>, message: String| VerifyError {
        file: paths.get(file).cloned().unwrap_or_default(),
        line,
        message,
    };
    if paths.is_empty() {
        return Err(error(0, None, "no files to verify".into()));
    }
    let mut last: Option<Last> = None;
    let mut suspect: Option<Suspect> = None;
    let (mut lines, mut first_seq, mut from_genesis) = (0, 0, false);
    let mut torn_lines = Vec::new();
    let not_a_record = |s: &Suspect| {
        error(
            s.file,
            Some(s.line),
            format!(
                "not an audit record ({}): a line was altered or inserted",
                s.why
            ),
        )
    };
    for (index, path) in paths.iter().enumerate() {
        let file = File::open(path).map_err(|e| error(index, None, format!("cannot read: {e}")))?;
        let mut reader = BufReader::new(file);
        let mut buf = Vec::new();
        let mut number = 0;
        loop {
            buf.clear();
            let read = reader
                .read_until(b'\n', &mut buf)
                .map_err(|e| error(index, Some(number + 1), format!("cannot read: {e}")))?;
            if read == 0 {
                break;
            }
            number += 1;
            // The writer treats a line without newline as torn whatever it holds.
            let parsed = if buf.pop_if(|b| *b == b'\n').is_some() {
                parse(&buf)
            } else {
                Err("incomplete: no newline".into())
            };
            let (seq, prev) = match parsed {
                Ok(record) => record,
                Err(why) => {
                    if let Some(s) = &suspect {
                        return Err(not_a_record(s));
                    }
                    suspect = Some(Suspect {
                        file: index,
                        line: number,
                        why,
                    });
                    continue;
                }
            };
            match &last {
                None => {
                    // Only a chain's first write can follow a torn line with no record before.
                    if let Some(s) = &suspect
                        && prev != GENESIS
                    {
                        return Err(not_a_record(s));
                    }
                    first_seq = seq;
                    from_genesis = prev == GENESIS;
                }
                Some(before) => {
                    if prev != before.digest {
                        if let Some(s) = &suspect {
                            return Err(not_a_record(s));
                        }
                        let which = if before.file == index {
                            format!("line {}", before.line)
                        } else {
                            format!(
                                "the last line of {} (line {})",
                                paths[before.file].display(),
                                before.line
                            )
                        };
                        return Err(error(
                            index,
                            Some(number),
                            format!(
                                "`prev` does not match the digest of {which}: a line was altered, inserted or removed{}",
                                if before.file == index {
                                    ""
                                } else {
                                    ", or the files are not consecutive and in order"
                                }
                            ),
                        ));
                    }
                    if seq != before.seq + 1 {
                        return Err(error(
                            index,
                            Some(number),
                            format!(
                                "`seq` is {seq}, expected {}: records were renumbered",
                                before.seq + 1
                            ),
                        ));
                    }
                }
            }
            if let Some(s) = suspect.take() {
                torn_lines.push(format!("{}: line {}", paths[s.file].display(), s.line));
            }
            lines += 1;
            last = Some(Last {
                seq,
                digest: digest(&buf),
                file: index,
                line: number,
            });
        }
    }
    if let Some(s) = suspect {
        if s.why.starts_with("incomplete") {
            torn_lines.push(format!("{}: line {}", paths[s.file].display(), s.line));
        } else {
            return Err(not_a_record(&s));
        }
    }
    let Some(last) = last else {
        return Err(error(paths.len() - 1, None, "no audit records".into()));
    };
    Ok(VerifyReport {
        lines,
        first_seq,
        last_seq: last.seq,
        from_genesis,
        last_digest: hex(&last.digest),
        torn_lines,
    })
}

/// `seq` and `prev` of a record line.
fn parse(line: &[u8]) -> Result<(u64, [u8; 32]), String> {
    let value: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| format!("not JSON: {e}"))?;
    let seq = value
        .get("seq")
        .and_then(serde_json::Value::as_u64)
        .ok_or("no numeric `seq`")?;
    let prev = value
        .get("prev")
        .and_then(serde_json::Value::as_str)
        .and_then(unhex)
        .ok_or("no `prev` of 64 hex digits")?;
    Ok((seq, prev))
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let digit = |b: u8| (b as char).to_digit(16);
        out[i] = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
    }
    Some(out)
}

/// `ok: N lines, seq A..B, last digest H`, then a note per thing worth knowing.
impl fmt::Display for VerifyReport {
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            out,
            "ok: {} lines, seq {}..{}, last digest {}",
            self.lines, self.first_seq, self.last_seq, self.last_digest
        )?;
        if !self.from_genesis {
            write!(
                out,
                "\nnote: the chain starts at seq {} (earlier files were not given, or were deleted by rotation)",
                self.first_seq
            )?;
        }
        for torn in &self.torn_lines {
            write!(
                out,
                "\nnote: {torn} is a torn write (cut short by a crash); the chain continues around it"
            )?;
        }
        Ok(())
    }
}
