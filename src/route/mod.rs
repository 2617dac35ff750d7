//! Where a statement goes: answered by the session itself (SET, SHOW, BEGIN, …),
//! planned and run by the lake engine (queries), relayed to the upstream, or refused
//! with a reason.
//!
//! [`Router::decide`] makes the decision once per query string (for the extended
//! protocol once per prepared statement, at Parse; Bind/Execute follow it). This
//! file holds the statement-level pieces it is built from: [`classify`] (what a
//! statement is to Sluice), [`is_read_only`], [`references_lake`].
//!
//! - `decide`: the decision and its memo. `scan`: the forwarding fast path.
//! - `facts`: what a text reads and writes (the result cache's analysis).
//! - `view_ddl`: gateway view statements, recognised before parsing.
//! - `cursor_motion`: FETCH/MOVE forms DataFusion's parser lacks.
//! - `fingerprint`: query groups (libpg_query's rules). `redact`: credentials masked
//!   for logs. `sqlcommenter`: attribution tags. `tokens`: their shared tokenizing.

use datafusion::sql::sqlparser::ast::{
    DiscardObject, Expr, FunctionArguments, ObjectName, Reset, Set, Statement, Value, ValueWithSpan,
};

use std::sync::Arc;

use crate::error::{PgError, SqlState};

pub mod cursor_motion;
pub mod decide;
pub mod facts;
pub mod fingerprint;
pub mod label;
pub mod redact;
pub mod scan;
pub mod sqlcommenter;
mod tokens;
pub mod view_ddl;

pub use decide::{CacheUse, Context, Decision, Effect, Forwarding, Plan, Router, Step};

/// PgBouncer's admin console views Sluice answers for admin roles (`SHOW POOLS`,
/// …): never relayed, whatever the session.
pub const CONSOLE_VIEWS: &[&str] = &["pools", "clients", "servers", "stats"];

pub fn is_console_view(name: &str) -> bool {
    CONSOLE_VIEWS.iter().any(|v| v.eq_ignore_ascii_case(name))
}

/// A statement the session answers without an engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `SET name = value`; `None` means `DEFAULT`.
    Set {
        name: String,
        value: Option<String>,
    },
    /// `RESET name`; `None` means `RESET ALL`.
    Reset(Option<String>),
    Show(String),
    /// `DISCARD ALL` and friends.
    Discard,
    Begin,
    Commit,
    Rollback,
    /// `DEALLOCATE [PREPARE] name | ALL`; `None` means ALL.
    Deallocate(Option<String>),
    /// Transaction characteristics: accepted (the gateway is read-only anyway).
    SetTransaction,
    /// Savepoints carry no data in a read-only transaction, but clients (psycopg's
    /// nested transactions, pgjdbc's autosave) use them to recover from errors.
    Savepoint(String),
    Release(String),
    RollbackTo(String),
    /// `FETCH [FORWARD] n | ALL FROM cursor`; `None` means ALL. `discard`: `MOVE`,
    /// which advances the same way without sending the rows.
    Fetch {
        cursor: String,
        count: Option<u64>,
        discard: bool,
    },
    /// `CLOSE cursor | ALL`; `None` means ALL.
    CloseCursor(Option<String>),
    /// `CALL sluice.refresh_lake(['database'])`: reload lake metadata now.
    RefreshLake(Option<String>),
    /// `CALL sluice.reset_query_groups()`: forget every query group's statistics.
    ResetQueryGroups,
    /// `CALL sluice.run_job('name')`: run a scheduled job now.
    RunJob(String),
    /// `SELECT sluice.terminate(pid)` / `SELECT pg_terminate_backend(pid)`: end
    /// another gateway session (admin roles). `function` names the result column.
    Terminate {
        pid: i64,
        function: &'static str,
    },
}

impl Command {
    /// COMMIT, ROLLBACK and ROLLBACK TO: the only statements a failed transaction
    /// block accepts.
    pub fn ends_failed_block(&self) -> bool {
        matches!(
            self,
            Command::Commit | Command::Rollback | Command::RollbackTo(_)
        )
    }

