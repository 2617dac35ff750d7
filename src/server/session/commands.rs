//! Session commands: SET/RESET/SHOW, transaction control, savepoints, cursor
//! CLOSE, DEALLOCATE, DISCARD, and the admin views and calls (`src/admin/`).

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use super::{Session, Tx};
use crate::admin::{self, ViewContext};
use crate::error::{PgError, SqlState};
use crate::route::Command;
use crate::wire::messages::{self, CommandComplete, ParameterStatus};
use crate::wire::rows::{self, Format};

impl Session {
    pub(super) async fn run_command(
        &mut self,
        cmd: &Command,
        format: Format,
        describe: bool,
    ) -> Result<(), PgError> {
        match cmd {
            Command::Set { name, value } => {
                if let Some((n, v)) = self.settings.set(name, value.as_deref())? {
                    self.conn.send(&ParameterStatus::new(n.to_string(), v));
                }
            }
            Command::SetTransaction => {}
            Command::Reset(name) => {
                for (n, v) in self.settings.reset(name.as_deref())? {
                    self.conn.send(&ParameterStatus::new(n.to_string(), v));
                }
            }
            Command::Show(name) => {
                self.show(name, format, describe)?;
                return Ok(());
            }
            Command::Terminate { pid, function } => {
                let done = self.terminate(*pid)?;
                let schema = Self::terminate_schema(function);
                if describe {
                    rows::row_description(&mut self.conn.out, &schema, &[format]);
                }
                bool_row(&mut self.conn.out, done, format);
                self.conn
                    .send(&CommandComplete::new("SELECT 1".to_string()));
                return Ok(());
            }
            Command::RefreshLake(database) => {
                let message =
                    admin::refresh_lake::refresh_lake(&self.view_context(), database.as_deref())
                        .await?;
                self.notice_with(SqlState("00000"), "NOTICE", &message);
            }
            Command::RunJob(name) => {
                let Some(jobs) = &self.shared.jobs else {
                    return Err(PgError::new(
                        SqlState::UNDEFINED_OBJECT,
                        format!("job \"{name}\" does not exist (no [[jobs]] are configured)"),
                    ));
                };
                let caller = crate::jobs::Caller {
                    admin: self.policy.admin,
                    roles: &self.identity.roles,
                };
                let run = jobs.run_now(name, &caller).await?;
                let message = format!(
                    "job \"{}\" succeeded: {}, {} row(s) (run {})",
                    run.job, run.return_message, run.rows, run.runid
                );
                self.notice_with(SqlState("00000"), "NOTICE", &message);
            }
            Command::ResetQueryGroups => {
                if !self.policy.admin {
                    return Err(PgError::new(
                        SqlState::INSUFFICIENT_PRIVILEGE,
                        "permission denied: sluice.reset_query_groups() needs a Sluice role with admin = true",
                    ));
                }
                if let Some(groups) = &self.shared.observer.query_groups {
                    groups.reset();
                }
            }
            Command::Discard => {
                if self.tx != Tx::Idle {
                    return Err(PgError::new(
                        SqlState::ACTIVE_SQL_TRANSACTION,
                        "DISCARD ALL cannot run inside a transaction block",
                    ));
                }
                self.statements.clear();
                self.portals.clear();
                for (n, v) in self.settings.reset(None)? {
                    self.conn.send(&ParameterStatus::new(n.to_string(), v));
                }
            }
            Command::Begin => {
                if self.tx != Tx::Idle {
                    self.notice(
                        SqlState::ACTIVE_SQL_TRANSACTION,
                        "there is already a transaction in progress",
                    );
                } else {
                    self.tx = Tx::Block;
                }
            }
            Command::Commit => {
                let tag = match self.tx {
                    Tx::Idle => {
                        self.notice(
                            SqlState::NO_ACTIVE_SQL_TRANSACTION,
                            "there is no transaction in progress",
                        );
                        "COMMIT"
                    }
                    Tx::Block => "COMMIT",
                    Tx::Failed => "ROLLBACK",
                };
                self.tx = Tx::Idle;
                self.savepoints.clear();
                self.portals.retain(|_, p| p.hold);
                self.conn.send(&CommandComplete::new(tag.to_string()));
                return Ok(());
            }
            Command::Rollback => {
                if self.tx == Tx::Idle {
                    self.notice(
                        SqlState::NO_ACTIVE_SQL_TRANSACTION,
                        "there is no transaction in progress",
                    );
                }
                self.tx = Tx::Idle;
                self.savepoints.clear();
                self.portals.retain(|_, p| p.hold);
            }
            Command::CloseCursor(name) => match name {
                None => self.portals.clear(),
                Some(n) => {
                    if self.portals.remove(n).is_none() {
                        return Err(PgError::new(
                            SqlState::INVALID_CURSOR_NAME,
                            format!("cursor \"{n}\" does not exist"),
                        ));
                    }
                }
            },
            Command::Fetch { .. } => {
                // FETCH runs through the portal machinery (see simple_statement); as a
                // prepared statement it is not supported.
                return Err(PgError::new(
                    SqlState::FEATURE_NOT_SUPPORTED,
                    "FETCH cannot be prepared; send it as a simple query",
                ));
            }
            Command::Savepoint(name) => {
                if self.tx == Tx::Idle {
                    return Err(PgError::new(
                        SqlState::NO_ACTIVE_SQL_TRANSACTION,
                        "SAVEPOINT can only be used in transaction blocks",
                    ));
                }
                self.savepoints.push(name.clone());
            }
            Command::Release(name) | Command::RollbackTo(name) => {
                if self.tx == Tx::Idle {
                    return Err(PgError::new(
                        SqlState::NO_ACTIVE_SQL_TRANSACTION,
                        format!("{} can only be used in transaction blocks", cmd.tag()),
                    ));
                }
                let Some(pos) = self.savepoints.iter().rposition(|s| s == name) else {
                    return Err(PgError::new(
                        SqlState("3B001"),
                        format!("savepoint \"{name}\" does not exist"),
                    ));
                };
                if matches!(cmd, Command::Release(_)) {
                    self.savepoints.truncate(pos);
                } else {
                    // The savepoint survives ROLLBACK TO; the transaction is usable again.
                    self.savepoints.truncate(pos + 1);
                    self.tx = Tx::Block;
                }
            }
            Command::Deallocate(name) => match name {
                None => self.statements.clear(),
                Some(n) => {
                    if self.statements.remove(n).is_none() {
                        return Err(PgError::new(
                            SqlState::INVALID_SQL_STATEMENT_NAME,
                            format!("prepared statement \"{n}\" does not exist"),
                        ));
                    }
                }
            },
        }
        self.conn.send(&CommandComplete::new(cmd.tag().to_string()));
        Ok(())
    }

