//! The message relay between a client and its upstream session.
//!
//! Upstream messages are copied into the client's output buffer whole, without
//! decoding (only tags are looked at), and the buffer is flushed to the client when it
//! fills or when the upstream has nothing more buffered: a slow client stops the
//! relay reading, and TCP backpressure reaches the upstream. COPY data from the
//! client goes the other way the same way.

use std::io;

use bytes::BytesMut;

use std::sync::{Arc, OnceLock};

use crate::error::PgError;
use crate::redshift::wire::{self, UpstreamConn};
use crate::wire::connection::{Connection, Disconnect, FLUSH_THRESHOLD};
use crate::wire::frame;

/// When the relay stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// At ReadyForQuery (after a simple query or a Sync).
    Ready,
    /// When the forwarded extended-protocol messages have all been answered (after a
    /// Flush, or before a message Sluice answers itself).
    Answered,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// ReadyForQuery relayed, with its transaction status.
    Ready(u8),
    /// Every forwarded message answered.
    Answered,
    /// An extended-protocol error: the upstream skips everything until Sync.
    Failed,
}

pub enum RelayError {
    /// The upstream connection broke; `reported` if a FATAL error already told the client.
    Upstream {
        error: io::Error,
        reported: bool,
    },
    Client(Disconnect),
}

impl From<Disconnect> for RelayError {
    fn from(d: Disconnect) -> Self {
        RelayError::Client(d)
    }
}

/// How relayed statements ended, read off the answers as they pass (the record
/// stage's rows, SQLSTATE and error). One entry per CommandComplete,
/// EmptyQueryResponse, PortalSuspended or ErrorResponse.
#[derive(Debug, Default)]
pub struct Tally {
    pub done: Vec<Completion>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Completion {
    /// The row count of the command tag (`SELECT 5`, `INSERT 0 5`), when it has one.
    pub rows: Option<u64>,
    /// The SQLSTATE and message of an ErrorResponse.
    pub error: Option<(String, String)>,
    /// When the answer passed, and the client's `bytes_sent()` just after it (set
    /// by the relay; `None` for a completion summed over several answers).
    pub ended: Option<(std::time::Instant, u64)>,
}

/// The row count of a CommandComplete body (`SELECT 5`, `INSERT 0 5`), when its tag
/// has one.
pub(crate) fn command_rows(body: &[u8]) -> Option<u64> {
    let tag = body.strip_suffix(&[0]).unwrap_or(body);
    tag.rsplit(|b| *b == b' ')
        .next()
        .filter(|n| !n.is_empty() && n.len() < 20 && n.iter().all(u8::is_ascii_digit))
        .and_then(|n| std::str::from_utf8(n).ok())
        .and_then(|n| n.parse().ok())
}

impl Tally {
    pub(crate) fn completed(&mut self, body: &[u8]) {
        self.done.push(Completion {
            rows: command_rows(body),
            ..Completion::default()
        });
    }

    pub(crate) fn failed(&mut self, body: &[u8]) {
        let mut code = String::new();
        let mut message = String::new();
        for field in body.split(|b| *b == 0) {
            match field.split_first() {
                Some((b'C', v)) => code = String::from_utf8_lossy(v).into_owned(),
                Some((b'M', v)) => message = String::from_utf8_lossy(v).into_owned(),
                _ => {}
            }
        }
        self.done.push(Completion {
            error: Some((code, message)),
            ..Completion::default()
        });
    }

    pub(crate) fn other(&mut self) {
        self.done.push(Completion::default());
    }

