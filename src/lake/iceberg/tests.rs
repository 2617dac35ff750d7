//! An Iceberg table on local disk, its manifest list and manifest written with
//! `apache-avro` as Iceberg writers lay them out: the data is read, the data file
//! is skipped on its bounds, and a snapshot with a delete file is refused.

use std::sync::Arc;

use apache_avro::types::Value;
use datafusion::arrow::array::{Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::prelude::SessionContext;

use super::Iceberg;
use crate::error::PgError;

const MANIFEST_LIST: &str = r#"{"type": "record", "name": "manifest_file", "fields": [
  {"name": "manifest_path", "type": "string"},
  {"name": "manifest_length", "type": "long"},
  {"name": "partition_spec_id", "type": "int"},
  {"name": "content", "type": "int"},
  {"name": "added_files_count", "type": ["null", "int"]},
  {"name": "existing_files_count", "type": ["null", "int"]}]}"#;

const MANIFEST: &str = r#"{"type": "record", "name": "manifest_entry", "fields": [
  {"name": "status", "type": "int"},
  {"name": "data_file", "type": {"type": "record", "name": "r2", "fields": [
    {"name": "content", "type": "int"},
    {"name": "file_path", "type": "string"},
    {"name": "file_format", "type": "string"},
    {"name": "partition", "type": {"type": "record", "name": "r102", "fields": []}},
    {"name": "record_count", "type": "long"},
    {"name": "file_size_in_bytes", "type": "long"},
    {"name": "lower_bounds", "type": ["null", {"type": "array", "items": {"type": "record",
      "name": "k126_v127", "fields": [{"name": "key", "type": "int"}, {"name": "value", "type": "bytes"}]}}]},
    {"name": "upper_bounds", "type": ["null", {"type": "array", "items": {"type": "record",
      "name": "k129_v130", "fields": [{"name": "key", "type": "int"}, {"name": "value", "type": "bytes"}]}}]}
  ]}}]}"#;

fn avro(schema: &str, records: Vec<Value>) -> Vec<u8> {
    let schema = apache_avro::Schema::parse_str(schema).unwrap();
    let mut writer = apache_avro::Writer::with_codec(
        &schema,
        Vec::new(),
        apache_avro::Codec::Deflate(Default::default()),
    );
    for r in records {
        writer.append(r).unwrap();
    }
    writer.into_inner().unwrap()
}

fn record(fields: Vec<(&str, Value)>) -> Value {
    Value::Record(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

fn bound(id: i32, v: i64) -> Value {
    Value::Union(
        1,
        Box::new(Value::Array(vec![record(vec![
            ("key", Value::Int(id)),
            ("value", Value::Bytes(v.to_le_bytes().to_vec())),
        ])])),
    )
}

/// Writes the table under `dir` and returns its metadata file's URL.
fn table(dir: &std::path::Path, with_delete_file: bool) -> String {
    let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(Int64Array::from(vec![1, 2, 3]))],
    )
    .unwrap();
    let mut parquet = Vec::new();
    let mut w = ArrowWriter::try_new(&mut parquet, schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let url = |name: &str| format!("file://{}/{name}", dir.display());
    std::fs::write(dir.join("data.parquet"), &parquet).unwrap();
    let entry = |content: i32, path: String| {
        record(vec![
            ("status", Value::Int(1)),
            (
                "data_file",
                record(vec![
                    ("content", Value::Int(content)),
                    ("file_path", Value::String(path)),
                    ("file_format", Value::String("PARQUET".into())),
                    ("partition", record(vec![])),
                    ("record_count", Value::Long(3)),
                    ("file_size_in_bytes", Value::Long(parquet.len() as i64)),
                    ("lower_bounds", bound(1, 1)),
                    ("upper_bounds", bound(1, 3)),
                ]),
            ),
        ])
    };
    let data = avro(MANIFEST, vec![entry(0, url("data.parquet"))]);
    std::fs::write(dir.join("data-manifest.avro"), data).unwrap();
    let deletes = avro(MANIFEST, vec![entry(1, url("deletes.parquet"))]);
    std::fs::write(dir.join("delete-manifest.avro"), deletes).unwrap();
    let manifest = |path: &str, content: i32| {
        record(vec![
            ("manifest_path", Value::String(url(path))),
            ("manifest_length", Value::Long(100)),
            ("partition_spec_id", Value::Int(0)),
            ("content", Value::Int(content)),
            (
                "added_files_count",
                Value::Union(1, Box::new(Value::Int(1))),
            ),
            (
                "existing_files_count",
                Value::Union(1, Box::new(Value::Int(0))),
            ),
        ])
    };
    let mut manifests = vec![manifest("data-manifest.avro", 0)];
    if with_delete_file {
        manifests.push(manifest("delete-manifest.avro", 1));
    }
    std::fs::write(dir.join("list.avro"), avro(MANIFEST_LIST, manifests)).unwrap();
    let metadata = format!(
        r#"{{"format-version": 2, "current-schema-id": 0,
            "schemas": [{{"type": "struct", "schema-id": 0, "fields": [
              {{"id": 1, "name": "id", "required": true, "type": "long"}}]}}],
            "partition-specs": [{{"spec-id": 0, "fields": []}}],
            "current-snapshot-id": 7,
            "snapshots": [{{"snapshot-id": 7, "timestamp-ms": 1000,
                            "manifest-list": "{}", "schema-id": 0}}]}}"#,
        url("list.avro")
    );
    std::fs::write(dir.join("v1.metadata.json"), metadata).unwrap();
    url("v1.metadata.json")
}

async fn query(metadata: &str, sql: &str) -> datafusion::common::Result<Vec<RecordBatch>> {
    let iceberg = Iceberg::new("\"db\".\"t\"".into(), Arc::new(RuntimeEnv::default()));
    let ctx = SessionContext::new();
    ctx.register_table("t", iceberg.provider(metadata, None).await?)?;
    ctx.sql(sql).await?.collect().await
}

#[tokio::test]
async fn data_files_are_read_and_skipped_on_their_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let metadata = table(dir.path(), false);
    let rows = query(&metadata, "SELECT sum(id) FROM t").await.unwrap();
    let sum = rows[0]
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap();
    assert_eq!(sum.value(0), 6);
    // Bounds say 1..3: the file is skipped, so removing it changes nothing.
    std::fs::remove_file(dir.path().join("data.parquet")).unwrap();
    let rows = query(&metadata, "SELECT count(*) FROM t WHERE id > 10")
        .await
        .unwrap();
    let count = rows[0]
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap();
    assert_eq!(count.value(0), 0);
}

#[tokio::test]
async fn a_snapshot_with_delete_files_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let metadata = table(dir.path(), true);
    let e = query(&metadata, "SELECT count(*) FROM t")
        .await
        .unwrap_err();
    let pg = PgError::from(e);
    assert_eq!(pg.code.0, "0A000", "{}", pg.message);
    assert!(pg.message.contains("delete files"), "{}", pg.message);
}
