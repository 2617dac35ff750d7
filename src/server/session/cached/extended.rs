//! The result cache in the extended protocol: Parse notes which prepared statements
//! read cacheably (or write), Bind turns a read into a key (with the parameter
//! values and result formats), and Execute of such a portal is answered from the
//! cache — for an upstream portal without sending anything upstream — or recorded.
//! When an entry holds the portal's RowDescription, an upstream statement's Bind,
//! Describe, Execute and Close are all answered here (`local_portals`).

use std::sync::Arc;

use bytes::Bytes;

use super::super::pipeline::{Outcome, Text};
use super::{CacheableRead, CachedAnswer, PortalKey};
use crate::cache::results::{self, Lookup};
use crate::error::PgError;
use crate::route::{CacheUse, Decision};
use crate::server::session::{PortalState, Session, Tx};
use crate::wire::Disconnect;
use crate::wire::frame::{self, Frame};

/// Splits a recorded Execute answer into its leading RowDescription (if any) and
/// the rest.
fn split_row_description(answer: &Bytes) -> (Option<Bytes>, Bytes) {
    match frame::messages(answer).next() {
        Some(t) if t[0] == b'T' => (Some(answer.slice(..t.len())), answer.slice(t.len()..)),
        _ => (None, answer.clone()),
    }
}

/// The last message of `bytes` if it is a RowDescription (the answer to the
/// Describe that came right before an Execute).
fn trailing_row_description(bytes: &[u8]) -> Option<Bytes> {
    let mut messages = frame::messages(bytes);
    let last = messages.by_ref().last();
    if !messages.rest().is_empty() {
        return None;
    }
    last.filter(|m| m[0] == b'T').map(Bytes::copy_from_slice)
}

impl Session {
    /// Parse: remembers whether the statement reads cacheably or writes.
    pub(in crate::server::session) fn note_parse(
        &mut self,
        msg: &frame::Parse,
        decision: &Decision,
    ) {
        self.cache.reads.remove(&msg.name);
        self.cache.writes.remove(&msg.name);
        let forwards_writes = self.forward.is_some() && self.policy.write;
        if decision.private_state(forwards_writes) {
            self.cache.private_state = true;
        }
        match decision.cache_use(forwards_writes) {
            CacheUse::Write(tables) => {
                self.cache.writes.insert(msg.name.clone(), tables);
            }
            CacheUse::Read {
                text,
                tables,
                on_lake,
            } => {
                // Declared parameter types change how values are read and results typed.
                let mut text = text.to_owned();
                text.push('\0');
                for t in &msg.param_types {
                    text.push_str(&t.to_string());
                    text.push(',');
                }
                let read = CacheableRead {
                    text,
                    tables: tables.to_vec(),
                    lake: on_lake,
                };
                self.cache.reads.insert(msg.name.clone(), Arc::new(read));
            }
            CacheUse::Nothing => {}
        }
    }

    /// Bind: a portal of a cacheable read gets its key (parameters included).
    /// Bind of an upstream statement whose answer is cached (with its
    /// RowDescription): answered here, and so are the portal's Describe, Execute and
    /// Close. `true`: handled.
    pub(in crate::server::session) fn cached_bind(&mut self, frame: &Frame) -> bool {
        self.note_bind(frame);
        let Ok((portal, statement)) = frame::bind_names(&frame.body) else {
            return false;
        };
        let upstream_statement = self
            .forward
            .as_ref()
            .is_some_and(|f| f.statements.contains(statement) && f.owed == 0 && !f.pending_sync);
        if !upstream_statement {
            return false;
        }
        let Some(pk) = self.cache.portal_keys.get(portal) else {
            return false;
        };
        let Some(cache) = self.shared.results.as_ref() else {
            return false;
        };
        let Some(answer) = cache.peek(&pk.key) else {
            return false;
        };
        let (Some(row_description), body) = split_row_description(&answer) else {
            return false;
        };
        let portal = portal.to_owned();
        self.cache.portal_keys.remove(&portal);
        if let Some(f) = self.forward.as_mut() {
            f.portals.remove(&portal);
        }
        self.portals.remove(&portal);
        self.cache.local_portals.insert(
            portal,
            CachedAnswer {
                row_description,
                body,
                offset: 0,
            },
        );
        self.conn.send(&crate::wire::messages::BindComplete::new());
        true
    }

    /// Describe / Close of a portal answered from the cache (after everything
    /// forwarded before it). `true`: handled.
    pub(in crate::server::session) async fn cached_portal_message(
        &mut self,
        frame: &Frame,
    ) -> Result<bool, Disconnect> {
        if !self.is_local_portal_message(frame) {
            return Ok(false);
        }
        if !self.upstream_answered().await? {
            return Ok(true);
        }
        Ok(self.local_portal_message(frame))
    }

