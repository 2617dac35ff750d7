//! PostgreSQL client compatibility beyond what `datafusion-pg-catalog` provides: extra
//! SQL rewrites for the catalog queries real clients send (pgjdbc, Npgsql/Power BI,
//! psql), extra catalog functions, and corrected catalog tables.

use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::Statement;

/// Rewrites applied to every parsed statement after datafusion-pg-catalog's own.
pub fn rewrite(stmt: Statement) -> Statement {
    stmt
}

/// Registers extra functions and tables; called once after `setup_pg_catalog`.
pub fn install(_ctx: &SessionContext, _database: &str) -> Result<(), String> {
    Ok(())
}
