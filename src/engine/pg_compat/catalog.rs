//! Corrected `pg_catalog` tables. datafusion-pg-catalog ships PostgreSQL's system
//! catalogs as static Arrow data, but stores several typed columns as text:
//! `pg_type`'s regproc columns hold function names, and `pg_constraint`/`pg_index`
//! key columns hold array literals. Clients join and subscript these columns, so
//! they are re-typed here once at start-up.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Int16Builder, Int32Array, Int32Builder, ListBuilder, RecordBatch,
    StringArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Int32Type, Schema, SchemaRef};
use datafusion::catalog::{MemTable, TableProvider};
use datafusion::datasource::{ViewTable, provider_as_source};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{Expr, LogicalPlanBuilder, col, lit};
use datafusion::scalar::ScalarValue;
use datafusion_pg_catalog::pg_catalog::{ArrowTable, PgCatalogStaticTables};

/// `pg_type` columns of type `regproc` (function oids in PostgreSQL).
const PG_TYPE_REGPROC_COLUMNS: &[&str] = &[
    "typinput",
    "typoutput",
    "typreceive",
    "typsend",
    "typmodin",
    "typmodout",
    "typanalyze",
    "typsubscript",
];

/// Array-of-int2 columns (attribute numbers and per-column options).
const INT2_ARRAY_COLUMNS: &[&str] = &["conkey", "confkey", "confdelsetcols", "indkey", "indoption"];
/// Array-of-oid columns.
const OID_ARRAY_COLUMNS: &[&str] = &[
    "conpfeqop",
    "conppeqop",
    "conffeqop",
    "conexclop",
    "indcollation",
    "indclass",
];

/// A view over one of datafusion-pg-catalog's dynamic tables (computed from the
/// catalog at scan time) whose ACL/option columns are `text[]` as in PostgreSQL:
/// the `retype` columns (text there) become NULL arrays and the missing `add`
/// columns are appended as NULL arrays. psql passes them to `array_to_string`
/// (`\dn+`, `\dp`) and `\d+` reads `pg_class.reloptions`. Lake objects have
/// no ACLs or storage options, so NULL is the true value.
pub fn with_array_columns(
    name: &str,
    table: Arc<dyn TableProvider>,
    retype: &[&str],
    add: &[&str],
) -> Result<Arc<dyn TableProvider>> {
    let text_array = ScalarValue::try_from(DataType::new_list(DataType::Utf8, true))?;
    let mut columns: Vec<Expr> = table
        .schema()
        .fields()
        .iter()
        .map(|f| {
            if retype.contains(&f.name().as_str()) {
                lit(text_array.clone()).alias(f.name())
            } else {
                col(f.name().as_str())
            }
        })
        .collect();
    columns.extend(add.iter().map(|n| lit(text_array.clone()).alias(*n)));
    let plan = LogicalPlanBuilder::scan(name, provider_as_source(table), None)?
        .project(columns)?
        .build()?;
    Ok(Arc::new(ViewTable::new(plan, None)))
}

/// The replacement tables, by name.
pub fn corrected_tables() -> Result<Vec<(&'static str, Arc<dyn TableProvider>)>> {
    let statics = PgCatalogStaticTables::try_new()?;
    let proc_oids = proc_oids_by_name(&statics.pg_proc)?;
    Ok(vec![
        (
            "pg_type",
            mem_table(pg_type(&statics.pg_type, &proc_oids)?)?,
        ),
        (
            "pg_constraint",
            mem_table(retype_arrays(&statics.pg_constraint)?)?,
        ),
        ("pg_index", mem_table(retype_arrays(&statics.pg_index)?)?),
        ("pg_settings", mem_table(pg_settings()?)?),
    ])
}

fn mem_table((schema, batches): (SchemaRef, Vec<RecordBatch>)) -> Result<Arc<dyn TableProvider>> {
    Ok(Arc::new(MemTable::try_new(schema, vec![batches])?))
}