    /// The CommandComplete tag PostgreSQL sends for this command.
    pub fn tag(&self) -> &'static str {
        match self {
            Command::Set { .. } | Command::SetTransaction => "SET",
            Command::Reset(_) => "RESET",
            Command::Show(_) => "SHOW",
            Command::Discard => "DISCARD ALL",
            Command::Begin => "BEGIN",
            Command::Commit => "COMMIT",
            Command::Rollback => "ROLLBACK",
            Command::Deallocate(None) => "DEALLOCATE ALL",
            Command::Deallocate(Some(_)) => "DEALLOCATE",
            Command::Savepoint(_) => "SAVEPOINT",
            Command::Release(_) => "RELEASE",
            Command::RollbackTo(_) => "ROLLBACK",
            Command::Fetch { discard: false, .. } => "FETCH",
            Command::Fetch { discard: true, .. } => "MOVE",
            Command::CloseCursor(None) => "CLOSE CURSOR ALL",
            Command::CloseCursor(Some(_)) => "CLOSE CURSOR",
            Command::RefreshLake(_) | Command::ResetQueryGroups | Command::RunJob(_) => "CALL",
            Command::Terminate { .. } => "SELECT 1",
        }
    }
}

/// The optional database name of `CALL sluice.refresh_lake('db')`.
fn refresh_argument(
    f: &datafusion::sql::sqlparser::ast::Function,
) -> Result<Option<String>, PgError> {
    string_argument(
        f,
        "usage: CALL sluice.refresh_lake() or CALL sluice.refresh_lake('database')",
    )
}

/// The job name of `CALL sluice.run_job('name')`.
fn job_argument(f: &datafusion::sql::sqlparser::ast::Function) -> Result<String, PgError> {
    let usage = "usage: CALL sluice.run_job('job name')";
    string_argument(f, usage)?.ok_or_else(|| PgError::new(SqlState::SYNTAX_ERROR, usage))
}

/// The one optional string-literal argument of a `CALL sluice.…(…)`.
fn string_argument(
    f: &datafusion::sql::sqlparser::ast::Function,
    usage: &str,
) -> Result<Option<String>, PgError> {
    use datafusion::sql::sqlparser::ast::{FunctionArg, FunctionArgExpr};
    let usage = || PgError::new(SqlState::SYNTAX_ERROR, usage.to_owned());
    let args = match &f.args {
        FunctionArguments::None => return Ok(None),
        FunctionArguments::List(list) => &list.args,
        FunctionArguments::Subquery(_) => return Err(usage()),
    };
    match args.as_slice() {
        [] => Ok(None),
        [FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Value(v)))] => {
            match v.value.clone().into_string() {
                Some(name) => Ok(Some(name)),
                None => Err(usage()),
            }
        }
        _ => Err(usage()),
    }
}