    /// Stamps the latest completion with when it passed and the client's bytes.
    fn stamp(&mut self, sent: u64) {
        if let Some(c) = self.done.last_mut()
            && c.ended.is_none()
        {
            c.ended = Some((std::time::Instant::now(), sent));
        }
    }
}

/// Limits on the relayed statement (the workload's row, byte and time limits),
/// checked as its answer passes. Past a limit the relay asks the upstream to
/// cancel the statement; the upstream's "canceling statement" error then reaches
/// the client as the limit's own error. Rows and bytes already on their way pass
/// (the cap is enforced by cancelling, never by cutting a result short).
#[derive(Default)]
pub struct Watch {
    pub rows: Option<Limit>,
    /// A limit on the client's `bytes_sent()` (counted from the statement's start).
    pub sent: Option<Limit>,
    /// Set by the statement's timer when its time limit passed (the timer also
    /// sends the cancel).
    pub timed_out: Arc<OnceLock<Limit>>,
    /// Rows relayed so far.
    pub rows_seen: u64,
    /// The limit Sluice cancelled the statement for.
    pub tripped: Option<Limit>,
}

#[derive(Debug, Clone)]
pub struct Limit {
    pub at: u64,
    pub error: PgError,
    /// The workload rule that set the limit (`None`: the queue's own limit).
    pub rule: Option<Arc<str>>,
}

impl Watch {
    /// The limit the statement was cancelled for, if any.
    pub fn breached(&self) -> Option<&Limit> {
        self.tripped.as_ref().or_else(|| self.timed_out.get())
    }

    fn trip(&mut self, limit: Limit, up: &UpstreamConn) {
        if self.tripped.is_some() {
            return;
        }
        tracing::debug!(error = %limit.error.message, "cancelling a relayed statement past its limit");
        self.tripped = Some(limit);
        if let Some(target) = up.cancel.clone() {
            wire::cancel_in_background(
                target,
                "could not cancel an upstream statement past its limit",
            );
        }
    }

