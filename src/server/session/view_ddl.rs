//! Gateway materialized view statements (`CREATE / REFRESH / DROP MATERIALIZED VIEW`
//! on a view schema), run for the session by `MatViews`.

use super::{Session, Tx};
use crate::error::{PgError, SqlState};
use crate::route::view_ddl::MatViewStatement;
use crate::wire::messages::CommandComplete;

impl Session {
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
}

/// How a materialized-view command ended.
enum Done {
    Tag(String),
    Skipped(String),
    Refreshed(String),
    Dropped(Vec<String>),
}
