//! An Iceberg table metadata file (`…/metadata/00003-….metadata.json`, the file
//! Glue's `metadata_location` names): schemas, partition specs and snapshots, and
//! the Arrow types of Iceberg's types.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct TableMetadata {
    pub format_version: u8,
    #[serde(default)]
    pub current_schema_id: Option<i32>,
    #[serde(default)]
    pub schemas: Vec<IcebergSchema>,
    /// Format version 1 may carry one schema here instead of `schemas`.
    #[serde(default)]
    pub schema: Option<IcebergSchema>,
    #[serde(default)]
    pub partition_specs: Vec<PartitionSpec>,
    #[serde(default)]
    pub current_snapshot_id: Option<i64>,
    #[serde(default)]
    pub snapshots: Vec<Snapshot>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct IcebergSchema {
    #[serde(default)]
    pub schema_id: i32,
    pub fields: Vec<NestedField>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct NestedField {
    pub id: i32,
    pub name: String,
    #[serde(default)]
    pub required: bool,
    #[serde(rename = "type")]
    pub field_type: IcebergType,
    /// Format version 3: the value of rows written before the column existed.
    #[serde(default)]
    pub initial_default: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum IcebergType {
    Primitive(String),
    Nested(Box<NestedType>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum NestedType {
    Struct {
        fields: Vec<NestedField>,
    },
    List {
        #[serde(rename = "element")]
        element: IcebergType,
        #[serde(rename = "element-required", default)]
        element_required: bool,
    },
    Map {
        key: IcebergType,
        value: IcebergType,
        #[serde(rename = "value-required", default)]
        value_required: bool,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct PartitionSpec {
    pub spec_id: i32,
    pub fields: Vec<PartitionField>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct PartitionField {
    pub source_id: i32,
    pub name: String,
    pub transform: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Snapshot {
    pub snapshot_id: i64,
    pub timestamp_ms: i64,
    /// Format version 1 tables may list manifests inline instead.
    #[serde(default)]
    pub manifest_list: Option<String>,
    #[serde(default)]
    pub schema_id: Option<i32>,
}

impl TableMetadata {
    pub fn parse(bytes: &[u8]) -> Result<TableMetadata, String> {
        let mut m: TableMetadata = serde_json::from_slice(bytes)
            .map_err(|e| format!("metadata file is not valid: {e}"))?;
        if m.schemas.is_empty()
            && let Some(s) = m.schema.take()
        {
            m.schemas.push(s);
        }
        if m.current_snapshot_id == Some(-1) {
            m.current_snapshot_id = None;
        }
        Ok(m)
    }

    pub fn schema_by_id(&self, id: Option<i32>) -> Result<&IcebergSchema, String> {
        let id = id.or(self.current_schema_id);
        match id {
            Some(id) => self.schemas.iter().find(|s| s.schema_id == id),
            None => self.schemas.last(),
        }
        .ok_or_else(|| format!("schema {id:?} is not in the metadata file"))
    }

    pub fn current_schema(&self) -> Result<&IcebergSchema, String> {
        self.schema_by_id(None)
    }

    pub fn snapshot(&self, id: i64) -> Option<&Snapshot> {
        self.snapshots.iter().find(|s| s.snapshot_id == id)
    }

    /// The newest snapshot committed at or before `ms` (milliseconds since the epoch).
    pub fn snapshot_at(&self, ms: i64) -> Option<&Snapshot> {
        self.snapshots
            .iter()
            .filter(|s| s.timestamp_ms <= ms)
            .max_by_key(|s| (s.timestamp_ms, s.snapshot_id))
    }

    pub fn spec(&self, id: i32) -> Option<&PartitionSpec> {
        self.partition_specs.iter().find(|s| s.spec_id == id)
    }

    /// Why this schema cannot be read by column name, if it cannot: Sluice's Parquet
    /// scan matches columns by name, so a column renamed (same id, another name in
    /// an older schema), or a dropped name reused by a new column, would read the
    /// wrong data from older files; a format-3 default would read NULL instead.
    pub fn name_mapping_problem(&self, schema: &IcebergSchema) -> Option<String> {
        let mut by_id: HashMap<i32, &str> = HashMap::new();
        let mut by_name: HashMap<&str, i32> = HashMap::new();
        for field in &schema.fields {
            if field.initial_default.as_ref().is_some_and(|v| !v.is_null()) {
                return Some(format!(
                    "column \"{}\" has a default value for older rows (format version 3), which Sluice does not apply",
                    field.name
                ));
            }
            by_id.insert(field.id, &field.name);
            by_name.insert(&field.name, field.id);
        }
        for other in &self.schemas {
            for field in &other.fields {
                if let Some(name) = by_id.get(&field.id)
                    && *name != field.name
                {
                    return Some(format!(
                        "column \"{}\" was renamed from \"{}\" (Sluice reads Iceberg columns by name, so renamed columns are not supported yet)",
                        name, field.name
                    ));
                }
                if let Some(id) = by_name.get(field.name.as_str())
                    && *id != field.id
                {
                    return Some(format!(
                        "column \"{}\" was dropped and added again (Sluice reads Iceberg columns by name, so a reused name is not supported yet)",
                        field.name
                    ));
                }
            }
        }
        None
    }
}

impl IcebergSchema {
    pub fn arrow(&self) -> Result<SchemaRef, String> {
        let fields = self
            .fields
            .iter()
            .map(arrow_field)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Arc::new(Schema::new(fields)))
    }

    pub fn field_by_id(&self, id: i32) -> Option<&NestedField> {
        self.fields.iter().find(|f| f.id == id)
    }
}

fn arrow_field(field: &NestedField) -> Result<Field, String> {
    Ok(Field::new(
        &field.name,
        arrow_type(&field.field_type).map_err(|e| format!("column \"{}\": {e}", field.name))?,
        !field.required,
    ))
}

/// The Arrow type Sluice reads an Iceberg type as (the types pyarrow and Spark write
/// to Parquet for it).
pub fn arrow_type(t: &IcebergType) -> Result<DataType, String> {
    match t {
        IcebergType::Primitive(p) => primitive(p),
        IcebergType::Nested(n) => match n.as_ref() {
            NestedType::Struct { fields } => Ok(DataType::Struct(Fields::from(
                fields
                    .iter()
                    .map(arrow_field)
                    .collect::<Result<Vec<_>, _>>()?,
            ))),
            NestedType::List {
                element,
                element_required,
            } => Ok(DataType::List(Arc::new(Field::new(
                "element",
                arrow_type(element)?,
                !element_required,
            )))),
            NestedType::Map {
                key,
                value,
                value_required,
            } => Ok(DataType::Map(
                Arc::new(Field::new(
                    "key_value",
                    DataType::Struct(Fields::from(vec![
                        Field::new("key", arrow_type(key)?, false),
                        Field::new("value", arrow_type(value)?, !value_required),
                    ])),
                    false,
                )),
                false,
            )),
        },
    }
}

fn primitive(p: &str) -> Result<DataType, String> {
    let p = p.trim();
    Ok(match p {
        "boolean" => DataType::Boolean,
        "int" => DataType::Int32,
        "long" => DataType::Int64,
        "float" => DataType::Float32,
        "double" => DataType::Float64,
        "date" => DataType::Date32,
        "time" => DataType::Time64(TimeUnit::Microsecond),
        "timestamp" => DataType::Timestamp(TimeUnit::Microsecond, None),
        "timestamptz" => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        "string" => DataType::Utf8,
        "uuid" => DataType::FixedSizeBinary(16),
        "binary" => DataType::Binary,
        _ => {
            if let Some(args) = p.strip_prefix("decimal(").and_then(|r| r.strip_suffix(')')) {
                let (precision, scale) = args
                    .split_once(',')
                    .ok_or_else(|| format!("type `{p}` is not decimal(P, S)"))?;
                let precision: u8 = precision
                    .trim()
                    .parse()
                    .map_err(|_| format!("type `{p}` has a bad precision"))?;
                let scale: i8 = scale
                    .trim()
                    .parse()
                    .map_err(|_| format!("type `{p}` has a bad scale"))?;
                return Ok(DataType::Decimal128(precision, scale));
            }
            if let Some(len) = p.strip_prefix("fixed[").and_then(|r| r.strip_suffix(']')) {
                let len: i32 = len
                    .trim()
                    .parse()
                    .map_err(|_| format!("type `{p}` has a bad length"))?;
                return Ok(DataType::FixedSizeBinary(len));
            }
            return Err(format!("Iceberg type `{p}` is not supported"));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const V2: &str = r#"{
      "format-version": 2, "table-uuid": "x", "location": "s3://b/t",
      "current-schema-id": 1,
      "schemas": [
        {"type": "struct", "schema-id": 0, "fields": [
          {"id": 1, "name": "id", "required": true, "type": "long"},
          {"id": 2, "name": "at", "required": false, "type": "timestamptz"}]},
        {"type": "struct", "schema-id": 1, "fields": [
          {"id": 1, "name": "id", "required": true, "type": "long"},
          {"id": 2, "name": "at", "required": false, "type": "timestamptz"},
          {"id": 3, "name": "price", "required": false, "type": "decimal(10, 2)"},
          {"id": 4, "name": "tags", "required": false,
           "type": {"type": "list", "element-id": 5, "element": "string", "element-required": false}}]}],
      "default-spec-id": 0,
      "partition-specs": [{"spec-id": 0, "fields": [
          {"source-id": 2, "field-id": 1000, "name": "at_day", "transform": "day"}]}],
      "current-snapshot-id": 22,
      "snapshots": [
        {"snapshot-id": 11, "timestamp-ms": 1000, "manifest-list": "s3://b/t/m1.avro", "schema-id": 0},
        {"snapshot-id": 22, "timestamp-ms": 2000, "manifest-list": "s3://b/t/m2.avro", "schema-id": 1}]
    }"#;

    #[test]
    fn metadata_parses_and_maps_to_arrow() {
        let m = TableMetadata::parse(V2.as_bytes()).unwrap();
        let schema = m.current_schema().unwrap().arrow().unwrap();
        assert_eq!(schema.fields().len(), 4);
        assert_eq!(schema.field(0).data_type(), &DataType::Int64);
        assert!(!schema.field(0).is_nullable());
        assert_eq!(schema.field(2).data_type(), &DataType::Decimal128(10, 2));
        assert!(matches!(schema.field(3).data_type(), DataType::List(_)));
        let old = m.schema_by_id(Some(0)).unwrap().arrow().unwrap();
        assert_eq!(old.fields().len(), 2);
        assert_eq!(m.snapshot_at(1500).unwrap().snapshot_id, 11);
        assert_eq!(m.snapshot_at(5000).unwrap().snapshot_id, 22);
        assert!(m.snapshot_at(999).is_none());
        assert_eq!(m.spec(0).unwrap().fields[0].transform, "day");
        assert!(
            m.name_mapping_problem(m.current_schema().unwrap())
                .is_none()
        );
    }

    #[test]
    fn renames_and_reused_names_are_refused() {
        let renamed = V2.replace(
            r#"{"id": 2, "name": "at", "required": false, "type": "timestamptz"},
          {"id": 3"#,
            r#"{"id": 2, "name": "ts", "required": false, "type": "timestamptz"},
          {"id": 3"#,
        );
        let m = TableMetadata::parse(renamed.as_bytes()).unwrap();
        let problem = m.name_mapping_problem(m.current_schema().unwrap()).unwrap();
        assert!(problem.contains("renamed"), "{problem}");
        assert!(primitive("timestamp_ns").is_err());
        assert!(primitive("geometry").is_err());
    }
}
