//! The result cache as a session uses it.
//!
//! - Simple protocol: a query string holding one cacheable read is looked up by its
//!   key; on a miss the session answers as usual while recording the bytes it sends
//!   (RowDescription, DataRows, CommandComplete), and stores them.
//! - Extended protocol: Parse notes which prepared statements read cacheably (or
//!   write), Bind turns a read into a key (with the parameter values and result
//!   formats), and Execute of such a portal is answered from the cache — for an
//!   upstream portal without sending the Execute upstream — or recorded.
//! - Statements that write invalidate the tables they touch when they run, and again
//!   when their transaction ends (readers may have cached the old rows meanwhile).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

mod extended;

use super::pipeline::{Outcome, Text};
use super::{Session, Tx};
use crate::cache::results::{self, Key, Lookup};
use crate::error::PgError;
use crate::route::{CacheUse, Decision};
use crate::wire::Disconnect;
use crate::wire::frame::Frame;

/// Length of the ReadyForQuery message that ends every recorded simple-query answer.
const READY_LEN: usize = 6;

/// A prepared statement that reads cacheably.
pub(super) struct CacheableRead {
    /// The normalised statement text.
    text: String,
    tables: Vec<String>,
    /// It runs on the lake (else upstream).
    lake: bool,
}

/// A portal ready to be answered from the cache.
pub(super) struct PortalKey {
    key: Key,
    tables: Vec<String>,
    ttl: Duration,
}

/// A cached extended-protocol answer being served: its RowDescription, and the
/// DataRows + CommandComplete from `offset` on (Execute with `max_rows` resumes).
pub(super) struct CachedAnswer {
    row_description: Bytes,
    body: Bytes,
    offset: usize,
}

/// Per-session book-keeping for the result cache.
pub(super) struct CacheBooks {
    reads: HashMap<String, Arc<CacheableRead>>,
    /// Prepared statements that write, with the tables (`None`: unknown ones).
    writes: HashMap<String, Option<Vec<String>>>,
    portal_keys: HashMap<String, PortalKey>,
    portal_writes: HashMap<String, Option<Vec<String>>>,
    /// Portals of upstream statements answered wholly from the cache: their Bind,
    /// Describe and Execute never reach the upstream.
    local_portals: HashMap<String, CachedAnswer>,
    /// Tables written in the open transaction (`None`: unknown ones), invalidated
    /// again when it ends.
    written_in_tx: Option<Vec<String>>,
    wrote_in_tx: bool,
    /// The session has state Sluice cannot key on (temporary tables, `SET ROLE`,
    /// `set_config`, text it could not parse): its reads are not cached.
    private_state: bool,
    /// An Execute ran since the last Sync: a later read in the same pipeline may see
    /// what it did (an implicit transaction), so it is not cached.
    pub(super) executed_since_sync: bool,
    /// The portal the last Describe named (its RowDescription may be kept).
    pub(super) last_described_portal: Option<String>,
}

impl Default for CacheBooks {
    fn default() -> Self {
        CacheBooks {
            reads: HashMap::new(),
            writes: HashMap::new(),
            portal_keys: HashMap::new(),
            portal_writes: HashMap::new(),
            local_portals: HashMap::new(),
            written_in_tx: Some(Vec::new()),
            wrote_in_tx: false,
            private_state: false,
            executed_since_sync: false,
            last_described_portal: None,
        }
    }
}

/// What the cache does with one query message.
enum Plan {
    Lookup(PortalKey),
    Invalidate(Option<Vec<String>>),
    Nothing,
}

impl Session {
    /// This session's result-cache TTL right now; `None`: results are not cached.
    fn cache_ttl(&self) -> Option<Duration> {
        let cache = self.shared.results.as_ref()?;
        if let Some(v) = self.settings.get("sluice.cache")
            && matches!(v.to_lowercase().as_str(), "off" | "false" | "0" | "no")
        {
            return None;
        }
        let ttl = self
            .policy
            .result_cache_ttl_secs
            .map(Duration::from_secs)
            .unwrap_or(cache.default_ttl);
        (!ttl.is_zero()).then_some(ttl)
    }

    /// The run stage of a simple query with the result cache on: answered from the
    /// cache, or run (recording the answer when it may be stored).
    pub(super) async fn cached_query(
        &mut self,
        frame: &Frame,
        decision: &Decision,
    ) -> Result<(), Disconnect> {
        let Some(cache) = self.shared.results.clone() else {
            return self.answer_query(frame, decision).await;
        };
        match self.cache_plan(decision) {
            Plan::Nothing => self.answer_query(frame, decision).await?,
            Plan::Invalidate(tables) => {
                // Now, and again when it has committed (below, or at COMMIT). Only
                // statements that can reach an upstream count: the lake is read-only
                // and read-only roles' writes are refused.
                if self.forward.is_some() && self.policy.write {
                    self.note_write(tables);
                }
                self.answer_query(frame, decision).await?;
            }
            Plan::Lookup(pk) => match self.lookup(pk.key.clone()).await {
                None => {
                    self.fail(&PgError::canceled());
                    self.ready();
                    self.conn.flush().await?;
                }
                Some(Lookup::Hit(body)) => {
                    let started = std::time::Instant::now();
                    let sent_before = self.conn.bytes_sent();
                    let sql = crate::wire::frame::decode_query(&frame.body).unwrap_or_default();
                    let text = Text::Whole(sql, decision);
                    match self
                        .admit_or_record("cache", started, sent_before, &text)
                        .await
                    {
                        Ok(()) => {
                            self.conn.out.extend_from_slice(&body);
                            self.record(Outcome {
                                route: "cache",
                                started,
                                error: None,
                                text,
                                sent_before,
                                relayed: None,
                            });
                        }
                        Err(e) => self.fail(&e),
                    }
                    self.ready();
                    self.conn.flush().await?;
                    self.conn.shrink_idle();
                }
                Some(Lookup::Bypass) => self.answer_query(frame, decision).await?,
                Some(Lookup::Lead(lead)) => {
                    self.conn.start_recording(cache.max_entry_bytes + READY_LEN);
                    let result = self.answer_query(frame, decision).await;
                    let recorded = self.conn.finish_recording();
                    result?;
                    match recorded {
                        None => lead.store(None, pk.tables, pk.ttl),
                        Some(mut body) => {
                            // The answer ends with ReadyForQuery; it is stored only
                            // when the statement ran outside any transaction.
                            let idle = body.len() >= READY_LEN
                                && body[body.len() - READY_LEN] == b'Z'
                                && body[body.len() - 1] == b'I';
                            body.truncate(body.len().saturating_sub(READY_LEN));
                            if idle && results::storable(&body) {
                                lead.store(Some(body.freeze()), pk.tables, pk.ttl);
                            }
                        }
                    }
                }
            },
        }
        Ok(())
    }

