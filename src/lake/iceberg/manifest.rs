//! Iceberg manifest lists and manifests: Avro files read with `apache-avro`. Only
//! the fields a read needs are taken, by name, so format versions 1 and 2 (and the
//! extra fields of 3) read alike.

use std::collections::HashMap;

use apache_avro::types::Value;

/// One entry of a snapshot's manifest list.
#[derive(Debug, Clone)]
pub struct ManifestFile {
    pub path: String,
    pub spec_id: i32,
    /// 0: data files; 1: delete files.
    pub content: i32,
    /// Files the manifest adds or keeps (`None`: not recorded).
    pub live_files: Option<i64>,
    /// Per partition field: (lower, upper) bound of its values, as Iceberg's
    /// single-value binary encoding.
    pub partitions: Vec<FieldSummary>,
}

#[derive(Debug, Clone, Default)]
pub struct FieldSummary {
    pub lower: Option<Vec<u8>>,
    pub upper: Option<Vec<u8>>,
}

/// One live file of a manifest.
#[derive(Debug, Clone)]
pub struct DataFile {
    /// 0: data; 1: positional deletes; 2: equality deletes.
    pub content: i32,
    pub path: String,
    pub format: String,
    /// The partition tuple, in the spec's field order (`None`: null).
    pub partition: Vec<Option<PartitionValue>>,
    pub record_count: i64,
    pub file_size: u64,
    pub null_counts: HashMap<i32, i64>,
    pub lower_bounds: HashMap<i32, Vec<u8>>,
    pub upper_bounds: HashMap<i32, Vec<u8>>,
}

/// A partition value as the manifest stores it.
#[derive(Debug, Clone, PartialEq)]
pub enum PartitionValue {
    Int(i64),
    Float(f64),
    Text(String),
    Bytes(Vec<u8>),
    Bool(bool),
    /// A decimal's unscaled value.
    Decimal(i128),
}

fn records(bytes: &[u8]) -> Result<impl Iterator<Item = Result<Value, String>> + '_, String> {
    let reader =
        apache_avro::Reader::new(bytes).map_err(|e| format!("not a readable Avro file: {e}"))?;
    Ok(reader.map(|r| r.map_err(|e| format!("bad Avro record: {e}"))))
}

/// The value under a union (or the value itself).
fn plain(v: &Value) -> &Value {
    match v {
        Value::Union(_, inner) => plain(inner),
        other => other,
    }
}

fn field<'a>(record: &'a Value, name: &str) -> Option<&'a Value> {
    match plain(record) {
        Value::Record(fields) => fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| plain(v))
            .filter(|v| !matches!(v, Value::Null)),
        _ => None,
    }
}

fn int(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Int(i) | Value::Date(i) | Value::TimeMillis(i) => Some(i64::from(*i)),
        Value::Long(l)
        | Value::TimeMicros(l)
        | Value::TimestampMillis(l)
        | Value::TimestampMicros(l)
        | Value::LocalTimestampMillis(l)
        | Value::LocalTimestampMicros(l) => Some(*l),
        _ => None,
    }
}

fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

fn bytes(v: Option<&Value>) -> Option<Vec<u8>> {
    match v? {
        Value::Bytes(b) | Value::Fixed(_, b) => Some(b.clone()),
        _ => None,
    }
}

/// An Iceberg `map<int, T>`: Avro array of `{key, value}` records (or an Avro map).
fn id_map<T>(v: Option<&Value>, value: impl Fn(&Value) -> Option<T>) -> HashMap<i32, T> {
    let mut out = HashMap::new();
    match v {
        Some(Value::Array(items)) => {
            for item in items {
                if let (Some(k), Some(val)) = (int(field(item, "key")), field(item, "value"))
                    && let (Ok(k), Some(val)) = (i32::try_from(k), value(val))
                {
                    out.insert(k, val);
                }
            }
        }
        Some(Value::Map(m)) => {
            for (k, val) in m {
                if let (Ok(k), Some(val)) = (k.parse::<i32>(), value(plain(val))) {
                    out.insert(k, val);
                }
            }
        }
        _ => {}
    }
    out
}

