//! PostgreSQL client compatibility beyond what `datafusion-pg-catalog` provides: extra
//! SQL rewrites for the catalog queries real clients send (pgjdbc, Npgsql/Power BI,
//! psql), extra catalog functions, and corrected catalog tables.

mod catalog;
mod functions;
mod info_schema;
mod matviews;
mod overlay;
mod rewrite;

use std::sync::Arc;

use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::Statement;

pub use matviews::MatViews;
use overlay::OverlaySchema;

/// Rewrites applied to every parsed statement after datafusion-pg-catalog's own.
pub fn rewrite(stmt: Statement) -> Statement {
    rewrite::rewrite(stmt)
}

/// Registers extra functions and tables; called once after `setup_pg_catalog`.
pub async fn install(
    ctx: &SessionContext,
    database: &str,
    matviews: MatViews,
) -> Result<(), String> {
    let catalog = ctx
        .catalog(database)
        .ok_or_else(|| format!("catalog {database} is not registered"))?;

    // Replace the pg_catalog schema with one serving the corrected tables.
    let pg_catalog = catalog
        .schema("pg_catalog")
        .ok_or("pg_catalog is not registered")?;
    let mut overlay = OverlaySchema::new(Arc::clone(&pg_catalog));
    // `(table, text columns that are arrays in PostgreSQL, missing array columns)`
    let array_columns: [(&str, &[&str], &[&str]); 3] = [
        ("pg_class", &[], &["reloptions", "relacl"]),
        ("pg_namespace", &["nspacl"], &[]),
        (
            "pg_attribute",
            &["attacl", "attoptions", "attfdwoptions"],
            &[],
        ),
    ];
    for (name, retype, add) in array_columns {
        let table = pg_catalog
            .table(name)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("pg_catalog.{name} is missing"))?;
        let view =
            catalog::with_array_columns(name, table, retype, add).map_err(|e| e.to_string())?;
        overlay = overlay.with_table(name, view);
    }
    for (name, table) in catalog::corrected_tables().map_err(|e| e.to_string())? {
        overlay = overlay.with_table(name, table);
    }
    overlay = overlay.with_table("pg_matviews", Arc::new(matviews));
    catalog
        .register_schema("pg_catalog", Arc::new(overlay))
        .map_err(|e| e.to_string())?;

    info_schema::install(ctx, &catalog).map_err(|e| e.to_string())?;
    functions::register(ctx);
    Ok(())
}
