//! The NYC-shaped trips (`sluice::lake::demo`) on every peer the lake is compared
//! with: uploaded to moto's S3 and described in moto's Glue, and queried by DuckDB
//! (`duckdb_lake.py`). Shared by `benches/lake` and `tests/it/lake_answers.rs`.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use aws_sdk_glue::types::{
    Column, DatabaseInput, PartitionInput, SerDeInfo, StorageDescriptor, TableInput,
};
use datafusion::arrow::datatypes::DataType;

use crate::moto::Moto;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// The bucket the trips are uploaded to.
pub const BUCKET: &str = "lake";

/// The monthly partition values present under `root` (`2024-01`, …), sorted.
pub fn months(root: &Path) -> Result<Vec<String>> {
    let trips = root.join("nyc").join("trips");
    let mut months: Vec<String> = std::fs::read_dir(&trips)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("month=")
                .map(str::to_owned)
        })
        .collect();
    months.sort();
    Ok(months)
}

/// Uploads the trips to `s3://lake/nyc/trips/month=…/` and describes them in Glue as
/// `<s3_database>.trips`; with `disk_database`, also as that database's `trips` over the
/// same files on local disk (`file://` locations: the Glue provider without S3).
pub async fn load_glue(
    moto: &Moto,
    root: &Path,
    s3_database: &str,
    disk_database: Option<&str>,
) -> Result<()> {
    use object_store::ObjectStoreExt;
    let bucket = moto.bucket(BUCKET)?;
    let trips = root.join("nyc").join("trips");
    let months = months(root)?;
    for month in &months {
        let key = format!("nyc/trips/month={month}/part-0.parquet");
        let data = std::fs::read(trips.join(format!("month={month}")).join("part-0.parquet"))?;
        bucket
            .put(&object_store::path::Path::from(key.as_str()), data.into())
            .await?;
    }
    let mut databases = vec![(s3_database.to_owned(), format!("s3://{BUCKET}/nyc/trips"))];
    if let Some(disk) = disk_database {
        databases.push((disk.to_owned(), format!("file://{}", trips.display())));
    }
    let glue = moto.glue();
    let columns: Vec<Column> = sluice::lake::demo::trips_schema()
        .fields()
        .iter()
        .map(|f| {
            let hive = match f.data_type() {
                DataType::Int32 => "int",
                DataType::Int64 => "bigint",
                DataType::Float64 => "double",
                DataType::Timestamp(_, _) => "timestamp",
                _ => "string",
            };
            Column::builder().name(f.name()).r#type(hive).build()
        })
        .collect::<std::result::Result<_, _>>()?;
    for (database, base) in databases {
        glue.create_database()
            .database_input(DatabaseInput::builder().name(&database).build()?)
            .send()
            .await?;
        let sd = |location: String| {
            StorageDescriptor::builder()
                .location(location)
                .input_format("org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat")
                .serde_info(
                    SerDeInfo::builder()
                        .serialization_library(
                            "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe",
                        )
                        .build(),
                )
        };
        glue.create_table()
            .database_name(&database)
            .table_input(
                TableInput::builder()
                    .name("trips")
                    .table_type("EXTERNAL_TABLE")
                    .storage_descriptor(
                        sd(format!("{base}/"))
                            .set_columns(Some(columns.clone()))
                            .build(),
                    )
                    .partition_keys(Column::builder().name("month").r#type("string").build()?)
                    .build()?,
            )
            .send()
            .await?;
        let partitions = months
            .iter()
            .map(|m| {
                PartitionInput::builder()
                    .values(m.clone())
                    .storage_descriptor(sd(format!("{base}/month={m}/")).build())
                    .build()
            })
            .collect();
        glue.batch_create_partition()
            .database_name(&database)
            .table_name("trips")
            .set_partition_input_list(Some(partitions))
            .send()
            .await?;
    }
    Ok(())
}

/// Where DuckDB reads the trips from.
pub enum DuckSource<'a> {
    Local(&'a Path),
    /// The uploaded copy in moto's S3; `file_cache`: DuckDB's external file cache
    /// (on by default: repeated reads of an object come from memory).
    S3 {
        moto: &'a Moto,
        file_cache: bool,
    },
}

/// One query's result on DuckDB.
#[derive(Debug, serde::Deserialize)]
pub struct DuckResult {
    pub times_ms: Vec<f64>,
    pub rows: usize,
    /// Each cell as PostgreSQL's text format would show it; `None` is NULL.
    pub answers: Option<Vec<Vec<Option<String>>>>,
}

/// Runs `queries` on DuckDB (2 threads): a warm-up, then `iters` timed runs each.
pub fn duckdb(
    source: DuckSource<'_>,
    queries: &[(&str, &str)],
    iters: usize,
    answers: bool,
) -> Result<HashMap<String, DuckResult>> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/duckdb_lake.py");
    let (root, s3, file_cache) = match source {
        DuckSource::Local(root) => (Some(root.display().to_string()), None, true),
        DuckSource::S3 { moto, file_cache } => (
            None,
            Some(serde_json::json!({
                "endpoint": format!("127.0.0.1:{}", moto.port),
                "bucket": BUCKET,
            })),
            file_cache,
        ),
    };
    let job = serde_json::json!({
        "root": root,
        "s3": s3,
        "iters": iters,
        "answers": answers,
        "file_cache": file_cache,
        "queries": queries,
    });
    run_python(
        &script,
        &job,
        "DuckDB side failed (tests/setup.sh installs PyPI duckdb and duckdb-extension-httpfs)",
    )
}

/// Runs a job of `tests/support/open_formats.py` (Delta and Iceberg tables written
/// by their own writers, and DuckDB's readers of them) and returns what it printed.
pub fn open_formats(job: &serde_json::Value) -> Result<serde_json::Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/open_formats.py");
    run_python(
        &script,
        job,
        "open_formats.py failed (tests/setup.sh installs PyPI deltalake, pyiceberg and DuckDB's readers)",
    )
}

/// Runs a Python script with a JSON job on stdin; its stdout is JSON.
fn run_python<T: serde::de::DeserializeOwned>(
    script: &Path,
    job: &serde_json::Value,
    failed: &str,
) -> Result<T> {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let mut child = std::process::Command::new(python)
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(job.to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(format!("{failed}: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}
