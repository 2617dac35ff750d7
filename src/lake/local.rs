//! The local directory catalog: `<root>/<database>/<table>/[key=value/…]*.parquet|csv|json`.
//!
//! Each database directory becomes a DataFusion schema and each table directory a
//! `ListingTable`; Hive-style `key=value` directories become partition columns, so
//! predicates on them prune whole directories before any file is opened.
//! A table directory may hold `_table.toml` to fix the format or CSV options.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::catalog::{MemorySchemaProvider, SchemaProvider};
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::csv::CsvFormat;
use datafusion::datasource::file_format::json::JsonFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::prelude::SessionContext;
use serde::Deserialize;

/// A file format of a local table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TableFormat {
    Parquet,
    Csv,
    Json,
}

impl TableFormat {
    fn from_extension(ext: &str) -> Option<TableFormat> {
        match ext.to_ascii_lowercase().as_str() {
            "parquet" => Some(TableFormat::Parquet),
            "csv" | "tsv" => Some(TableFormat::Csv),
            "json" | "ndjson" | "jsonl" => Some(TableFormat::Json),
            _ => None,
        }
    }
}

/// Optional per-table settings in `<table>/_table.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableMeta {
    pub format: Option<TableFormat>,
    /// File extension to read (default: inferred from the first data file).
    pub extension: Option<String>,
    /// CSV field delimiter, one byte (default `,`).
    pub delimiter: Option<String>,
    /// Whether CSV files start with a header line (default true).
    pub header: Option<bool>,
    /// The table's columns, instead of inferring them from the files:
    /// `columns = [{ name = "id", type = "bigint" }, { name = "at", type = "timestamp" }]`.
    /// Types are SQL type names (`int`, `bigint`, `double`, `decimal(10,2)`, `text`,
    /// `date`, `timestamp`, `boolean`, …).
    pub columns: Option<Vec<ColumnMeta>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnMeta {
    pub name: String,
    #[serde(rename = "type")]
    pub data_type: String,
    #[serde(default = "yes")]
    pub nullable: bool,
}

fn yes() -> bool {
    true
}

/// Resolves a SQL type name to an Arrow type by asking DataFusion's own planner.
async fn sql_type(ctx: &SessionContext, name: &str) -> Result<DataType, String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || " _(),<>".contains(c);
    if name.trim().is_empty() || !name.chars().all(allowed) {
        return Err(format!("invalid column type `{name}`"));
    }
    let plan = ctx
        .state()
        .create_logical_plan(&format!("SELECT CAST(NULL AS {name})"))
        .await
        .map_err(|e| format!("unknown column type `{name}`: {e}"))?;
    Ok(plan.schema().field(0).data_type().clone())
}

/// A problem with one table: logged and that table skipped, so one bad directory
/// does not take the whole catalog down.
#[derive(Debug, thiserror::Error)]
#[error("lake table {path}: {message}")]
pub struct TableError {
    pub path: PathBuf,
    pub message: String,
}

/// Scans `root` and returns one schema per database directory.
pub async fn discover(
    ctx: &SessionContext,
    root: &Path,
) -> Result<Vec<(String, Arc<dyn SchemaProvider>)>, String> {
    let mut schemas = Vec::new();
    let entries = std::fs::read_dir(root)
        .map_err(|e| format!("cannot read lake root {}: {e}", root.display()))?;
    let mut dbs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_dir() && !hidden(p))
        .collect();
    dbs.sort();
    for db in dbs {
        let db_name = dir_name(&db);
        let schema = Arc::new(MemorySchemaProvider::new());
        let mut tables: Vec<PathBuf> = std::fs::read_dir(&db)
            .map_err(|e| format!("cannot read {}: {e}", db.display()))?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.is_dir() && !hidden(p))
            .collect();
        tables.sort();
        for table_dir in tables {
            let name = dir_name(&table_dir);
            match open_table(ctx, &table_dir).await {
                Ok(table) => {
                    if let Err(e) = schema.register_table(name.clone(), table) {
                        tracing::warn!(table = %table_dir.display(), error = %e, "lake table skipped");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "lake table skipped"),
            }
        }
        schemas.push((db_name, schema as Arc<dyn SchemaProvider>));
    }
    Ok(schemas)
}

/// Directory names are the SQL names; unquoted SQL identifiers are lower case, so
/// names are stored lower case (quoted `"Mixed"` names therefore do not match).
fn dir_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default()
}

fn hidden(p: &Path) -> bool {
    p.file_name()
        .map(|n| {
            let n = n.to_string_lossy();
            n.starts_with('.') || n.starts_with('_')
        })
        .unwrap_or(true)
}