    /// Looks a key up; waiting for another session's run of it is cancellable
    /// (`None`: the client cancelled).
    /// (The future owns what it needs: a session is not `Sync`.)
    fn lookup(&self, key: Key) -> impl std::future::Future<Output = Option<Lookup>> + Send + use<> {
        let cache = self.shared.results.clone();
        let signal = self.cancel.signal.clone();
        async move {
            let cache = cache?;
            let canceled = signal.notified();
            tokio::select! {
                biased;
                _ = canceled => None,
                l = cache.lookup(key) => Some(l),
            }
        }
    }

    /// A statement that writes ran (or is about to): its tables are invalidated now
    /// and again when the transaction ends.
    fn note_write(&mut self, tables: Option<Vec<String>>) {
        if let Some(cache) = &self.shared.results {
            cache.invalidate_written(tables.as_deref());
        }
        match (tables, &mut self.cache.written_in_tx) {
            (Some(t), Some(w)) => w.extend(t),
            (None, w) => *w = None,
            (Some(_), None) => {}
        }
        self.cache.wrote_in_tx = true;
    }

    /// After a transaction that wrote ends, readers that cached its tables' old rows
    /// in the meantime lose them.
    pub(super) fn invalidate_at_transaction_end(&mut self) {
        if self.tx != Tx::Idle || !self.cache.wrote_in_tx {
            return;
        }
        self.cache.wrote_in_tx = false;
        let written = self.cache.written_in_tx.replace(Vec::new());
        if let Some(cache) = &self.shared.results {
            cache.invalidate_written(written.as_deref());
        }
    }

    /// What the cache does with a decided query string.
    fn cache_plan(&mut self, decision: &Decision) -> Plan {
        let forwards_writes = self.forward.is_some() && self.policy.write;
        if decision.private_state(forwards_writes) {
            self.cache.private_state = true;
        }
        match decision.cache_use(forwards_writes) {
            CacheUse::Write(tables) => Plan::Invalidate(tables),
            CacheUse::Read {
                text,
                tables,
                on_lake,
            } => {
                let read = CacheableRead {
                    text: text.to_owned(),
                    tables: tables.to_vec(),
                    lake: on_lake,
                };
                match self.portal_key(b"Q", &read, &[]) {
                    Some(pk) => Plan::Lookup(pk),
                    None => Plan::Nothing,
                }
            }
            CacheUse::Nothing => Plan::Nothing,
        }
    }

    /// The key for running `read` now with the given parameter material, or `None`
    /// when it must not be cached here (cache off, inside a transaction, …).
    fn portal_key(
        &self,
        protocol: &[u8],
        read: &CacheableRead,
        params: &[u8],
    ) -> Option<PortalKey> {
        let ttl = self.cache_ttl()?;
        if self.tx != Tx::Idle || self.cache.private_state || self.cache.executed_since_sync {
            return None;
        }
        let scope = if read.lake {
            // Lake answers depend on the role policy (which tables exist for it) and
            // on the catalog generation (Glue refreshes, views created or dropped).
            // Cross-engine statements also read upstream tables as the session's
            // Redshift identity.
            let upstream = self
                .forward
                .as_ref()
                .map(|f| {
                    format!(
                        "{}\0{}\0{}",
                        f.upstream.name(),
                        f.identity.user,
                        f.identity.groups.join(",")
                    )
                })
                .unwrap_or_default();
            format!(
                "lake\0{:?}\0{}\0{upstream}",
                self.policy,
                self.shared.engine.lake_generation()
            )
        } else {
            let fwd = self.forward.as_ref()?;
            if fwd.lost_in_tx || fwd.abort_tx {
                return None;
            }
            format!(
                "upstream\0{}\0{}\0{}\0{:?}\0{:?}",
                fwd.upstream.name(),
                fwd.identity.user,
                fwd.identity.groups.join(","),
                fwd.params,
                self.policy.row_limit,
            )
        };
        // Every setting, custom ones included (row-level security may read
        // `current_setting('app.tenant')`); `sluice.cache` itself aside.
        let settings = self.settings.fingerprint();
        Some(PortalKey {
            key: Key::new([
                protocol,
                scope.as_bytes(),
                settings.as_bytes(),
                read.text.as_bytes(),
                params,
            ]),
            tables: read.tables.clone(),
            ttl,
        })
    }
}
