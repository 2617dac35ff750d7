//! PostgreSQL client compatibility beyond what `datafusion-pg-catalog` provides: extra
//! SQL rewrites for the catalog queries real clients send (pgjdbc, Npgsql/Power BI,
//! psql), extra catalog functions, and corrected catalog tables.

mod catalog;
mod functions;
mod info_schema;
mod literals;
mod matviews;
mod overlay;
mod redshift_show;
mod rewrite;
pub use redshift_show::rewrite as redshift_show;

use std::sync::Arc;

use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::Statement;

pub use matviews::MatViews;
use overlay::OverlaySchema;

/// asyncpg's type introspection (`asyncpg/introspection.py`, `INTRO_LOOKUP_TYPES`):
/// a recursive CTE whose rows carry a second recursive CTE in a correlated scalar
/// subquery, for domains, composites and ranges. DataFusion cannot decorrelate that,
/// and a lake has none of those kinds (every type is a base type or an array of
/// one), so the same columns come from this query: the requested types and,
/// recursively, their element types.
const ASYNCPG_INTROSPECTION: &str = "
WITH RECURSIVE typeinfo_tree(oid, ns, name, kind, basetype, elemtype, elemdelim,
    range_subtype, attrtypoids, attrnames, depth) AS (
  SELECT t.oid, ns.nspname, t.typname, t.typtype, CAST(NULL AS INTEGER) AS basetype,
         t.typelem AS elemtype, elem_t.typdelim AS elemdelim,
         CAST(NULL AS INTEGER) AS range_subtype, CAST(NULL AS INTEGER[]) AS attrtypoids,
         CAST(NULL AS TEXT[]) AS attrnames, 0 AS depth
  FROM pg_catalog.pg_type t
  JOIN pg_catalog.pg_namespace ns ON ns.oid = t.typnamespace
  LEFT JOIN pg_catalog.pg_type elem_t
    ON (t.typlen = -1 AND t.typelem != 0 AND t.typelem = elem_t.oid)
  WHERE t.oid = any($1::integer[])
  UNION ALL
  SELECT t.oid, ns.nspname, t.typname, t.typtype, CAST(NULL AS INTEGER) AS basetype,
         t.typelem AS elemtype, elem_t.typdelim AS elemdelim,
         CAST(NULL AS INTEGER) AS range_subtype, CAST(NULL AS INTEGER[]) AS attrtypoids,
         CAST(NULL AS TEXT[]) AS attrnames, tt.depth + 1 AS depth
  FROM pg_catalog.pg_type t
  JOIN pg_catalog.pg_namespace ns ON ns.oid = t.typnamespace
  LEFT JOIN pg_catalog.pg_type elem_t
    ON (t.typlen = -1 AND t.typelem != 0 AND t.typelem = elem_t.oid)
  JOIN typeinfo_tree tt ON t.oid = tt.elemtype
)
SELECT DISTINCT *, basetype::regtype::text AS basetype_name,
  elemtype::regtype::text AS elemtype_name, range_subtype::regtype::text AS range_subtype_name
FROM typeinfo_tree ORDER BY depth DESC";

/// A client query Sluice answers with a query of its own, and the PostgreSQL types
/// the client expects for its parameters and columns where the Arrow types would be
/// reported differently (Sluice plans `oid` as `int4`; asyncpg has a built-in codec
/// for `oid[]` but must look up `int4[]`, which would recurse into this very query).
pub struct KnownQuery {
    pub sql: &'static str,
    pub param_oids: &'static [u32],
    pub column_oids: &'static [(&'static str, u32)],
}

const ASYNCPG_TYPES: KnownQuery = KnownQuery {
    sql: ASYNCPG_INTROSPECTION,
    param_oids: &[crate::wire::types::oid::OID_ARRAY],
    column_oids: &[
        ("oid", crate::wire::types::oid::OID),
        ("basetype", crate::wire::types::oid::OID),
        ("elemtype", crate::wire::types::oid::OID),
        ("range_subtype", crate::wire::types::oid::OID),
        ("attrtypoids", crate::wire::types::oid::OID_ARRAY),
    ],
};

/// Client queries replaced whole before parsing (see `ASYNCPG_INTROSPECTION`).
pub fn known_query(sql: &str) -> Option<&'static KnownQuery> {
    (sql.contains("typeinfo_tree") && sql.contains("typebases") && sql.contains("$1"))
        .then_some(&ASYNCPG_TYPES)
}

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
