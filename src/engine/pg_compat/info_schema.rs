//! `information_schema` as PostgreSQL clients expect it. DataFusion's built-in
//! provider names Arrow types (`Int32`, `Utf8`), numbers columns from 0 and has
//! no constraint tables, which Power BI's navigator queries. DataFusion serves
//! `information_schema.*` itself whenever `information_schema` is enabled in the
//! session config, before looking at the catalog, so that flag is switched off
//! and a schema of that name is registered in the catalog instead: DataFusion's
//! provider with `columns` replaced and the constraint tables added.

use std::str::FromStr;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, AsArray, Int32Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::catalog::information_schema::InformationSchemaProvider;
use datafusion::catalog::{CatalogProvider, MemTable, SchemaProvider, TableProvider};
use datafusion::common::exec_err;
use datafusion::datasource::{ViewTable, provider_as_source};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{
    ColumnarValue, Expr, LogicalPlanBuilder, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature, Volatility, cast, col, lit,
};
use datafusion::prelude::SessionContext;

use super::overlay::OverlaySchema;
use crate::wire::types;

pub fn install(ctx: &SessionContext, catalog: &Arc<dyn CatalogProvider>) -> Result<()> {
    let state = ctx.state();
    let builtin = Arc::new(
        InformationSchemaProvider::new(Arc::clone(state.catalog_list()))
            .with_table_functions(state.table_functions().clone()),
    );
    // Building DataFusion's `columns` table only creates a streaming table
    // description; nothing is awaited on I/O, so blocking here is fine.
    let columns = futures::executor::block_on(builtin.table("columns"))?
        .ok_or_else(|| DataFusionError::Internal("information_schema.columns missing".into()))?;

    let mut schema = OverlaySchema::new(builtin).with_table("columns", columns_view(columns)?);
    for (name, fields) in constraint_tables() {
        let table = MemTable::try_new(Arc::new(Schema::new(fields)), vec![vec![]])?;
        schema = schema.with_table(name, Arc::new(table));
    }
    catalog.register_schema("information_schema", Arc::new(schema))?;
    ctx.state_ref()
        .write()
        .config_mut()
        .options_mut()
        .catalog
        .information_schema = false;
    Ok(())
}

/// DataFusion's `columns` with 1-based `ordinal_position`, PostgreSQL type
/// names in `data_type` (as sent on the wire, see `types::pg_type`), `udt_name`,
/// and int4 numbers instead of uint64.
fn columns_view(columns: Arc<dyn TableProvider>) -> Result<Arc<dyn TableProvider>> {
    let data_type = ScalarUDF::new_from_impl(PgTypeName::new(Describe::DataType));
    let udt_name = ScalarUDF::new_from_impl(PgTypeName::new(Describe::UdtName));
    let numeric = |what: Describe, name: &str| {
        ScalarUDF::new_from_impl(PgTypeName::new(what))
            .call(vec![col("data_type")])
            .alias(name)
    };
    let int = |e: Expr, name: &str| cast(e, DataType::Int32).alias(name);
    let plan = LogicalPlanBuilder::scan("columns", provider_as_source(columns), None)?
        .project(vec![
            col("table_catalog"),
            col("table_schema"),
            col("table_name"),
            col("column_name"),
            int(col("ordinal_position") + lit(1u64), "ordinal_position"),
            col("column_default"),
            col("is_nullable"),
            data_type.call(vec![col("data_type")]).alias("data_type"),
            int(col("character_maximum_length"), "character_maximum_length"),
            int(col("character_octet_length"), "character_octet_length"),
            numeric(Describe::Precision, "numeric_precision"),
            numeric(Describe::Radix, "numeric_precision_radix"),
            numeric(Describe::Scale, "numeric_scale"),
            int(col("datetime_precision"), "datetime_precision"),
            col("interval_type"),
            col("table_catalog").alias("udt_catalog"),
            lit("pg_catalog").alias("udt_schema"),
            udt_name.call(vec![col("data_type")]).alias("udt_name"),
            lit("NO").alias("is_identity"),
            lit("NEVER").alias("is_generated"),
            lit("YES").alias("is_updatable"),
        ])?
        .build()?;
    Ok(Arc::new(ViewTable::new(plan, None)))
}