/// Opens one table directory as a `ListingTable`.
pub async fn open_table(ctx: &SessionContext, dir: &Path) -> Result<Arc<ListingTable>, TableError> {
    let err = |message: String| TableError {
        path: dir.to_owned(),
        message,
    };
    let meta = read_meta(dir).map_err(err)?;
    let (partition_cols, first_file) = scan_layout(dir).map_err(err)?;
    let extension = match (&meta.extension, &first_file) {
        (Some(e), _) => e.trim_start_matches('.').to_owned(),
        (None, Some(f)) => f
            .extension()
            .map(|e| e.to_string_lossy().into_owned())
            .ok_or_else(|| err("data file has no extension".into()))?,
        (None, None) => return Err(err("no data files".into())),
    };
    let format = match meta.format {
        Some(f) => f,
        None => TableFormat::from_extension(&extension).ok_or_else(|| {
            err(format!(
                "cannot tell the format of `.{extension}` files; set `format` in _table.toml"
            ))
        })?,
    };
    let file_format: Arc<dyn FileFormat> = match format {
        TableFormat::Parquet => Arc::new(ParquetFormat::default()),
        TableFormat::Csv => {
            let delimiter = match meta.delimiter.as_deref() {
                None => {
                    if extension.eq_ignore_ascii_case("tsv") {
                        b'\t'
                    } else {
                        b','
                    }
                }
                Some("\\t") => b'\t',
                Some(d) if d.len() == 1 => d.as_bytes()[0],
                Some(d) => return Err(err(format!("delimiter `{d}` must be a single byte"))),
            };
            Arc::new(
                CsvFormat::default()
                    .with_has_header(meta.header.unwrap_or(true))
                    .with_delimiter(delimiter),
            )
        }
        TableFormat::Json => Arc::new(JsonFormat::default()),
    };
    let url = format!("{}/", dir.display());
    let table_path = ListingTableUrl::parse(&url).map_err(|e| err(e.to_string()))?;
    let options = ListingOptions::new(file_format)
        .with_file_extension(format!(".{extension}"))
        .with_table_partition_cols(
            partition_cols
                .into_iter()
                .map(|c| (c, crate::lake::PARTITION_TEXT))
                .collect(),
        );
    let state = ctx.state();
    let schema = match &meta.columns {
        Some(columns) => {
            let mut fields = Vec::with_capacity(columns.len());
            for c in columns {
                let t = sql_type(ctx, &c.data_type)
                    .await
                    .map_err(|m| err(format!("columns: {m}")))?;
                fields.push(Field::new(c.name.to_lowercase(), t, c.nullable));
            }
            Arc::new(Schema::new(fields))
        }
        None => options
            .infer_schema(&state, &table_path)
            .await
            .map_err(|e| err(format!("cannot infer schema: {e}")))?,
    };
    let config = ListingTableConfig::new(table_path)
        .with_listing_options(options)
        .with_schema(schema);
    ListingTable::try_new(config)
        .map(Arc::new)
        .map_err(|e| err(e.to_string()))
}

fn read_meta(dir: &Path) -> Result<TableMeta, String> {
    let path = dir.join("_table.toml");
    match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TableMeta::default()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Follows `key=value` directories down from the table root to learn the partition
/// columns, and finds one data file to infer the extension from.
fn scan_layout(dir: &Path) -> Result<(Vec<String>, Option<PathBuf>), String> {
    let mut cols = Vec::new();
    let mut cur = dir.to_owned();
    loop {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&cur)
            .map_err(|e| format!("cannot read {}: {e}", cur.display()))?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| !hidden(p))
            .collect();
        entries.sort();
        if let Some(sub) = entries.iter().find(|p| p.is_dir()) {
            let name = sub
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            match name.split_once('=') {
                Some((key, _)) if !key.is_empty() => {
                    if cols.iter().any(|c| c == key) {
                        return Err(format!(
                            "partition column `{key}` appears twice in the path"
                        ));
                    }
                    cols.push(key.to_lowercase());
                    cur = sub.clone();
                    continue;
                }
                _ => {
                    return Err(format!(
                        "subdirectory `{name}` is not a `key=value` partition directory"
                    ));
                }
            }
        }
        let file = entries.into_iter().find(|p| p.is_file());
        return Ok((cols, file));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn declared_columns_override_inference() {
        let dir = tempfile::tempdir().unwrap();
        let table = dir.path().join("t");
        std::fs::create_dir_all(&table).unwrap();
        std::fs::write(table.join("a.csv"), "id,amount\n1,2.50\n2,3.75\n").unwrap();
        std::fs::write(
            table.join("_table.toml"),
            "columns = [{ name = \"id\", type = \"bigint\" }, { name = \"amount\", type = \"decimal(10,2)\" }]\n",
        )
        .unwrap();
        let ctx = SessionContext::new();
        let t = open_table(&ctx, &table).await.unwrap();
        use datafusion::catalog::TableProvider;
        let schema = t.schema();
        assert_eq!(schema.field(0).data_type(), &DataType::Int64);
        assert_eq!(schema.field(1).data_type(), &DataType::Decimal128(10, 2));
        ctx.register_table("t", t).unwrap();
        let batches = ctx
            .sql("SELECT sum(amount) FROM t")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let text = datafusion::arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        assert!(text.contains("6.25"), "{text}");
    }

    #[tokio::test]
    async fn bad_metadata_is_reported_with_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let table = dir.path().join("t");
        std::fs::create_dir_all(&table).unwrap();
        std::fs::write(table.join("a.csv"), "id\n1\n").unwrap();
        std::fs::write(
            table.join("_table.toml"),
            "columns = [{ name = \"id\", type = \"nonsense\" }]\n",
        )
        .unwrap();
        let e = open_table(&SessionContext::new(), &table)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("nonsense"), "{e}");
        std::fs::write(table.join("_table.toml"), "delimeter = \";\"\n").unwrap();
        let e = open_table(&SessionContext::new(), &table)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("delimeter"), "{e}");
    }
}