    /// `sluice.terminate(pid)` / `pg_terminate_backend(pid)`: admin roles only;
    /// `false` with a WARNING when no gateway session has that pid, as PostgreSQL.
    /// Each termination is an audit event naming both sides.
    fn terminate(&mut self, pid: i64) -> Result<bool, PgError> {
        if !self.policy.admin {
            return Err(PgError::new(
                SqlState::INSUFFICIENT_PRIVILEGE,
                "permission denied to terminate process",
            )
            .with_hint("terminating sessions needs a Sluice role with admin = true"));
        }
        let target = i32::try_from(pid)
            .ok()
            .and_then(|p| self.shared.observer.board.get(p));
        let Some(target) = target.filter(|t| self.shared.cancels.terminate(t.who.session)) else {
            self.notice(
                SqlState::WARNING,
                &format!("PID {pid} is not a Sluice session"),
            );
            return Ok(false);
        };
        tracing::info!(pid, user = %target.who.user, by = %self.identity.user, "session terminated by an admin");
        self.shared.observer.terminated(&self.who, &target.who);
        Ok(true)
    }

    /// The one boolean column `sluice.terminate` answers with.
    pub(super) fn terminate_schema(function: &str) -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new(
            function,
            DataType::Boolean,
            true,
        )]))
    }

    /// `SHOW sluice.lake`: the Glue databases this session's roles may see.
    pub(super) fn notice(&mut self, code: SqlState, message: &str) {
        self.notice_with(code, "WARNING", message);
    }

    pub(super) fn notice_with(&mut self, code: SqlState, severity: &str, message: &str) {
        messages::notice(&mut self.conn.out, code, severity, message);
    }

    /// The columns `SHOW name` answers with.
    pub(super) fn show_schema(name: &str) -> SchemaRef {
        let text = |n: &str| Field::new(n, DataType::Utf8, true);
        if let Some(view) = admin::find(name) {
            Arc::new(Schema::new(
                view.columns().iter().map(|c| text(c)).collect::<Vec<_>>(),
            ))
        } else if name == "all" {
            Arc::new(Schema::new(vec![
                text("name"),
                text("setting"),
                text("description"),
            ]))
        } else {
            Arc::new(Schema::new(vec![text(name)]))
        }
    }

    /// `SHOW name`: an admin view, `all` settings, or one setting.
    fn show(&mut self, name: &str, format: Format, describe: bool) -> Result<(), PgError> {
        let table: Vec<Vec<String>> = if let Some(view) = admin::find(name) {
            if view.admin_only() && !self.policy.admin {
                return Err(PgError::new(
                    SqlState::INSUFFICIENT_PRIVILEGE,
                    format!("permission denied: SHOW {name} needs a Sluice role with admin = true"),
                ));
            }
            view.rows(&self.view_context())
        } else if name == "all" {
            let mut names = vec![
                "application_name",
                "client_encoding",
                "DateStyle",
                "extra_float_digits",
                "IntervalStyle",
                "search_path",
                "server_version",
                "standard_conforming_strings",
                "statement_timeout",
                "TimeZone",
            ];
            names.sort_by_key(|n| n.to_lowercase());
            names
                .into_iter()
                .map(|n| {
                    vec![
                        n.to_string(),
                        self.settings.get(n).unwrap_or("").to_string(),
                        String::new(),
                    ]
                })
                .collect()
        } else {
            let value = self.settings.get(name).ok_or_else(|| {
                PgError::new(
                    SqlState::UNDEFINED_OBJECT,
                    format!("unrecognized configuration parameter \"{name}\""),
                )
            })?;
            vec![vec![value.to_string()]]
        };
        let schema = Self::show_schema(name);
        let formats = vec![format; schema.fields().len()];
        // SHOW's values are text; text's binary form is the same bytes.
        if describe {
            rows::row_description(&mut self.conn.out, &schema, &formats);
        }
        for row in &table {
            messages::text_row(&mut self.conn.out, row);
        }
        self.conn.send(&CommandComplete::new("SHOW".to_string()));
        Ok(())
    }

    /// What the admin views may read, for this session.
    fn view_context(&self) -> ViewContext<'_> {
        ViewContext {
            identity: &self.identity,
            policy: &self.policy,
            engine: &self.shared.engine,
            results: self.shared.results.as_deref(),
            matviews: self.shared.matviews.as_deref(),
            jobs: self.shared.jobs.as_deref(),
            upstreams: &self.shared.upstreams,
            observer: &self.shared.observer,
            database: &self.shared.config.server.database,
            workload: self.shared.workload.as_deref(),
        }
    }
}