/// `proname` → the lowest `oid` with that name. Overloaded names (a minority)
/// resolve to one of their oids, which still joins back to the same `proname`.
fn proc_oids_by_name(pg_proc: &ArrowTable) -> Result<HashMap<String, i32>> {
    let mut map = HashMap::new();
    for batch in pg_proc.data() {
        let (Some(oids), Some(names)) =
            (batch.column_by_name("oid"), batch.column_by_name("proname"))
        else {
            return Err(DataFusionError::Internal(
                "pg_proc lacks oid/proname".into(),
            ));
        };
        let oids = oids
            .as_primitive_opt::<Int32Type>()
            .ok_or_else(|| DataFusionError::Internal("pg_proc.oid is not int4".into()))?;
        let names = names
            .as_string_opt::<i32>()
            .ok_or_else(|| DataFusionError::Internal("pg_proc.proname is not text".into()))?;
        for i in 0..batch.num_rows() {
            if oids.is_null(i) || names.is_null(i) {
                continue;
            }
            let oid = oids.value(i);
            map.entry(names.value(i).to_string())
                .and_modify(|o: &mut i32| *o = (*o).min(oid))
                .or_insert(oid);
        }
    }
    Ok(map)
}

/// Rebuilds a table's batches, replacing the columns `convert` returns a new
/// field and array for.
fn map_columns(
    table: &ArrowTable,
    convert: impl Fn(&Field, &ArrayRef) -> Option<(Field, ArrayRef)>,
) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let source = table.schema();
    let fields: Vec<Field> = source
        .fields()
        .iter()
        .map(|f| {
            let empty = datafusion::arrow::array::new_empty_array(f.data_type());
            convert(f, &empty).map_or_else(|| f.as_ref().clone(), |(nf, _)| nf)
        })
        .collect();
    let schema = Arc::new(Schema::new(fields));
    let mut batches = Vec::new();
    for batch in table.data() {
        let columns = batch
            .schema()
            .fields()
            .iter()
            .zip(batch.columns())
            .map(|(f, a)| convert(f, a).map_or_else(|| Arc::clone(a), |(_, na)| na))
            .collect();
        batches.push(RecordBatch::try_new(Arc::clone(&schema), columns)?);
    }
    Ok((schema, batches))
}

/// `pg_type` with its regproc columns as `pg_proc` oids (0 for "-", PostgreSQL's
/// display of InvalidOid), so `JOIN pg_proc ON pg_proc.oid = typreceive` and
/// `typinput = 'array_in'::regproc` work.
fn pg_type(
    table: &ArrowTable,
    proc_oids: &HashMap<String, i32>,
) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    map_columns(table, |field, array| {
        if !PG_TYPE_REGPROC_COLUMNS.contains(&field.name().as_str()) {
            return None;
        }
        let names = array.as_string_opt::<i32>()?;
        let oids: Int32Array = names
            .iter()
            .map(|n| n.map(|n| proc_oids.get(n).copied().unwrap_or(0)))
            .collect();
        Some((
            Field::new(field.name(), DataType::Int32, field.is_nullable()),
            Arc::new(oids) as ArrayRef,
        ))
    })
}

/// Parses the text forms the static data uses for arrays and vectors
/// (`{1,2}`, `[1, 2]`, `1 2`) into integers; anything unparsable is skipped.
fn parse_int_list(s: &str) -> Vec<i64> {
    s.split(|c: char| !(c.is_ascii_digit() || c == '-'))
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Parses each text value (`{1,2}` or `1 2`) into a list of `T`; values that do not
/// fit the element type become NULL elements.
fn int_list_column<T>(
    name: &str,
    text: &StringArray,
    mut builder: ListBuilder<datafusion::arrow::array::PrimitiveBuilder<T>>,
) -> (Field, ArrayRef)
where
    T: datafusion::arrow::datatypes::ArrowPrimitiveType,
    T::Native: TryFrom<i64>,
{
    for v in text.iter() {
        match v {
            Some(v) => {
                for n in parse_int_list(v) {
                    builder.values().append_option(T::Native::try_from(n).ok());
                }
                builder.append(true);
            }
            None => builder.append(false),
        }
    }
    let list = builder.finish();
    (
        Field::new(name, list.data_type().clone(), true),
        Arc::new(list) as ArrayRef,
    )
}

/// `pg_constraint`/`pg_index` with their array columns as real arrays, so
/// `con.conkey[pos.n]` and `_pg_expandarray(i.indkey)` plan.
fn retype_arrays(table: &ArrowTable) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    map_columns(table, |field, array| {
        let name = field.name().as_str();
        let text: &StringArray = array.as_string_opt::<i32>()?;
        if INT2_ARRAY_COLUMNS.contains(&name) {
            Some(int_list_column(
                name,
                text,
                ListBuilder::new(Int16Builder::new()),
            ))
        } else if OID_ARRAY_COLUMNS.contains(&name) {
            Some(int_list_column(
                name,
                text,
                ListBuilder::new(Int32Builder::new()),
            ))
        } else {
            None
        }
    })
}

