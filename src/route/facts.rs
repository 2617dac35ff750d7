//! What a statement reads and writes, as the result cache and the read-only check
//! need to know it: tables read, tables written, whether its answer may be cached,
//! whether it gives the session state a cache key cannot hold.
//!
//! Computed once per query text ([`Analysis`], memoised by the router), independent
//! of who sends it; the session's decision ([`super::Decision`]) adds where it runs.

use datafusion::sql::sqlparser::ast::{
    Expr, FunctionArguments, ObjectName, Query, Statement, Visit, Visitor,
};

/// What a query string means for the cache, independent of who sends it: memoised
/// per text, so a repeated dashboard query is not parsed again on each hit.
#[derive(Debug)]
pub enum Analysis {
    /// Sluice's parser rejects it.
    Unparsed,
    /// One cacheable read: its normalised text, the tables it reads, and the
    /// schemas it names (lower case; they decide lake vs upstream).
    Read {
        text: String,
        tables: Vec<String>,
        schemas: Vec<String>,
        creates_temp: bool,
    },
    /// Writes these tables (`None`: unknown ones).
    Writes {
        tables: Option<Vec<String>>,
        creates_temp: bool,
    },
    /// Neither (SET, BEGIN, SHOW, volatile reads, several reads, …).
    Other { creates_temp: bool },
}

impl Analysis {
    /// Analyses parsed statements.
    pub fn of(statements: &[Statement]) -> Analysis {
        // A SET among several statements may be undone by a ROLLBACK in the same
        // string, which the session's copy of the settings would not see.
        let sets_in_batch = statements.len() > 1
            && statements
                .iter()
                .any(|s| matches!(s, Statement::Set(_) | Statement::Reset(_)));
        let creates_temp = sets_in_batch || statements.iter().any(private_state);
        if let [stmt] = statements
            && let Cacheability::Cacheable { tables } = cacheability(stmt)
        {
            return Analysis::Read {
                text: stmt.to_string(),
                tables,
                schemas: schemas_of(stmt),
                creates_temp,
            };
        }
        let mut written = Vec::new();
        let mut writes = false;
        for s in statements {
            match cacheability(s) {
                Cacheability::Writes(None) => {
                    return Analysis::Writes {
                        tables: None,
                        creates_temp,
                    };
                }
                Cacheability::Writes(Some(t)) => {
                    writes = true;
                    written.extend(t);
                }
                _ => {}
            }
        }
        if writes {
            Analysis::Writes {
                tables: Some(written),
                creates_temp,
            }
        } else {
            Analysis::Other { creates_temp }
        }
    }

    pub fn creates_temp(&self) -> bool {
        match self {
            Analysis::Unparsed => false,
            Analysis::Read { creates_temp, .. }
            | Analysis::Writes { creates_temp, .. }
            | Analysis::Other { creates_temp } => *creates_temp,
        }
    }
}

/// Whether a statement gives the session state a cache key cannot hold: temporary
/// tables (`CREATE TEMP`, `SELECT … INTO TEMP`, Redshift `#name`), another role
/// (`SET ROLE`, `SET SESSION AUTHORIZATION`), `set_config(…)`.
fn private_state(s: &Statement) -> bool {
    use datafusion::sql::sqlparser::ast::{Set, SetExpr};
    match s {
        Statement::CreateTable(ct) => ct.temporary || ct.name.to_string().starts_with('#'),
        Statement::Set(Set::SetRole { .. } | Set::SetSessionAuthorization(_)) => true,
        Statement::Query(q) => {
            let into_temp = matches!(q.body.as_ref(), SetExpr::Select(sel)
                if sel.into.as_ref().is_some_and(|i| i.temporary || i.name.to_string().starts_with('#')));
            into_temp || s.to_string().to_lowercase().contains("set_config")
        }
        _ => false,
    }
}

