//! Gateway-managed objects a session can act on: materialized view commands and
//! the `SHOW sluice.result_cache` / `SHOW sluice.materialized_views` views.

use pgwire::messages::response::CommandComplete;

use super::{CACHE, MATVIEWS, Session, Tx};
use crate::cache::matview::sql::{self, MatViewStatement};
use crate::server::error::{PgError, SqlState};

/// Columns of the views this module answers, or `None` for other names.
pub(super) fn columns(name: &str) -> Option<&'static [&'static str]> {
    match name {
        CACHE => Some(&[
            "entries",
            "bytes",
            "max_bytes",
            "hits",
            "misses",
            "hit_ratio",
            "coalesced",
            "stored",
            "too_big",
            "invalidations",
            "oldest_entry_secs",
            "your_ttl_secs",
        ]),
        MATVIEWS => Some(crate::cache::matview::SHOW_COLUMNS),
        _ => None,
    }
}

impl Session {
    /// A materialized-view statement on a gateway view schema, if `sql` is one.
    pub(super) fn matview_statement(&self, sql: &str) -> Option<Result<MatViewStatement, PgError>> {
        let mv = self.shared.matviews.as_ref()?;
        sql::recognize(sql, mv.schemas(), |n| mv.resolve_unqualified(n))
    }

    pub(super) async fn run_matview(&mut self, stmt: &MatViewStatement) -> Result<(), PgError> {
        let Some(mv) = self.shared.matviews.clone() else {
            return Err(PgError::new(
                SqlState::FEATURE_NOT_SUPPORTED,
                "gateway materialized views are not configured ([materialized_views])",
            ));
        };
        if !(self.policy.manage_materialized_views || self.policy.admin) {
            return Err(PgError::new(
                SqlState::INSUFFICIENT_PRIVILEGE,
                format!(
                    "permission denied: {} needs a Sluice role with manage_materialized_views = true",
                    stmt.tag()
                ),
            ));
        }
        if self.tx != Tx::Idle {
            return Err(PgError::new(
                SqlState::ACTIVE_SQL_TRANSACTION,
                format!("{} cannot run inside a transaction block", stmt.tag()),
            ));
        }
        // The work runs in its own task: a client that cancels or disconnects must
        // not leave a refresh half done (it finishes, or fails and cleans up).
        let user = self.identity.user.clone();
        let may_write = self.policy.write;
        let job = stmt.clone();
        let task = tokio::spawn(async move {
            match job {
                MatViewStatement::Create {
                    name,
                    query,
                    options,
                    with_data,
                    if_not_exists,
                    or_replace,
                } => {
                    let exists = mv.exists(&name);
                    if exists && if_not_exists {
                        return Ok::<Done, PgError>(Done::Skipped(format!(
                            "relation \"{name}\" already exists, skipping"
                        )));
                    }
                    if exists && or_replace {
                        mv.drop_view(&name, true).await?;
                    }
                    let outcome = mv
                        .create(&name, &query, &options, with_data, &user, may_write)
                        .await?;
                    Ok(match outcome {
                        Some(o) => Done::Tag(format!("SELECT {}", o.rows)),
                        None => Done::Tag("CREATE MATERIALIZED VIEW".into()),
                    })
                }
                MatViewStatement::Refresh {
                    name, with_data, ..
                } => {
                    let o = mv.refresh(&name, with_data).await?;
                    Ok(Done::Refreshed(format!(
                        "materialized view \"{name}\" refreshed{}: {} row(s) added, {} in all, {} ms",
                        if o.incremental { " incrementally" } else { "" },
                        o.rows_added,
                        o.rows,
                        o.duration.as_millis()
                    )))
                }
                MatViewStatement::Drop { names, if_exists } => {
                    let mut skipped = Vec::new();
                    for name in names {
                        if !mv.drop_view(&name, if_exists).await? {
                            skipped.push(format!(
                                "materialized view \"{name}\" does not exist, skipping"
                            ));
                        }
                    }
                    Ok(Done::Dropped(skipped))
                }
            }
        });
        let done = task.await.map_err(|_| {
            PgError::new(
                SqlState::INTERNAL_ERROR,
                "the materialized view command failed with an internal error (see the gateway log)",
            )
        })??;
        match done {
            Done::Tag(tag) => self.conn.send(&CommandComplete::new(tag)),
            Done::Skipped(message) => {
                self.notice_with(SqlState("42P07"), "NOTICE", &message);
                self.conn
                    .send(&CommandComplete::new(stmt.tag().to_string()));
            }
            Done::Refreshed(message) => {
                self.notice_with(SqlState("00000"), "NOTICE", &message);
                self.conn
                    .send(&CommandComplete::new(stmt.tag().to_string()));
            }
            Done::Dropped(skipped) => {
                for m in skipped {
                    self.notice_with(SqlState("00000"), "NOTICE", &m);
                }
                self.conn
                    .send(&CommandComplete::new(stmt.tag().to_string()));
            }
        }
        Ok(())
    }

    /// `SHOW sluice.result_cache`.
    pub(super) fn cache_rows(&self) -> Vec<Vec<String>> {
        let Some(cache) = &self.shared.results else {
            return Vec::new();
        };
        let s = cache.stats();
        let lookups = s.hits + s.misses;
        let ratio = if lookups == 0 {
            String::new()
        } else {
            format!("{:.3}", s.hits as f64 / lookups as f64)
        };
        let ttl = self
            .policy
            .result_cache_ttl_secs
            .unwrap_or(cache.default_ttl.as_secs());
        vec![vec![
            s.entries.to_string(),
            s.bytes.to_string(),
            s.max_bytes.to_string(),
            s.hits.to_string(),
            s.misses.to_string(),
            ratio,
            s.coalesced.to_string(),
            s.stored.to_string(),
            s.too_big.to_string(),
            s.invalidations.to_string(),
            s.oldest_secs.map(|o| o.to_string()).unwrap_or_default(),
            ttl.to_string(),
        ]]
    }

    /// `SHOW sluice.materialized_views`: the views this session may read (all of
    /// them for view managers and admins); refresh errors in full for admins.
    pub(super) fn matview_rows(&self) -> Vec<Vec<String>> {
        let Some(mv) = &self.shared.matviews else {
            return Vec::new();
        };
        let all = self.policy.admin || self.policy.manage_materialized_views;
        mv.show_rows(
            |v| all || self.policy.can_read(&v.schema, &v.name),
            self.policy.admin,
        )
    }
}

/// How a materialized-view command ended.
enum Done {
    Tag(String),
    Skipped(String),
    Refreshed(String),
    Dropped(Vec<String>),
}