/// Classifies one parsed statement as a session without an upstream sees it: a
/// session command, a lake query, a cursor over one, or an error (writes → 25006,
/// unsupported statements → 0A000).
pub fn classify(stmt: Statement) -> Result<Step, PgError> {
    Ok(match stmt {
        Statement::Query(_) | Statement::Explain { .. } => Step::Lake(Arc::new(stmt)),
        Statement::Set(set) => Step::Session(classify_set(set)?),
        Statement::Reset(r) => Step::Session(Command::Reset(match r.reset {
            Reset::ALL => None,
            Reset::ConfigurationParameter(name) => Some(object_name(&name)),
        })),
        Statement::ShowVariable { variable } => {
            // The parser splits both `a b` and `a.b` into parts: the multi-word forms
            // are a known few, everything else is a dotted custom name.
            let parts: Vec<String> = variable.iter().map(|i| i.value.to_lowercase()).collect();
            let name = match parts.join(" ").as_str() {
                "transaction isolation level" => "transaction_isolation".to_owned(),
                "time zone" => "timezone".to_owned(),
                "session authorization" => "session_authorization".to_owned(),
                _ => parts.join("."),
            };
            Step::Session(Command::Show(name))
        }
        Statement::Discard { object_type } => match object_type {
            DiscardObject::ALL
            | DiscardObject::PLANS
            | DiscardObject::SEQUENCES
            | DiscardObject::TEMP => Step::Session(Command::Discard),
        },
        Statement::StartTransaction { .. } => Step::Session(Command::Begin),
        Statement::Commit { .. } => Step::Session(Command::Commit),
        Statement::Rollback {
            savepoint: None, ..
        } => Step::Session(Command::Rollback),
        Statement::Rollback {
            savepoint: Some(name),
            ..
        } => Step::Session(Command::RollbackTo(name.value)),
        Statement::Savepoint { name } => Step::Session(Command::Savepoint(name.value)),
        Statement::ReleaseSavepoint { name } => Step::Session(Command::Release(name.value)),
        Statement::Declare { mut stmts } if stmts.len() == 1 => {
            let d = stmts.remove(0);
            let (Some(name), Some(query)) = (d.names.first(), d.for_query) else {
                return Err(PgError::new(
                    SqlState::SYNTAX_ERROR,
                    "DECLARE needs a cursor name and FOR <query>",
                ));
            };
            if d.scroll == Some(true) {
                return Err(PgError::new(
                    SqlState::FEATURE_NOT_SUPPORTED,
                    "SCROLL cursors are not supported: declare the cursor NO SCROLL and fetch forward",
                ));
            }
            Step::DeclareCursor {
                name: name.value.clone(),
                binary: d.binary == Some(true),
                hold: d.hold == Some(true),
                query: Arc::new(Statement::Query(query)),
            }
        }
        Statement::Fetch {
            name, direction, ..
        } => {
            use datafusion::sql::sqlparser::ast::FetchDirection as D;
            let count = |v: &ValueWithSpan| -> Result<u64, PgError> {
                v.value.to_string().parse::<u64>().map_err(|_| {
                    PgError::new(
                        SqlState::SYNTAX_ERROR,
                        format!("invalid FETCH count {}", v.value),
                    )
                })
            };
            let count = match &direction {
                D::Next => Some(1),
                D::Count { limit } => Some(count(limit)?),
                D::Forward { limit: Some(l) } => Some(count(l)?),
                D::Forward { limit: None } => Some(1),
                D::All | D::ForwardAll => None,
                _ => {
                    return Err(PgError::new(
                        SqlState::FEATURE_NOT_SUPPORTED,
                        format!(
                            "FETCH {direction} is not supported: cursors are NO SCROLL (fetch forward only)"
                        ),
                    ));
                }
            };
            Step::Session(Command::Fetch {
                cursor: name.value,
                count: count.filter(|&c| c > 0),
                discard: false,
            })
        }
        Statement::Close { cursor } => Step::Session(Command::CloseCursor(match cursor {
            datafusion::sql::sqlparser::ast::CloseCursor::All => None,
            datafusion::sql::sqlparser::ast::CloseCursor::Specific { name } => Some(name.value),
        })),
        Statement::Deallocate { name, .. } => Step::Session(Command::Deallocate(
            if name.value.eq_ignore_ascii_case("all") && name.quote_style.is_none() {
                None
            } else {
                Some(name.value)
            },
        )),
        Statement::Call(f)
            if f.name
                .to_string()
                .eq_ignore_ascii_case("sluice.refresh_lake") =>
        {
            Step::Session(Command::RefreshLake(refresh_argument(&f)?))
        }
        Statement::Call(f) if f.name.to_string().eq_ignore_ascii_case("sluice.run_job") => {
            Step::Session(Command::RunJob(job_argument(&f)?))
        }
        Statement::Call(f)
            if f.name
                .to_string()
                .eq_ignore_ascii_case("sluice.reset_query_groups") =>
        {
            if !matches!(&f.args, FunctionArguments::None)
                && !matches!(&f.args, FunctionArguments::List(l) if l.args.is_empty())
            {
                return Err(PgError::new(
                    SqlState::SYNTAX_ERROR,
                    "sluice.reset_query_groups takes no arguments",
                )
                .with_hint("CALL sluice.reset_query_groups()"));
            }
            Step::Session(Command::ResetQueryGroups)
        }
        Statement::Insert(_)
        | Statement::Update { .. }
        | Statement::Delete(_)
        | Statement::Merge { .. }
        | Statement::Copy { .. }
        | Statement::CreateTable(_)
        | Statement::CreateView { .. }
        | Statement::CreateSchema { .. }
        | Statement::CreateDatabase { .. }
        | Statement::CreateIndex(_)
        | Statement::AlterTable { .. }
        | Statement::Drop { .. }
        | Statement::Truncate { .. } => {
            return Err(PgError::new(
                SqlState::READ_ONLY_SQL_TRANSACTION,
                format!(
                    "cannot execute {} on the lake: lake tables are read-only through Sluice",
                    statement_kind(&stmt)
                ),
            ));
        }
        other => {
            return Err(PgError::new(
                SqlState::FEATURE_NOT_SUPPORTED,
                format!("{} is not supported by Sluice", statement_kind(&other)),
            ));
        }
    })
}

/// Gateway sessions' process ids start here (above Linux's largest pid, so a client
/// never mistakes one for an upstream backend's).
pub const FIRST_SESSION_PID: i32 = 4_194_305;

