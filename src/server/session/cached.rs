//! The result cache as a session uses it: a simple-protocol query that reads (and
//! names no volatile function) is looked up by its key; on a miss the session
//! answers as usual while recording the bytes it sends, and stores them. Statements
//! that write invalidate what they touch, again when their transaction ends.

use std::time::Duration;

use datafusion::sql::sqlparser::ast::Statement;

use super::{Session, Tx};
use crate::cache::results::{self, Cacheability, Key, Lookup};
use crate::server::connection::Disconnect;
use crate::server::error::PgError;
use crate::server::frame::{self, Frame};

/// Settings that change a result or its text form.
const KEYED_SETTINGS: &[&str] = &[
    "search_path",
    "TimeZone",
    "DateStyle",
    "IntervalStyle",
    "extra_float_digits",
    "bytea_output",
    "client_encoding",
    "standard_conforming_strings",
];

/// Length of the ReadyForQuery message that ends every recorded answer.
const READY_LEN: usize = 6;

/// What the cache does with one query message.
enum Plan {
    Lookup {
        key: Key,
        tables: Vec<String>,
        ttl: Duration,
    },
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

    /// Handles a simple query message through the result cache (when one is
    /// configured); otherwise exactly like [`Session::query_message`].
    pub(super) async fn cached_query_message(&mut self, frame: &Frame) -> Result<(), Disconnect> {
        let Some(cache) = self.shared.results.clone() else {
            return self.query_message(frame).await;
        };
        let plan = match frame::decode_query(&frame.body) {
            Ok(sql) => self.cache_plan(sql),
            Err(_) => Plan::Nothing,
        };
        match plan {
            Plan::Nothing => self.query_message(frame).await?,
            Plan::Invalidate(tables) => {
                self.query_message(frame).await?;
                cache.invalidate(tables.as_deref());
                if self.tx != Tx::Idle {
                    // Readers may cache the old rows again before the COMMIT.
                    match (tables, &mut self.written_in_tx) {
                        (Some(t), Some(w)) => w.extend(t),
                        (None, w) => *w = None,
                        (Some(_), None) => {}
                    }
                    self.wrote_in_tx = true;
                }
            }
            Plan::Lookup { key, tables, ttl } => {
                let signal = self.cancel.signal.clone();
                let canceled = signal.notified();
                let lookup = tokio::select! {
                    biased;
                    _ = canceled => {
                        self.fail(&PgError::canceled());
                        self.ready();
                        return Ok(self.conn.flush().await?);
                    }
                    l = cache.lookup(key) => l,
                };
                match lookup {
                    Lookup::Hit(body) => {
                        self.conn.out.extend_from_slice(&body);
                        self.ready();
                        self.conn.flush().await?;
                        self.conn.shrink_idle();
                    }
                    Lookup::Bypass => self.query_message(frame).await?,
                    Lookup::Lead(lead) => {
                        self.conn.start_recording(cache.max_entry_bytes + READY_LEN);
                        let result = self.query_message(frame).await;
                        let recorded = self.conn.finish_recording();
                        result?;
                        match recorded {
                            None => lead.store(None, tables, ttl),
                            Some(mut body) => {
                                // The answer ends with ReadyForQuery; it is stored only
                                // when the statement ran outside any transaction.
                                let idle = body.len() >= READY_LEN
                                    && body[body.len() - READY_LEN] == b'Z'
                                    && body[body.len() - 1] == b'I';
                                body.truncate(body.len().saturating_sub(READY_LEN));
                                if idle && results::storable(&body) {
                                    lead.store(Some(body.freeze()), tables, ttl);
                                }
                            }
                        }
                    }
                }
            }
        }
        if self.tx == Tx::Idle && self.wrote_in_tx {
            self.wrote_in_tx = false;
            let written = self.written_in_tx.replace(Vec::new());
            cache.invalidate(written.as_deref());
        }
        Ok(())
    }

    /// Decides what the cache does with a query string.
    fn cache_plan(&mut self, sql: &str) -> Plan {
        if self.matview_statement(sql).is_some() {
            // View commands invalidate what they change themselves.
            return Plan::Nothing;
        }
        let Ok(mut statements) = self.shared.engine.parse(sql) else {
            // Unparsed text only reaches an upstream from a role that may write.
            return if self.forward.is_some() && self.policy.write {
                Plan::Invalidate(None)
            } else {
                Plan::Nothing
            };
        };
        if statements.len() != 1 {
            let writes: Vec<Cacheability> = statements.iter().map(results::cacheability).collect();
            return merge_writes(writes);
        }
        let stmt = statements.remove(0);
        if let Statement::CreateTable(ct) = &stmt
            && (ct.temporary || ct.name.to_string().starts_with('#'))
        {
            // Temporary tables are per session while keys are per identity.
            self.has_temp_tables = true;
        }
        match results::cacheability(&stmt) {
            Cacheability::Cacheable { tables } => {
                let Some(ttl) = self.cache_ttl() else {
                    return Plan::Nothing;
                };
                if self.tx != Tx::Idle || self.has_temp_tables {
                    return Plan::Nothing;
                }
                match self.cache_key(&stmt) {
                    Some(key) => Plan::Lookup { key, tables, ttl },
                    None => Plan::Nothing,
                }
            }
            Cacheability::Writes(tables) => Plan::Invalidate(tables),
            Cacheability::Neither => Plan::Nothing,
        }
    }

    /// The key of a cacheable statement: where it runs and as whom, the settings that
    /// shape its answer, its normalised text. `None`: it must not be cached here.
    fn cache_key(&mut self, stmt: &Statement) -> Option<Key> {
        self.follow_lake_changes();
        let scope = match self.forward.as_ref() {
            Some(fwd) => {
                if fwd.owed > 0 || fwd.pending_sync || fwd.lost_in_tx || fwd.abort_tx {
                    return None;
                }
                let lake = crate::route::references_lake(stmt, |s| {
                    fwd.lake_schemas.contains(&s.to_lowercase())
                });
                if lake {
                    self.lake_scope()
                } else {
                    format!(
                        "upstream\0{}\0{}\0{}\0{:?}\0{:?}",
                        fwd.upstream.name(),
                        fwd.identity.user,
                        fwd.identity.groups.join(","),
                        fwd.params,
                        self.policy.row_limit,
                    )
                }
            }
            None => self.lake_scope(),
        };
        let mut settings = String::new();
        for name in KEYED_SETTINGS {
            settings.push_str(self.settings.get(name).unwrap_or(""));
            settings.push('\0');
        }
        let text = stmt.to_string();
        Some(Key::new([
            b"Q".as_slice(),
            scope.as_bytes(),
            settings.as_bytes(),
            text.as_bytes(),
        ]))
    }

    /// Lake answers depend on the role policy (which tables exist for it) and on the
    /// catalog generation (Glue refreshes, view refreshes).
    fn lake_scope(&self) -> String {
        format!(
            "lake\0{:?}\0{}",
            self.policy,
            self.shared.engine.lake_generation()
        )
    }
}

/// A multi-statement string is never cached; its writes still invalidate.
fn merge_writes(parts: Vec<Cacheability>) -> Plan {
    let mut tables = Vec::new();
    let mut any = false;
    for p in parts {
        match p {
            Cacheability::Writes(None) => return Plan::Invalidate(None),
            Cacheability::Writes(Some(t)) => {
                any = true;
                tables.extend(t);
            }
            _ => {}
        }
    }
    if any {
        Plan::Invalidate(Some(tables))
    } else {
        Plan::Nothing
    }
}