/// PostgreSQL's constraint views. A lake has no constraints, so they are empty,
/// but clients query them unconditionally.
fn constraint_tables() -> Vec<(&'static str, Vec<Field>)> {
    let text = |names: &[&str]| -> Vec<Field> {
        names
            .iter()
            .map(|n| Field::new(*n, DataType::Utf8, true))
            .collect()
    };
    let with_ints = |mut fields: Vec<Field>, ints: &[&str]| {
        fields.extend(ints.iter().map(|n| Field::new(*n, DataType::Int32, true)));
        fields
    };
    vec![
        (
            "table_constraints",
            text(&[
                "constraint_catalog",
                "constraint_schema",
                "constraint_name",
                "table_catalog",
                "table_schema",
                "table_name",
                "constraint_type",
                "is_deferrable",
                "initially_deferred",
                "enforced",
                "nulls_distinct",
            ]),
        ),
        (
            "key_column_usage",
            with_ints(
                text(&[
                    "constraint_catalog",
                    "constraint_schema",
                    "constraint_name",
                    "table_catalog",
                    "table_schema",
                    "table_name",
                    "column_name",
                ]),
                &["ordinal_position", "position_in_unique_constraint"],
            ),
        ),
        (
            "referential_constraints",
            text(&[
                "constraint_catalog",
                "constraint_schema",
                "constraint_name",
                "unique_constraint_catalog",
                "unique_constraint_schema",
                "unique_constraint_name",
                "match_option",
                "update_rule",
                "delete_rule",
            ]),
        ),
        (
            "constraint_column_usage",
            text(&[
                "table_catalog",
                "table_schema",
                "table_name",
                "column_name",
                "constraint_catalog",
                "constraint_schema",
                "constraint_name",
            ]),
        ),
        (
            "check_constraints",
            text(&[
                "constraint_catalog",
                "constraint_schema",
                "constraint_name",
                "check_clause",
            ]),
        ),
    ]
}

/// PostgreSQL's `numeric_precision`, `numeric_precision_radix` and
/// `numeric_scale` for the type a column is sent as.
fn numeric_facts(arrow: &str, what: Describe) -> Option<i32> {
    use types::oid::*;
    let dt = DataType::from_str(arrow).ok()?;
    let (precision, radix, scale) = match (types::pg_type(&dt).oid, &dt) {
        (INT2, _) => (16, 2, Some(0)),
        (INT4, _) => (32, 2, Some(0)),
        (INT8, _) => (64, 2, Some(0)),
        (FLOAT4, _) => (24, 2, None),
        (FLOAT8, _) => (53, 2, None),
        (
            NUMERIC,
            DataType::Decimal32(p, s)
            | DataType::Decimal64(p, s)
            | DataType::Decimal128(p, s)
            | DataType::Decimal256(p, s),
        ) => (i32::from(*p), 10, Some(i32::from(*s))),
        _ => return None,
    };
    match what {
        Describe::Precision => Some(precision),
        Describe::Radix => Some(radix),
        Describe::Scale => scale,
        Describe::DataType | Describe::UdtName => None,
    }
}

/// PostgreSQL's information_schema name (`data_type`) or `pg_type.typname`
/// (`udt_name`) for an Arrow type as DataFusion prints it.
fn pg_type_name(arrow: &str, udt: bool) -> String {
    let Ok(dt) = DataType::from_str(arrow) else {
        return if udt { "text" } else { "USER-DEFINED" }.to_string();
    };
    let pg = types::pg_type(&dt);
    if let DataType::List(f)
    | DataType::LargeList(f)
    | DataType::FixedSizeList(f, _)
    | DataType::ListView(f)
    | DataType::LargeListView(f) = &dt
    {
        return if udt {
            format!("_{}", typname(types::pg_type(f.data_type()).oid))
        } else {
            "ARRAY".to_string()
        };
    }
    if udt {
        typname(pg.oid).to_string()
    } else {
        types::type_name(pg.oid).to_string()
    }
}