    fn check_sent(&mut self, sent: u64, up: &UpstreamConn) {
        if let Some(limit) = &self.sent
            && sent > limit.at
        {
            let limit = limit.clone();
            self.trip(limit, up);
        }
    }
}

/// How many terminal responses the forwarded extended-protocol messages are owed.
/// Parse, Bind, Close: one each; Describe: RowDescription or NoData; Execute:
/// CommandComplete, EmptyQueryResponse or PortalSuspended.
pub fn answers_owed(tag: u8) -> usize {
    match tag {
        b'P' | b'B' | b'C' | b'D' | b'E' => 1,
        _ => 0,
    }
}

/// Relays until `until`; `owed` counts down as answers arrive. (A CancelRequest for
/// the client's session goes to the upstream backend through the cancel registry.)
///
/// `extended`: the statement came through the extended protocol, where a client
/// follows COPY data with a Sync (the upstream ignored any Sync sent during COPY).
pub async fn relay(
    client: &mut Connection,
    up: &mut UpstreamConn,
    mut until: Until,
    owed: &mut usize,
    extended: bool,
    mut watch: Option<&mut Watch>,
) -> Result<Outcome, RelayError> {
    let mut fatal = false;
    loop {
        if until == Until::Answered && *owed == 0 {
            return Ok(Outcome::Answered);
        }
        if !up.has_buffered_message() && !client.out.is_empty() {
            // About to wait for the upstream: let the client have what we have.
            client.flush().await.map_err(Disconnect::from)?;
            if let Some(w) = watch.as_deref_mut() {
                w.check_sent(client.bytes_sent(), up);
            }
        }
        let (tag, len) = match up.read_message().await {
            Ok(m) => {
                tracing::trace!(tag = %(m.0 as char), owed = *owed, "upstream message");
                m
            }
            Err(error) => {
                return Err(RelayError::Upstream {
                    error,
                    reported: fatal,
                });
            }
        };
        match tag {
            b'Z' => {
                let status = up.message(len).get(5).copied().unwrap_or(b'I');
                up.status = status;
                up.provoked_errors = 0;
                up.move_to(len, &mut client.out);
                return Ok(Outcome::Ready(status));
            }
            b'E' => {
                let body = &up.message(len)[5..];
                if let Some(limit) = watch.as_deref().and_then(Watch::breached)
                    && is_canceled(body)
                {
                    // Sluice's own cancel: the client hears which limit it was.
                    let error = limit.error.clone();
                    up.consume(len);
                    up.tally.done.push(Completion {
                        error: Some((error.code.0.to_owned(), error.message.clone())),
                        ..Completion::default()
                    });
                    client.send_error(&error);
                    up.tally.stamp(client.bytes_sent());
                    if until == Until::Answered {
                        *owed = 0;
                        client.flush().await.map_err(Disconnect::from)?;
                        return Ok(Outcome::Failed);
                    }
                    continue;
                }
                up.tally_message(len);
                let body = &up.message(len)[5..];
                if is_fatal(body) {
                    // The upstream ends its session, not the client's: Sluice's session
                    // stays up (lake queries keep working), so report it as an ERROR.
                    fatal = true;
                    let body = body.to_vec();
                    up.consume(len);
                    write_as_error(&body, &mut client.out);
                    continue;
                }
                if up.provoked_errors > 0 {
                    up.provoked_errors -= 1;
                    up.tally.done.pop();
                    up.consume(len);
                    continue;
                }
                up.move_to(len, &mut client.out);
                up.tally.stamp(client.bytes_sent());
                if until == Until::Answered {
                    *owed = 0;
                    // The client may be waiting on this error alone (it sent Flush,
                    // or nothing, and its next messages are skipped until Sync).
                    client.flush().await.map_err(Disconnect::from)?;
                    return Ok(Outcome::Failed);
                }
            }
            b'G' => {
                up.move_to(len, &mut client.out);
                client.flush().await.map_err(Disconnect::from)?;
                if copy_in(client, up, extended).await? {
                    // The client's Sync after the COPY data is the one the upstream
                    // answers: relay up to its ReadyForQuery.
                    until = Until::Ready;
                }
            }
            b'W' => {
                // COPY BOTH is for replication, which Sluice does not relay.
                up.consume(len);
                return Err(RelayError::Upstream {
                    error: io::Error::other(
                        "the upstream started COPY BOTH (replication), which Sluice does not relay",
                    ),
                    reported: false,
                });
            }
            b'K' => up.consume(len),
            b'D' => {
                if let Some(w) = watch.as_deref_mut()
                    && let Some(limit) = &w.rows
                {
                    w.rows_seen += 1;
                    if w.rows_seen > limit.at {
                        let limit = limit.clone();
                        w.trip(limit, up);
                    }
                }
                up.move_to(len, &mut client.out);
            }
            b'1' | b'2' | b'3' | b'C' | b'I' | b's' | b'n' | b'T' => {
                let completes = matches!(tag, b'C' | b'I' | b's');
                if completes {
                    up.tally_message(len);
                }
                up.move_to(len, &mut client.out);
                if completes {
                    up.tally.stamp(client.bytes_sent());
                }
                if until == Until::Answered {
                    *owed = owed.saturating_sub(1);
                }
            }
            _ => up.move_to(len, &mut client.out),
        }
        if client.out.len() >= FLUSH_THRESHOLD {
            client.flush().await.map_err(Disconnect::from)?;
            if let Some(w) = watch.as_deref_mut() {
                w.check_sent(client.bytes_sent(), up);
            }
        }
    }
}

/// Whether an ErrorResponse says the statement was cancelled (57014).
fn is_canceled(body: &[u8]) -> bool {
    body.split(|b| *b == 0).any(|f| f == b"C57014")
}

/// COPY FROM STDIN: client CopyData/CopyDone/CopyFail frames go to the upstream as
/// they are, until CopyDone or CopyFail (and, in the extended protocol, the Sync or
/// Flush after it). Returns whether a Sync was passed on.
async fn copy_in(
    client: &mut Connection,
    up: &mut UpstreamConn,
    extended: bool,
) -> Result<bool, RelayError> {
    let upstream_err = |error| RelayError::Upstream {
        error,
        reported: false,
    };
    loop {
        let frame = match client.read_frame(|t| frame::max_len(t, false)).await {
            Ok(Some(f)) => f,
            Ok(None) => {
                // The client went away mid-COPY: abort it upstream.
                put_copy_fail(&mut up.out, "the client disconnected during COPY");
                let _ = up.flush().await;
                return Err(RelayError::Client(Disconnect::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "client disconnected during COPY",
                ))));
            }
            Err(e) => {
                put_copy_fail(
                    &mut up.out,
                    "the client sent an invalid message during COPY",
                );
                let _ = up.flush().await;
                return Err(RelayError::Client(e));
            }
        };
        tracing::trace!(tag = %(frame.tag as char), len = frame.body.len(), "client COPY message");
        match frame.tag {
            b'd' | b'c' | b'f' => {
                frame::put_message(&mut up.out, frame.tag, |b| b.extend_from_slice(&frame.body));
                if frame.tag != b'd' {
                    let mut synced = false;
                    if extended {
                        // PostgreSQL answers an extended-protocol COPY at the next
                        // Sync (or Flush), which the client sends right after.
                        let next = client
                            .read_frame(|t| frame::max_len(t, false))
                            .await?
                            .ok_or_else(|| {
                                RelayError::Client(Disconnect::Io(io::Error::new(
                                    io::ErrorKind::UnexpectedEof,
                                    "client disconnected after COPY",
                                )))
                            })?;
                        if !matches!(next.tag, b'S' | b'H') {
                            return Err(RelayError::Client(Disconnect::Protocol(
                                crate::error::PgError::protocol(format!(
                                    "expected Sync after COPY data, got message type {:?}",
                                    next.tag as char
                                )),
                            )));
                        }
                        synced = next.tag == b'S';
                        frame::put_message(&mut up.out, next.tag, |b| {
                            b.extend_from_slice(&next.body)
                        });
                    }
                    up.flush().await.map_err(upstream_err)?;
                    return Ok(synced);
                }
                if up.out.len() >= FLUSH_THRESHOLD {
                    up.flush().await.map_err(upstream_err)?;
                }
            }
            // PostgreSQL ignores Flush and Sync during COPY.
            b'H' | b'S' => {}
            other => {
                // As PostgreSQL does: a protocol violation ends the client's session
                // (the upstream session is aborted and closed with it).
                let message = format!("unexpected message type {:?} during COPY", other as char);
                put_copy_fail(&mut up.out, &message);
                let _ = up.flush().await;
                return Err(RelayError::Client(Disconnect::Protocol(
                    crate::error::PgError::protocol(message),
                )));
            }
        }
    }
}