/// Settings clients read through `pg_settings` rather than `SHOW` (pgjdbc reads
/// `max_index_keys` before listing foreign keys).
/// `(name, setting, vartype)`.
type Setting = (&'static str, &'static str, &'static str);

const SETTINGS: &[Setting] = &[
    ("standard_conforming_strings", "on", "bool"),
    ("max_index_keys", "32", "integer"),
    ("max_identifier_length", "63", "integer"),
    ("max_function_args", "100", "integer"),
    ("block_size", "8192", "integer"),
    ("integer_datetimes", "on", "bool"),
    ("server_encoding", "UTF8", "string"),
    ("client_encoding", "UTF8", "string"),
    ("DateStyle", "ISO, MDY", "string"),
    ("IntervalStyle", "postgres", "enum"),
    ("TimeZone", "UTC", "string"),
];

fn pg_settings() -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let text = |n: &str| Field::new(n, DataType::Utf8, true);
    let schema = Arc::new(Schema::new(vec![
        text("name"),
        text("setting"),
        text("unit"),
        text("category"),
        text("short_desc"),
        text("extra_desc"),
        text("context"),
        text("vartype"),
        text("source"),
        text("min_val"),
        text("max_val"),
        text("enumvals"),
        text("bool_val"),
        text("reset_val"),
        text("sourcefile"),
        Field::new("sourceline", DataType::Int32, true),
        Field::new("pending_restart", DataType::Boolean, true),
    ]));
    let n = SETTINGS.len();
    // One text column per field: taken from each setting, or the same for all.
    let each = |pick: fn(&Setting) -> &'static str| -> ArrayRef {
        Arc::new(
            SETTINGS
                .iter()
                .map(|s| Some(pick(s)))
                .collect::<StringArray>(),
        )
    };
    let all = |value: Option<&str>| -> ArrayRef {
        Arc::new(std::iter::repeat_n(value, n).collect::<StringArray>())
    };
    let mut columns: Vec<ArrayRef> = vec![
        each(|s| s.0),
        each(|s| s.1),
        all(None),
        all(Some("Preset Options")),
        all(None),
        all(None),
        all(Some("internal")),
        each(|s| s.2),
        all(Some("default")),
        all(None),
        all(None),
        all(None),
        all(None),
        each(|s| s.1),
        all(None),
    ];
    columns.push(Arc::new(Int32Array::new_null(n)));
    columns.push(Arc::new(datafusion::arrow::array::BooleanArray::from(
        vec![false; n],
    )));
    let batch = RecordBatch::try_new(Arc::clone(&schema), columns)?;
    Ok((schema, vec![batch]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_array_and_vector_text() {
        assert_eq!(parse_int_list("{1,2}"), vec![1, 2]);
        assert_eq!(parse_int_list("[2, 20, 3]"), vec![2, 20, 3]);
        assert_eq!(parse_int_list("1 2"), vec![1, 2]);
        assert_eq!(parse_int_list(""), Vec::<i64>::new());
    }

    #[test]
    fn pg_type_regproc_columns_are_oids() {
        let statics = PgCatalogStaticTables::try_new().expect("static tables");
        let procs = proc_oids_by_name(&statics.pg_proc).expect("pg_proc");
        let (schema, batches) = pg_type(&statics.pg_type, &procs).expect("pg_type");
        assert_eq!(
            schema
                .field_with_name("typreceive")
                .map(|f| f.data_type().clone())
                .ok(),
            Some(DataType::Int32)
        );
        let b = &batches[0];
        let names = b
            .column_by_name("typname")
            .expect("typname")
            .as_string::<i32>();
        let recv = b
            .column_by_name("typreceive")
            .expect("typreceive")
            .as_primitive::<Int32Type>();
        let row = (0..b.num_rows())
            .find(|&i| names.value(i) == "bool")
            .expect("bool row");
        assert_eq!(Some(&recv.value(row)), procs.get("boolrecv"));
    }
}