fn typname(oid: u32) -> &'static str {
    use types::oid::*;
    match oid {
        BOOL => "bool",
        BYTEA => "bytea",
        INT2 => "int2",
        INT4 => "int4",
        INT8 => "int8",
        FLOAT4 => "float4",
        FLOAT8 => "float8",
        NUMERIC => "numeric",
        DATE => "date",
        TIME => "time",
        TIMESTAMP => "timestamp",
        TIMESTAMPTZ => "timestamptz",
        INTERVAL => "interval",
        JSON => "json",
        _ => "text",
    }
}

/// Which fact about a column's type a `PgTypeName` function reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Describe {
    DataType,
    UdtName,
    Precision,
    Radix,
    Scale,
}

/// Internal (unregistered) function of DataFusion's `data_type` text used by
/// the `columns` view.
#[derive(Debug, PartialEq, Eq, Hash)]
struct PgTypeName {
    what: Describe,
    signature: Signature,
}

impl PgTypeName {
    fn new(what: Describe) -> Self {
        PgTypeName {
            what,
            signature: Signature::exact(vec![DataType::Utf8], Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for PgTypeName {
    fn name(&self) -> &str {
        match self.what {
            Describe::DataType => "pg_compat_data_type",
            Describe::UdtName => "pg_compat_udt_name",
            Describe::Precision => "pg_compat_numeric_precision",
            Describe::Radix => "pg_compat_numeric_precision_radix",
            Describe::Scale => "pg_compat_numeric_scale",
        }
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(match self.what {
            Describe::DataType | Describe::UdtName => DataType::Utf8,
            Describe::Precision | Describe::Radix | Describe::Scale => DataType::Int32,
        })
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [arg] = args.args.as_slice() else {
            return exec_err!("{} takes one argument", self.name());
        };
        let array = arg.to_array(args.number_rows)?;
        let Some(names) = array.as_string_opt::<i32>() else {
            return exec_err!("{} expects text", self.name());
        };
        let out: ArrayRef = match self.what {
            Describe::DataType | Describe::UdtName => {
                let udt = self.what == Describe::UdtName;
                Arc::new(
                    names
                        .iter()
                        .map(|n| n.map(|n| pg_type_name(n, udt)))
                        .collect::<StringArray>(),
                )
            }
            what => Arc::new(
                names
                    .iter()
                    .map(|n| n.and_then(|n| numeric_facts(n, what)))
                    .collect::<Int32Array>(),
            ),
        };
        Ok(ColumnarValue::Array(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::TimeUnit;

    #[test]
    fn arrow_types_get_postgres_names() {
        let name = |dt: DataType| {
            let s = dt.to_string();
            (pg_type_name(&s, false), pg_type_name(&s, true))
        };
        assert_eq!(name(DataType::Int32), ("integer".into(), "int4".into()));
        assert_eq!(name(DataType::Utf8View), ("text".into(), "text".into()));
        assert_eq!(
            name(DataType::Timestamp(TimeUnit::Microsecond, None)),
            ("timestamp without time zone".into(), "timestamp".into())
        );
        assert_eq!(
            name(DataType::new_list(DataType::Int64, true)),
            ("ARRAY".into(), "_int8".into())
        );
        let f8 = DataType::Float64.to_string();
        assert_eq!(numeric_facts(&f8, Describe::Precision), Some(53));
        assert_eq!(numeric_facts(&f8, Describe::Scale), None);
        let dec = DataType::Decimal128(12, 2).to_string();
        assert_eq!(numeric_facts(&dec, Describe::Radix), Some(10));
        assert_eq!(numeric_facts(&dec, Describe::Scale), Some(2));
        assert_eq!(
            numeric_facts(&DataType::Utf8.to_string(), Describe::Precision),
            None
        );
    }
}
