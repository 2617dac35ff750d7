//! JSON lines on standard output, for a container's log collector: the same
//! records as the file, without the chain fields. One lock per batch keeps a
//! batch's lines together.

use std::io::Write;

use super::Line;
use super::writer::WriteResult;

pub(super) fn write(lines: &[Line]) -> WriteResult {
    let mut bytes = Vec::with_capacity(lines.iter().map(|l| l.body.len() + 1).sum());
    for line in lines {
        bytes.extend_from_slice(line.body.as_bytes());
        bytes.push(b'\n');
    }
    let mut out = std::io::stdout().lock();
    out.write_all(&bytes)
        .and_then(|()| out.flush())
        .map_err(|e| (0, format!("cannot write: {e}")))
}