fn put_copy_fail(out: &mut BytesMut, message: &str) {
    frame::put_message(out, b'f', |b| {
        b.extend_from_slice(message.as_bytes());
        b.extend_from_slice(&[0]);
    });
}

fn is_fatal(body: &[u8]) -> bool {
    body.split(|b| *b == 0)
        .any(|f| f == b"SFATAL" || f == b"SPANIC" || f == b"VFATAL" || f == b"VPANIC")
}

/// Re-encodes an ErrorResponse with severity ERROR, keeping every other field.
fn write_as_error(body: &[u8], out: &mut BytesMut) {
    frame::put_message(out, b'E', |b| {
        for field in body.split(|c| *c == 0) {
            let Some((&kind, _)) = field.split_first() else {
                continue;
            };
            match kind {
                b'S' | b'V' => b.extend_from_slice(&[kind, b'E', b'R', b'R', b'O', b'R']),
                _ => b.extend_from_slice(field),
            }
            b.extend_from_slice(&[0]);
        }
        b.extend_from_slice(&[0]);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_read_row_counts_and_errors() {
        let mut t = Tally::default();
        t.completed(b"SELECT 5\0");
        t.completed(b"INSERT 0 12\0");
        t.completed(b"BEGIN\0");
        t.failed(b"SERROR\0C42P01\0Mrelation \"x\" does not exist\0\0");
        let rows: Vec<Option<u64>> = t.done.iter().map(|c| c.rows).collect();
        assert_eq!(rows, [Some(5), Some(12), None, None]);
        assert_eq!(
            t.done[3].error,
            Some(("42P01".into(), "relation \"x\" does not exist".into()))
        );
    }

    #[test]
    fn fatal_errors_become_errors_with_their_fields() {
        let body =
            b"SFATAL\0VFATAL\0C57P01\0Mterminating connection due to administrator command\0\0";
        assert!(is_fatal(body));
        let mut out = BytesMut::new();
        write_as_error(body, &mut out);
        let text = String::from_utf8_lossy(&out[5..]).into_owned();
        assert!(
            text.contains("SERROR\0VERROR\0C57P01\0Mterminating"),
            "{text:?}"
        );
        assert!(!is_fatal(&out[5..]));
        let len = i32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize;
        assert_eq!(len + 1, out.len());
    }
}