    fn is_local_portal_message(&self, frame: &Frame) -> bool {
        use crate::wire::frame::Target;
        if self.cache.local_portals.is_empty() {
            return false;
        }
        let named = match frame.tag {
            b'D' => frame::decode_describe(&frame.body)
                .ok()
                .filter(|d| d.target == Target::Portal)
                .map(|d| d.name),
            b'C' => frame::decode_close(&frame.body)
                .ok()
                .filter(|c| c.target == Target::Portal)
                .map(|c| c.name),
            _ => None,
        };
        named.is_some_and(|n| self.cache.local_portals.contains_key(&n))
    }

    fn local_portal_message(&mut self, frame: &Frame) -> bool {
        use crate::wire::frame::Target;
        match frame.tag {
            b'D' => {
                let Ok(d) = frame::decode_describe(&frame.body) else {
                    return false;
                };
                if d.target != Target::Portal {
                    return false;
                }
                let Some(answer) = self.cache.local_portals.get(&d.name) else {
                    return false;
                };
                let t = answer.row_description.clone();
                self.conn.out.extend_from_slice(&t);
                true
            }
            b'C' => {
                let Ok(c) = frame::decode_close(&frame.body) else {
                    return false;
                };
                if c.target != Target::Portal || self.cache.local_portals.remove(&c.name).is_none()
                {
                    return false;
                }
                self.conn.send(&crate::wire::messages::CloseComplete::new());
                true
            }
            _ => false,
        }
    }

    /// Execute of a portal answered from the cache, honouring `max_rows`.
    fn execute_local_portal(&mut self, portal: &str, max_rows: i32) -> bool {
        let Some(answer) = self.cache.local_portals.get_mut(portal) else {
            return false;
        };
        let body = &answer.body[answer.offset..];
        let mut end = 0;
        let mut rows = 0;
        let mut suspended = false;
        for m in frame::messages(body) {
            if m[0] == b'D' {
                if max_rows > 0 && rows == max_rows {
                    suspended = true;
                    break;
                }
                rows += 1;
            }
            end += m.len();
        }
        self.conn.out.extend_from_slice(&body[..end]);
        answer.offset += end;
        if suspended {
            self.conn
                .send(&crate::wire::messages::PortalSuspended::new());
        } else if end == 0 {
            // Executed again after completing: no more rows, as PostgreSQL answers.
            self.conn.send(&crate::wire::messages::CommandComplete::new(
                "SELECT 0".to_string(),
            ));
        }
        true
    }

    /// Makes the upstream answer everything forwarded so far, so a local answer
    /// comes after them; `false` when one failed (the pipeline is void until Sync).
    async fn upstream_answered(&mut self) -> Result<bool, Disconnect> {
        self.drain_upstream().await?;
        Ok(!self.skip_until_sync)
    }

    /// The session's settings may differ from the upstream's: nothing it reads is
    /// cached any more.
    pub(in crate::server::session) fn cache_loses_track_of_settings(&mut self) {
        self.cache.private_state = true;
    }

    /// Portals answered from the cache end with their implicit transaction.
    pub(in crate::server::session) fn end_local_portals(&mut self) {
        if self.tx == Tx::Idle {
            self.cache.local_portals.clear();
        }
    }

    fn note_bind(&mut self, frame: &Frame) {
        let Ok(bind) = frame::decode_bind(&frame.body) else {
            return;
        };
        self.cache.portal_keys.remove(&bind.portal);
        self.cache.portal_writes.remove(&bind.portal);
        self.cache.local_portals.remove(&bind.portal);
        if let Some(w) = self.cache.writes.get(&bind.statement) {
            let w = w.clone();
            self.cache.portal_writes.insert(bind.portal, w);
            return;
        }
        let Some(read) = self.cache.reads.get(&bind.statement).cloned() else {
            return;
        };
        let mut params = Vec::with_capacity(64);
        for f in &bind.param_formats {
            params.extend_from_slice(&f.to_be_bytes());
        }
        params.push(0xff);
        for p in &bind.params {
            match p {
                None => params.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(v) => {
                    params.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    params.extend_from_slice(v);
                }
            }
        }
        params.push(0xff);
        for f in &bind.result_formats {
            params.extend_from_slice(&f.to_be_bytes());
        }
        if let Some(pk) = self.portal_key(b"E", &read, &params) {
            self.cache.portal_keys.insert(bind.portal, pk);
        }
    }