/// `SELECT sluice.terminate(<pid>)` or `SELECT pg_terminate_backend(<pid>)` (one
/// call, a literal pid, nothing else in the query): a command the gateway answers
/// (`decide` says when, in a forwarding session). Recognised from the text before
/// the engine's parser, whose compatibility rewrites drop schema qualifiers.
/// `sluice.terminate` with anything but a literal pid is a usage error;
/// `pg_terminate_backend` in any other shape is left to the usual decision.
pub fn terminate_command(sql: &str) -> Option<Result<Command, PgError>> {
    use datafusion::sql::sqlparser::ast::{FunctionArg, FunctionArgExpr, SelectItem, SetExpr};
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;
    // Cheap refusals first: this runs before every decision.
    if sql.len() > 256
        || !sql
            .as_bytes()
            .windows(9)
            .any(|w| w.eq_ignore_ascii_case(b"terminate"))
    {
        return None;
    }
    let statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
    let [Statement::Query(q)] = statements.as_slice() else {
        return None;
    };
    let SetExpr::Select(select) = q.body.as_ref() else {
        return None;
    };
    if q.with.is_some() || !select.from.is_empty() || select.selection.is_some() {
        return None;
    }
    let [item] = select.projection.as_slice() else {
        return None;
    };
    let (SelectItem::UnnamedExpr(Expr::Function(f))
    | SelectItem::ExprWithAlias {
        expr: Expr::Function(f),
        ..
    }) = item
    else {
        return None;
    };
    let name = f.name.to_string().to_lowercase();
    let function = match name.as_str() {
        "sluice.terminate" => "terminate",
        "pg_terminate_backend" | "pg_catalog.pg_terminate_backend" => "pg_terminate_backend",
        _ => return None,
    };
    let pid = match &f.args {
        FunctionArguments::List(list) => match list.args.as_slice() {
            [FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Value(v)))] => match &v.value {
                Value::Number(n, _) => n.parse::<i64>().ok(),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    };
    match (pid, function) {
        (Some(pid), _) => Some(Ok(Command::Terminate { pid, function })),
        (None, "terminate") => Some(Err(PgError::new(
            SqlState::FEATURE_NOT_SUPPORTED,
            "sluice.terminate takes one session pid as a number literal, in a SELECT of its own",
        )
        .with_hint("SELECT sluice.terminate(4194400); SHOW sluice.sessions lists the pids"))),
        (None, _) => None,
    }
}

fn classify_set(set: Set) -> Result<Command, PgError> {
    Ok(match set {
        Set::SingleAssignment {
            variable, values, ..
        } => {
            let name = object_name(&variable);
            let value = set_value(&values);
            Command::Set { name, value }
        }
        Set::SetTimeZone { value, .. } => Command::Set {
            name: "timezone".into(),
            value: set_value(std::slice::from_ref(&value)),
        },
        Set::SetNames { charset_name, .. } => Command::Set {
            name: "client_encoding".into(),
            value: Some(charset_name.value),
        },
        Set::SetTransaction { .. } => Command::SetTransaction,
        Set::SetSessionParam(_) | Set::SetNamesDefault {} => Command::SetTransaction,
        Set::SetRole { .. } => {
            return Err(PgError::new(
                SqlState::FEATURE_NOT_SUPPORTED,
                "SET ROLE is not supported: Sluice roles come from your login",
            ));
        }
        Set::SetSessionAuthorization(_) => {
            return Err(PgError::new(
                SqlState::INSUFFICIENT_PRIVILEGE,
                "SET SESSION AUTHORIZATION is not allowed through Sluice",
            ));
        }
        other => {
            return Err(PgError::new(
                SqlState::SYNTAX_ERROR,
                format!("unsupported SET form: {other}"),
            ));
        }
    })
}

fn object_name(name: &ObjectName) -> String {
    name.to_string().to_lowercase()
}

/// The text of a SET value list (`a, b` for lists); `None` for `DEFAULT`.
fn set_value(values: &[Expr]) -> Option<String> {
    let parts: Vec<String> = values
        .iter()
        .map(|v| match v {
            Expr::Value(ValueWithSpan {
                value: Value::SingleQuotedString(s) | Value::DoubleQuotedString(s),
                ..
            }) => s.clone(),
            Expr::Value(ValueWithSpan { value, .. }) => value.to_string(),
            Expr::Identifier(ident) => ident.value.clone(),
            other => other.to_string(),
        })
        .collect();
    if parts.len() == 1 && parts[0].eq_ignore_ascii_case("default") {
        return None;
    }
    Some(parts.join(", "))
}

