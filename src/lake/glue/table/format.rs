//! What a Glue table's definition says about how to read it: the file format from
//! its `StorageDescriptor` (SerDe, InputFormat, parameters), or the open table format
//! (Delta Lake, Iceberg), or why Sluice cannot read it.

use std::collections::HashMap;

use aws_sdk_glue::types::Table;
use datafusion::datasource::file_format::file_compression_type::FileCompressionType;

/// How a table's files are read.
#[derive(Debug, Clone, PartialEq)]
pub enum Format {
    Parquet,
    /// Delimited text: LazySimpleSerDe (no quoting) or OpenCSVSerde.
    Text(TextFormat),
    /// Newline-delimited JSON (Hive / OpenX JsonSerDe).
    Json,
    /// A Delta Lake table rooted at the location (`table_type = DELTA`, or Spark's
    /// `spark.sql.sources.provider = delta`).
    Delta,
    /// An Apache Iceberg table (`table_type = ICEBERG`) and its metadata file.
    Iceberg {
        metadata_location: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct TextFormat {
    pub delimiter: u8,
    /// `None`: fields are never quoted (LazySimpleSerDe).
    pub quote: Option<u8>,
    pub escape: Option<u8>,
    pub header: bool,
    /// The field text that means NULL (`serialization.null.format`, `\N` by
    /// default for LazySimpleSerDe). Empty fields are NULL too.
    pub null_marker: Option<String>,
}

/// Compression of a text file, from its name as Hive and Athena decide it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Compression {
    None,
    Gzip,
    Bzip2,
    Zstd,
    Xz,
}

impl Compression {
    pub fn of(path: &str) -> Compression {
        let lower = path.to_ascii_lowercase();
        if lower.ends_with(".gz") || lower.ends_with(".gzip") {
            Compression::Gzip
        } else if lower.ends_with(".bz2") {
            Compression::Bzip2
        } else if lower.ends_with(".zst") || lower.ends_with(".zstd") {
            Compression::Zstd
        } else if lower.ends_with(".xz") {
            Compression::Xz
        } else {
            Compression::None
        }
    }
}

impl From<Compression> for FileCompressionType {
    fn from(c: Compression) -> FileCompressionType {
        match c {
            Compression::None => FileCompressionType::UNCOMPRESSED,
            Compression::Gzip => FileCompressionType::GZIP,
            Compression::Bzip2 => FileCompressionType::BZIP2,
            Compression::Zstd => FileCompressionType::ZSTD,
            Compression::Xz => FileCompressionType::XZ,
        }
    }
}

/// The reader for a Glue table, or what kind of table it is that Sluice cannot read.
pub fn detect_format(table: &Table) -> std::result::Result<Format, String> {
    let params = lower_keys(table.parameters());
    let param = |k: &str| params.get(k).map(|v| v.to_ascii_lowercase());
    let table_type = table.table_type().unwrap_or_default().to_ascii_uppercase();
    let sd = table.storage_descriptor();
    let serde = sd.and_then(|s| s.serde_info());
    let library = serde
        .and_then(|s| s.serialization_library())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let input = sd
        .and_then(|s| s.input_format())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let class = param("classification").unwrap_or_default();

    if table_type == "VIRTUAL_VIEW" || table.view_original_text().is_some() {
        return Err("it is a Glue view (VIRTUAL_VIEW); query its underlying tables".into());
    }
    if table_type == "GOVERNED" {
        return Err("it is a Lake Formation governed table".into());
    }
    if param("table_type").as_deref() == Some("iceberg") || class == "iceberg" {
        return match params.get("metadata_location").filter(|l| !l.is_empty()) {
            Some(location) => Ok(Format::Iceberg {
                metadata_location: location.clone(),
            }),
            None => Err("it is an Apache Iceberg table without a metadata_location".into()),
        };
    }
    if param("table_type").as_deref() == Some("delta")
        || param("spark.sql.sources.provider").as_deref() == Some("delta")
        || class == "delta"
    {
        return Ok(Format::Delta);
    }
    if input.contains("hudi") || input.contains("hoodie") || class == "hudi" {
        return Err("it is an Apache Hudi table".into());
    }
    if sd.is_none() {
        return Err("Glue has no StorageDescriptor for it".into());
    }
    if library.contains("parquet") || input.contains("parquet") || class == "parquet" {
        return Ok(Format::Parquet);
    }
    if library.contains("jsonserde") || class == "json" {
        return Ok(Format::Json);
    }
    if library.contains("orc") || input.contains("orc") || class == "orc" {
        return Err("ORC files are not supported".into());
    }
    if library.contains("avro") || input.contains("avro") || class == "avro" {
        return Err("Avro files are not supported".into());
    }
    let mut serde_params = lower_keys(serde.and_then(|s| s.parameters()));
    let header = header_lines(&params, &serde_params)?;
    if library.contains("opencsvserde") {
        let char_param = |k: &str, default: u8| match serde_params.get(k) {
            Some(v) => single_byte(v)
                .ok_or_else(|| format!("SerDe parameter {k} `{v}` is not one character")),
            None => Ok(default),
        };
        return Ok(Format::Text(TextFormat {
            delimiter: char_param("separatorchar", b',')?,
            quote: Some(char_param("quotechar", b'"')?),
            escape: Some(char_param("escapechar", b'\\')?),
            header,
            null_marker: None,
        }));
    }
    let text = library.contains("lazysimpleserde")
        || (library.is_empty() && input.contains("textinputformat"))
        || matches!(class.as_str(), "csv" | "tsv");
    if text {
        // field.delim, else serialization.format, else Hive's default Ctrl-A.
        let delim = serde_params
            .remove("field.delim")
            .or_else(|| serde_params.remove("serialization.format"));
        let delimiter = match delim {
            Some(d) => single_byte(&d)
                .ok_or_else(|| format!("SerDe parameter field.delim `{d}` is not one character"))?,
            None if class == "tsv" => b'\t',
            None if class == "csv" => b',',
            None => 1,
        };
        let escape = match serde_params.get("escape.delim") {
            Some(e) => Some(single_byte(e).ok_or_else(|| {
                format!("SerDe parameter escape.delim `{e}` is not one character")
            })?),
            None => None,
        };
        let null = serde_params
            .get("serialization.null.format")
            .cloned()
            .unwrap_or_else(|| "\\N".into());
        return Ok(Format::Text(TextFormat {
            delimiter,
            quote: None,
            escape,
            header,
            null_marker: Some(null),
        }));
    }
    Err(format!(
        "its SerDe `{}` / InputFormat `{}` is not a format Sluice reads",
        serde
            .and_then(|s| s.serialization_library())
            .unwrap_or("none"),
        sd.and_then(|s| s.input_format()).unwrap_or("none")
    ))
}

/// A Delta table's root: Spark registers Delta tables with a placeholder Location
/// and the real one in the SerDe's `path` parameter.
pub(super) fn delta_location(table: &Table) -> Option<String> {
    let sd = table.storage_descriptor()?;
    let path = sd
        .serde_info()
        .and_then(|s| s.parameters())
        .and_then(|p| p.iter().find(|(k, _)| k.eq_ignore_ascii_case("path")))
        .map(|(_, v)| v.clone())
        .filter(|v| !v.is_empty());
    path.or_else(|| sd.location().map(str::to_owned))
}

fn lower_keys(map: Option<&HashMap<String, String>>) -> HashMap<String, String> {
    map.map(|m| {
        m.iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect()
    })
    .unwrap_or_default()
}

fn header_lines(
    table: &HashMap<String, String>,
    serde: &HashMap<String, String>,
) -> std::result::Result<bool, String> {
    let Some(v) = table
        .get("skip.header.line.count")
        .or_else(|| serde.get("skip.header.line.count"))
    else {
        return Ok(false);
    };
    match v.trim() {
        "0" => Ok(false),
        "1" => Ok(true),
        other => Err(format!(
            "skip.header.line.count = {other} is not supported (0 or 1 header lines are)"
        )),
    }
}

/// A delimiter as Hive DDL writes it: `,`, `\t`, `\001`, `\u0001`, or a number.
pub(super) fn single_byte(v: &str) -> Option<u8> {
    match v {
        "\\t" => return Some(b'\t'),
        "\\n" => return Some(b'\n'),
        _ => {}
    }
    if v.len() == 1 {
        return Some(v.as_bytes()[0]);
    }
    if let Some(hex) = v.strip_prefix("\\u") {
        return u8::from_str_radix(hex, 16).ok();
    }
    if let Some(oct) = v.strip_prefix('\\') {
        return u8::from_str_radix(oct, 8).ok();
    }
    v.parse::<u8>().ok()
}