/// Schemas a statement's tables are qualified with (lower case).
fn schemas_of(stmt: &Statement) -> Vec<String> {
    let mut schemas = Vec::new();
    let _ = datafusion::sql::sqlparser::ast::visit_relations(stmt, |name| {
        let parts: Vec<String> = name
            .0
            .iter()
            .filter_map(|p| p.as_ident().map(|i| i.value.to_lowercase()))
            .collect();
        if parts.len() >= 2 && !schemas.contains(&parts[parts.len() - 2]) {
            schemas.push(parts[parts.len() - 2].clone());
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
    schemas
}

/// Functions whose value changes between two runs of the same statement, or with
/// the session: a statement calling one is never cached.
const VOLATILE: &[&str] = &[
    "now",
    "current_timestamp",
    "current_time",
    "current_date",
    "localtime",
    "localtimestamp",
    "clock_timestamp",
    "statement_timestamp",
    "transaction_timestamp",
    "timeofday",
    "getdate",
    "sysdate",
    "random",
    "setseed",
    "gen_random_uuid",
    "uuid_generate_v4",
    "nextval",
    "currval",
    "lastval",
    "setval",
    "pg_sleep",
    "txid_current",
    "pg_backend_pid",
    "inet_client_addr",
    "current_user",
    "session_user",
    "user",
    "current_role",
    "current_user_id",
    "pg_last_query_id",
    "pg_last_copy_id",
    "pg_last_copy_count",
    "set_config",
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_notify",
    "pg_current_xact_id",
    "txid_current_if_assigned",
];

/// Prefixes of function families with side effects or session state.
const VOLATILE_PREFIXES: &[&str] = &[
    "pg_advisory",
    "pg_try_advisory",
    "lo_",
    "dblink",
    "pg_stat_",
];

/// What a statement means for the cache.
#[derive(Debug, PartialEq, Eq)]
pub enum Cacheability {
    /// A read-only query whose answer depends only on the tables it names.
    Cacheable { tables: Vec<String> },
    /// A statement that may change these tables (`None`: cannot tell which).
    Writes(Option<Vec<String>>),
    /// Neither cacheable nor a write (SET, transaction control, SHOW, …), or a
    /// query that must run every time (volatile functions, system catalogs, locks).
    Neither,
}

/// The lower-case last part of a table name (`"Sales".Orders` → `orders`).
/// Invalidation by this name over-invalidates same-named tables of other schemas,
/// never under-invalidates.
fn table_tag(name: &ObjectName) -> Option<String> {
    name.0
        .last()
        .and_then(|p| p.as_ident())
        .map(|i| i.value.to_lowercase())
}

fn is_catalog_name(name: &ObjectName) -> bool {
    let parts: Vec<String> = name
        .0
        .iter()
        .filter_map(|p| p.as_ident().map(|i| i.value.to_lowercase()))
        .collect();
    let schema_is_system = parts.len() >= 2
        && matches!(
            parts[parts.len() - 2].as_str(),
            "pg_catalog" | "information_schema" | "sluice"
        );
    let table = parts.last().map(String::as_str).unwrap_or("");
    // Unqualified system views (pg_stat_activity, stv_*, svv_*, …) and Redshift
    // temporary tables (`#name`) change with every session and moment.
    schema_is_system
        || table.starts_with("pg_")
        || table.starts_with("stv_")
        || table.starts_with("svv_")
        || table.starts_with("svl_")
        || table.starts_with("stl_")
        || table.starts_with("sys_")
        || table.starts_with('#')
}

/// Tables a statement names.
fn tables_of(stmt: &Statement) -> Vec<String> {
    let mut tables = Vec::new();
    let _ = datafusion::sql::sqlparser::ast::visit_relations(stmt, |name| {
        if let Some(t) = table_tag(name)
            && !tables.contains(&t)
        {
            tables.push(t);
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
    tables
}

/// Classifies one parsed statement for the cache.
pub fn cacheability(stmt: &Statement) -> Cacheability {
    match stmt {
        Statement::Query(q) => {
            if !crate::route::is_read_only(stmt) {
                return Cacheability::Writes(Some(tables_of(stmt)));
            }
            if uncacheable_query(q) {
                return Cacheability::Neither;
            }
            let mut catalog = false;
            let _ = datafusion::sql::sqlparser::ast::visit_relations(stmt, |name| {
                if is_catalog_name(name) {
                    catalog = true;
                    return std::ops::ControlFlow::Break(());
                }
                std::ops::ControlFlow::Continue(())
            });
            if catalog {
                return Cacheability::Neither;
            }
            Cacheability::Cacheable {
                tables: tables_of(stmt),
            }
        }
        Statement::Insert(_)
        | Statement::Update { .. }
        | Statement::Delete(_)
        | Statement::Merge { .. }
        | Statement::Truncate { .. }
        | Statement::Drop { .. }
        | Statement::AlterTable { .. }
        | Statement::CreateTable(_)
        | Statement::CreateView { .. }
        | Statement::Copy { .. } => Cacheability::Writes(Some(tables_of(stmt))),
        // EXECUTE of a prepared statement: whatever it was prepared as.
        Statement::Execute { .. } => Cacheability::Writes(None),
        s if crate::route::is_read_only(s) => Cacheability::Neither,
        // CALL, GRANT, VACUUM, …: whatever they touch, play safe.
        _ => Cacheability::Writes(None),
    }
}

/// Queries with volatile or user-defined (schema-qualified) functions, row locks, or
/// `SELECT … INTO` run every time.
fn uncacheable_query(q: &Query) -> bool {
    struct Finder(bool);
    impl Visitor for Finder {
        type Break = ();
        fn pre_visit_expr(&mut self, e: &Expr) -> std::ops::ControlFlow<()> {
            if let Expr::Function(f) = e {
                let parts = &f.name.0;
                let name = parts
                    .last()
                    .and_then(|p| p.as_ident())
                    .map(|i| i.value.to_lowercase())
                    .unwrap_or_default();
                let qualified = parts.len() > 1
                    && !parts[0]
                        .as_ident()
                        .is_some_and(|i| i.value.eq_ignore_ascii_case("pg_catalog"));
                if qualified
                    || VOLATILE.contains(&name.as_str())
                    || VOLATILE_PREFIXES.iter().any(|p| name.starts_with(p))
                {
                    self.0 = true;
                    return std::ops::ControlFlow::Break(());
                }
                if matches!(f.args, FunctionArguments::Subquery(_)) {
                    return std::ops::ControlFlow::Continue(());
                }
            }
            std::ops::ControlFlow::Continue(())
        }
        fn pre_visit_query(&mut self, q: &Query) -> std::ops::ControlFlow<()> {
            if !q.locks.is_empty() {
                self.0 = true;
                return std::ops::ControlFlow::Break(());
            }
            std::ops::ControlFlow::Continue(())
        }
    }
    let mut f = Finder(false);
    let _ = q.visit(&mut f);
    f.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    fn of(sql: &str) -> Cacheability {
        let stmts = Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap();
        cacheability(&stmts[0])
    }

    #[test]
    fn plain_reads_are_cacheable_with_their_tables() {
        assert_eq!(
            of(
                "SELECT region, sum(amount) FROM sales.Orders o JOIN regions r ON o.r = r.id GROUP BY 1"
            ),
            Cacheability::Cacheable {
                tables: vec!["orders".into(), "regions".into()]
            }
        );
        assert_eq!(
            of(
                "WITH t AS (SELECT * FROM a) SELECT date_trunc('day', ts), count(*) FROM t GROUP BY 1"
            ),
            Cacheability::Cacheable {
                tables: vec!["a".into(), "t".into()]
            }
        );
    }

    #[test]
    fn volatile_catalog_and_locking_reads_are_not() {
        for sql in [
            "SELECT now(), x FROM t",
            "SELECT * FROM t WHERE ts > current_date - 1",
            "SELECT random() FROM t",
            "SELECT current_user",
            "SELECT myschema.udf(x) FROM t",
            "SELECT * FROM pg_catalog.pg_class",
            "SELECT * FROM pg_stat_activity",
            "SELECT * FROM information_schema.tables",
            "SELECT * FROM t FOR UPDATE",
            "SELECT * FROM stv_recents",
            "SELECT * FROM t WHERE id IN (SELECT nextval('s'))",
        ] {
            assert_eq!(of(sql), Cacheability::Neither, "{sql}");
        }
        assert_eq!(of("SET search_path = x"), Cacheability::Neither);
        assert_eq!(of("BEGIN"), Cacheability::Neither);
    }

    #[test]
    fn writes_name_their_tables() {
        assert_eq!(
            of("INSERT INTO sales.orders SELECT * FROM staging"),
            Cacheability::Writes(Some(vec!["orders".into(), "staging".into()]))
        );
        assert_eq!(
            of("UPDATE orders SET amount = 0 WHERE id = 1"),
            Cacheability::Writes(Some(vec!["orders".into()]))
        );
        assert_eq!(
            of("DELETE FROM \"Orders\""),
            Cacheability::Writes(Some(vec!["orders".into()]))
        );
        assert_eq!(
            of("TRUNCATE orders"),
            Cacheability::Writes(Some(vec!["orders".into()]))
        );
        assert_eq!(of("GRANT SELECT ON t TO u"), Cacheability::Writes(None));
    }
}