/// The schema each table reference of `stmt` is qualified with (`schema.table` or
/// `catalog.schema.table`; lower case), `None` for an unqualified name.
pub fn relation_schemas(stmt: &Statement) -> Vec<Option<String>> {
    use datafusion::sql::sqlparser::ast::visit_relations;
    let mut schemas = Vec::new();
    let _ = visit_relations(stmt, |name| {
        let parts: Vec<&str> = name
            .0
            .iter()
            .filter_map(|p| p.as_ident().map(|i| i.value.as_str()))
            .collect();
        let schema = (parts.len() >= 2).then(|| parts[parts.len() - 2].to_lowercase());
        schemas.push(schema);
        std::ops::ControlFlow::<()>::Continue(())
    });
    schemas
}

/// Whether `stmt` names a table in a schema `is_lake_schema` accepts (`schema.table`
/// or `catalog.schema.table`; the schema lower case).
pub fn references_lake(stmt: &Statement, is_lake_schema: impl Fn(&str) -> bool) -> bool {
    relation_schemas(stmt)
        .iter()
        .any(|s| s.as_deref().is_some_and(&is_lake_schema))
}

/// Whether a statement only reads. Read-only roles may forward only these; anything
/// else (including every statement Sluice cannot parse) needs `write = true`.
pub fn is_read_only(stmt: &Statement) -> bool {
    use datafusion::sql::sqlparser::ast::{CopyTarget, SetExpr, Visit, Visitor};
    struct Writes(bool);
    impl Visitor for Writes {
        type Break = ();
        fn pre_visit_statement(&mut self, s: &Statement) -> std::ops::ControlFlow<()> {
            if matches!(
                s,
                Statement::Insert(_)
                    | Statement::Update { .. }
                    | Statement::Delete(_)
                    | Statement::Merge { .. }
            ) {
                self.0 = true;
                return std::ops::ControlFlow::Break(());
            }
            std::ops::ControlFlow::Continue(())
        }
        fn pre_visit_query(
            &mut self,
            q: &datafusion::sql::sqlparser::ast::Query,
        ) -> std::ops::ControlFlow<()> {
            let into = match q.body.as_ref() {
                SetExpr::Select(s) => s.into.is_some(),
                SetExpr::Insert(_)
                | SetExpr::Update(_)
                | SetExpr::Delete(_)
                | SetExpr::Merge(_) => true,
                _ => false,
            };
            if into {
                self.0 = true;
                return std::ops::ControlFlow::Break(());
            }
            std::ops::ControlFlow::Continue(())
        }
    }
    let no_writes_inside = |s: &Statement| {
        let mut v = Writes(false);
        let _ = s.visit(&mut v);
        !v.0
    };
    match stmt {
        Statement::Query(_) => no_writes_inside(stmt),
        // `EXPLAIN (ANALYZE) …` keeps ANALYZE among its options: whatever the form,
        // only the explanation of a read-only statement is read-only.
        Statement::Explain { statement, .. } => is_read_only(statement),
        Statement::Declare { .. } => no_writes_inside(stmt),
        Statement::Prepare { statement, .. } => is_read_only(statement),
        Statement::Copy {
            to: true,
            target: CopyTarget::Stdout,
            ..
        } => no_writes_inside(stmt),
        Statement::Set(set) => !matches!(
            set,
            Set::SetRole { .. } | Set::SetSessionAuthorization(_)
        ),
        Statement::Reset(_)
        | Statement::ShowVariable { .. }
        | Statement::ShowVariables { .. }
        | Statement::ShowTables { .. }
        | Statement::ShowColumns { .. }
        | Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Savepoint { .. }
        | Statement::ReleaseSavepoint { .. }
        | Statement::Fetch { .. }
        | Statement::Close { .. }
        | Statement::Deallocate { .. }
        | Statement::Discard { .. }
        // EXECUTE runs a statement that was checked when it was PREPAREd.
        | Statement::Execute { .. } => true,
        _ => false,
    }
}

/// A short name for a statement kind, for messages ("INSERT", "CREATE TABLE").
pub fn statement_kind(stmt: &Statement) -> String {
    let text = stmt.to_string();
    let words: Vec<&str> = text.split_whitespace().take(2).collect();
    match words.as_slice() {
        [first, second] if matches!(first.to_uppercase().as_str(), "CREATE" | "DROP" | "ALTER") => {
            format!("{} {}", first.to_uppercase(), second.to_uppercase())
        }
        [first, ..] => first.to_uppercase(),
        [] => "statement".into(),
    }
}

#[cfg(test)]
mod tests;