/// One DataRow with one boolean, in `format`.
fn bool_row(out: &mut bytes::BytesMut, value: bool, format: Format) {
    use bytes::BufMut;
    let (len, byte) = match format {
        Format::Binary => (1, u8::from(value)),
        Format::Text => (1, if value { b't' } else { b'f' }),
    };
    out.put_u8(b'D');
    out.put_i32(4 + 2 + 4 + len);
    out.put_i16(1);
    out.put_i32(len);
    out.put_u8(byte);
}

impl Session {
    /// `options=-c name=value …` from the startup packet.
    pub(super) fn apply_options(&mut self, options: &str) -> Result<(), PgError> {
        let mut words = options.split_whitespace();
        while let Some(w) = words.next() {
            let assignment = if w == "-c" {
                words.next().unwrap_or("")
            } else if let Some(rest) = w.strip_prefix("-c") {
                rest
            } else if let Some(rest) = w.strip_prefix("--") {
                rest
            } else {
                return Err(PgError::new(
                    SqlState::FEATURE_NOT_SUPPORTED,
                    format!("unsupported startup option \"{w}\""),
                ));
            };
            let (name, value) = assignment.split_once('=').ok_or_else(|| {
                PgError::new(
                    SqlState::SYNTAX_ERROR,
                    format!("invalid startup option \"{assignment}\""),
                )
            })?;
            self.settings.set(&name.replace('-', "_"), Some(value))?;
        }
        Ok(())
    }

    /// Applies what `set_config` did during a lake statement, as `SET` would (with
    /// ParameterStatus for reported settings). A value the setting refuses is
    /// reported as a WARNING: the statement itself already succeeded.
    pub(super) fn apply_setting_changes(&mut self) {
        let changes: Vec<_> = match self.setting_changes.lock() {
            Ok(mut c) if !c.is_empty() => c.drain(..).collect(),
            _ => return,
        };
        for (name, value, _local) in changes {
            match self.settings.set(&name, value.as_deref()) {
                Ok(Some((n, v))) => self.conn.send(&ParameterStatus::new(n.to_string(), v)),
                Ok(None) => {}
                Err(e) => self.notice_with(
                    SqlState::WARNING,
                    "WARNING",
                    &format!("set_config({name}) was not applied: {}", e.message),
                ),
            }
        }
    }
}