    /// Execute: answers a cacheable portal from the cache, or runs it recording its
    /// answer. `Ok(false)`: not the cache's business, dispatch as usual.
    pub(in crate::server::session) async fn cached_execute(
        &mut self,
        frame: &Frame,
    ) -> Result<bool, Disconnect> {
        let Ok(msg) = frame::decode_execute(&frame.body) else {
            return Ok(false);
        };
        if self.cache.local_portals.contains_key(&msg.portal) {
            if self.upstream_answered().await? {
                self.execute_local_portal(&msg.portal, msg.max_rows);
            }
            self.conn.flush_if_full().await?;
            return Ok(true);
        }
        if let Some(w) = self.cache.portal_writes.get(&msg.portal).cloned() {
            if self.forward.is_some() && self.policy.write {
                self.note_write(w);
            }
            return Ok(false);
        }
        let Some(pk) = self.cache.portal_keys.remove(&msg.portal) else {
            return Ok(false);
        };
        let Some(cache) = self.shared.results.clone() else {
            return Ok(false);
        };
        if msg.max_rows != 0 || self.tx != Tx::Idle || self.cache.executed_since_sync {
            return Ok(false);
        }
        let upstream = self
            .forward
            .as_ref()
            .is_some_and(|f| f.portals.contains(&msg.portal));
        if upstream {
            let idle = self
                .forward
                .as_ref()
                .and_then(|f| f.held.as_ref())
                .is_some_and(|h| h.conn.status == b'I');
            if !idle {
                return Ok(false);
            }
        } else {
            // Only a portal that has not started yet can be answered whole.
            let fresh = matches!(
                self.portals.get(&msg.portal).map(|p| &p.state),
                Some(PortalState::Lake(run)) if run.plan.is_some()
            );
            if !fresh {
                return Ok(false);
            }
        }
        let lookup = match self.lookup(pk.key.clone()).await {
            Some(l) => l,
            None => {
                self.drain_upstream().await?;
                self.fail_pipeline(&PgError::canceled()).await?;
                return Ok(true);
            }
        };
        if !upstream && !matches!(lookup, Lookup::Bypass) {
            // A local answer comes after everything forwarded before it.
            if !self.upstream_answered().await? {
                return Ok(true);
            }
        }
        match lookup {
            Lookup::Bypass => Ok(false),
            Lookup::Hit(body) => {
                let started = std::time::Instant::now();
                let text = if upstream {
                    self.forward
                        .as_ref()
                        .and_then(|f| f.portal_texts.get(&msg.portal).cloned())
                } else {
                    self.portals.get(&msg.portal).and_then(|p| p.text.clone())
                };
                if let Err(e) = self.admit("cache", &Text::Prepared(None)).await {
                    self.fail_pipeline(&e).await?;
                    return Ok(true);
                }
                if upstream {
                    // Everything forwarded before is answered first, in order.
                    if !self.upstream_answered().await? {
                        return Ok(true);
                    }
                } else if let Some(p) = self.portals.get_mut(&msg.portal) {
                    p.state = PortalState::Done;
                }
                // The client has its RowDescription already (from its Describe).
                let (_, body) = split_row_description(&body);
                let sent_before = self.conn.bytes_sent();
                self.conn.out.extend_from_slice(&body);
                self.record(Outcome {
                    route: "cache",
                    started,
                    error: None,
                    text: Text::Prepared(text),
                    sent_before,
                    relayed: None,
                });
                self.conn.flush_if_full().await?;
                Ok(true)
            }
            Lookup::Lead(lead) => {
                if upstream {
                    // The answers owed so far end with the portal's RowDescription
                    // when the client described it: kept with the entry, so later
                    // hits can answer Bind and Describe here too.
                    self.conn.start_recording(1024 * 1024);
                    let drained = self.drain_upstream().await;
                    let owed = self.conn.finish_recording();
                    drained?;
                    if self.skip_until_sync {
                        return Ok(true);
                    }
                    let described =
                        self.cache.last_described_portal.as_deref() == Some(msg.portal.as_str());
                    let row_description = owed
                        .filter(|_| described)
                        .and_then(|b| trailing_row_description(&b));
                    self.conn.start_recording(cache.max_entry_bytes);
                    let result = self.forward_execute_now(frame).await;
                    let recorded = self.conn.finish_recording();
                    result?;
                    if !self.skip_until_sync {
                        let recorded = recorded.map(|body| match &row_description {
                            Some(t) => {
                                let mut whole =
                                    bytes::BytesMut::with_capacity(t.len() + body.len());
                                whole.extend_from_slice(t);
                                whole.extend_from_slice(&body);
                                whole
                            }
                            None => body,
                        });
                        store(lead, recorded, pk);
                    }
                } else {
                    self.conn.start_recording(cache.max_entry_bytes);
                    let result = self.dispatch_frame(frame.clone()).await;
                    let recorded = self.conn.finish_recording();
                    result?;
                    if !self.skip_until_sync {
                        store(lead, recorded, pk);
                    }
                }
                Ok(true)
            }
        }
    }
}

/// Stores a recorded Execute answer (DataRows, CommandComplete) when it is whole.
fn store(lead: results::Lead, recorded: Option<bytes::BytesMut>, pk: PortalKey) {
    match recorded {
        None => lead.store(None, pk.tables, pk.ttl),
        Some(body) if results::storable(&body) => {
            lead.store(Some(body.freeze()), pk.tables, pk.ttl)
        }
        Some(_) => {}
    }
}