pub fn read_manifest_list(data: &[u8]) -> Result<Vec<ManifestFile>, String> {
    let mut out = Vec::new();
    for record in records(data)? {
        let record = record?;
        let path = text(field(&record, "manifest_path"))
            .ok_or("a manifest list entry has no manifest_path")?;
        let count = |name: &str, v1: &str| int(field(&record, name).or(field(&record, v1)));
        let live_files = match (
            count("added_files_count", "added_data_files_count"),
            count("existing_files_count", "existing_data_files_count"),
        ) {
            (Some(a), Some(e)) => Some(a + e),
            _ => None,
        };
        let partitions = match field(&record, "partitions") {
            Some(Value::Array(items)) => items
                .iter()
                .map(|s| FieldSummary {
                    lower: bytes(field(s, "lower_bound")),
                    upper: bytes(field(s, "upper_bound")),
                })
                .collect(),
            _ => Vec::new(),
        };
        out.push(ManifestFile {
            path,
            spec_id: int(field(&record, "partition_spec_id"))
                .and_then(|i| i32::try_from(i).ok())
                .unwrap_or(0),
            content: int(field(&record, "content"))
                .and_then(|i| i32::try_from(i).ok())
                .unwrap_or(0),
            live_files,
            partitions,
        });
    }
    Ok(out)
}

/// The live (added or existing) files of a manifest; deleted entries are dropped.
pub fn read_manifest(data: &[u8]) -> Result<Vec<DataFile>, String> {
    let mut out = Vec::new();
    for record in records(data)? {
        let record = record?;
        if int(field(&record, "status")) == Some(2) {
            continue;
        }
        let file = field(&record, "data_file").ok_or("a manifest entry has no data_file")?;
        let path = text(field(file, "file_path")).ok_or("a data file has no file_path")?;
        let partition = match field(file, "partition") {
            Some(Value::Record(values)) => values
                .iter()
                .map(|(_, v)| partition_value(plain(v)))
                .collect(),
            _ => Vec::new(),
        };
        out.push(DataFile {
            content: int(field(file, "content"))
                .and_then(|i| i32::try_from(i).ok())
                .unwrap_or(0),
            format: text(field(file, "file_format")).unwrap_or_else(|| "PARQUET".into()),
            partition,
            record_count: int(field(file, "record_count")).unwrap_or(0),
            file_size: int(field(file, "file_size_in_bytes"))
                .and_then(|s| u64::try_from(s).ok())
                .unwrap_or(0),
            null_counts: id_map(field(file, "null_value_counts"), |v| int(Some(v))),
            lower_bounds: id_map(field(file, "lower_bounds"), |v| bytes(Some(v))),
            upper_bounds: id_map(field(file, "upper_bounds"), |v| bytes(Some(v))),
            path,
        });
    }
    Ok(out)
}

fn partition_value(v: &Value) -> Option<PartitionValue> {
    Some(match v {
        Value::Null => return None,
        Value::Boolean(b) => PartitionValue::Bool(*b),
        Value::Float(f) => PartitionValue::Float(f64::from(*f)),
        Value::Double(d) => PartitionValue::Float(*d),
        Value::String(s) => PartitionValue::Text(s.clone()),
        Value::Bytes(b) | Value::Fixed(_, b) => PartitionValue::Bytes(b.clone()),
        Value::Uuid(u) => PartitionValue::Bytes(u.as_bytes().to_vec()),
        Value::Decimal(d) => {
            let raw: Vec<u8> = d.try_into().ok()?;
            PartitionValue::Decimal(super::bounds::be_i128(&raw)?)
        }
        other => PartitionValue::Int(int(Some(other))?),
    })
}
