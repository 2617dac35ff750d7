//! Reading Glue table definitions: formats, SerDes, partitions, locations.

use super::format::single_byte;
use super::*;
use aws_sdk_glue::types::{SerDeInfo, StorageDescriptor};

fn table(
    serde: &str,
    input: &str,
    serde_params: &[(&str, &str)],
    params: &[(&str, &str)],
) -> Table {
    let mut info = SerDeInfo::builder().serialization_library(serde);
    for (k, v) in serde_params {
        info = info.parameters(*k, *v);
    }
    let sd = StorageDescriptor::builder()
        .location("s3://b/t/")
        .input_format(input)
        .serde_info(info.build())
        .build();
    let mut t = Table::builder().name("t").storage_descriptor(sd);
    for (k, v) in params {
        t = t.parameters(*k, *v);
    }
    t.build().unwrap()
}

const TEXT_INPUT: &str = "org.apache.hadoop.mapred.TextInputFormat";

#[test]
fn formats_from_serde_and_parameters() {
    let parquet = table(
        "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe",
        "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat",
        &[],
        &[],
    );
    assert_eq!(detect_format(&parquet), Ok(Format::Parquet));
    let csv = table(
        "org.apache.hadoop.hive.serde2.lazy.LazySimpleSerDe",
        TEXT_INPUT,
        &[("field.delim", ",")],
        &[("skip.header.line.count", "1"), ("classification", "csv")],
    );
    let Ok(Format::Text(t)) = detect_format(&csv) else {
        panic!()
    };
    assert_eq!((t.delimiter, t.quote, t.header), (b',', None, true));
    let tsv = table(
        "org.apache.hadoop.hive.serde2.lazy.LazySimpleSerDe",
        TEXT_INPUT,
        &[("field.delim", "\\t")],
        &[],
    );
    assert!(
        matches!(detect_format(&tsv), Ok(Format::Text(t)) if t.delimiter == b'\t' && !t.header)
    );
    let ctrl_a = table(
        "org.apache.hadoop.hive.serde2.lazy.LazySimpleSerDe",
        TEXT_INPUT,
        &[],
        &[],
    );
    assert!(matches!(detect_format(&ctrl_a), Ok(Format::Text(t)) if t.delimiter == 1));
    let open = table(
        "org.apache.hadoop.hive.serde2.OpenCSVSerde",
        TEXT_INPUT,
        &[("separatorChar", ";"), ("quoteChar", "'")],
        &[],
    );
    assert!(
        matches!(detect_format(&open), Ok(Format::Text(t)) if t.delimiter == b';' && t.quote == Some(b'\''))
    );
    for json in [
        "org.openx.data.jsonserde.JsonSerDe",
        "org.apache.hive.hcatalog.data.JsonSerDe",
    ] {
        assert_eq!(
            detect_format(&table(json, TEXT_INPUT, &[], &[])),
            Ok(Format::Json)
        );
    }
}

#[test]
fn unsupported_kinds_are_named() {
    // Iceberg needs its metadata file; Delta only its root.
    let iceberg = table("x", "x", &[], &[("table_type", "ICEBERG")]);
    assert!(
        detect_format(&iceberg)
            .unwrap_err()
            .contains("metadata_location")
    );
    let iceberg = table(
        "x",
        "x",
        &[],
        &[
            ("table_type", "ICEBERG"),
            (
                "metadata_location",
                "s3://b/t/metadata/00001-x.metadata.json",
            ),
        ],
    );
    assert_eq!(
        detect_format(&iceberg),
        Ok(Format::Iceberg {
            metadata_location: "s3://b/t/metadata/00001-x.metadata.json".into()
        })
    );
    let delta = table("x", "x", &[], &[("spark.sql.sources.provider", "delta")]);
    assert_eq!(detect_format(&delta), Ok(Format::Delta));
    let delta = table(
        "x",
        "x",
        &[("path", "s3://b/real/")],
        &[("table_type", "DELTA")],
    );
    assert_eq!(detect_format(&delta), Ok(Format::Delta));
    assert_eq!(delta_location(&delta).as_deref(), Some("s3://b/real/"));
    let hudi = table(
        "x",
        "org.apache.hudi.hadoop.HoodieParquetInputFormat",
        &[],
        &[],
    );
    assert!(detect_format(&hudi).unwrap_err().contains("Hudi"));
    let orc = table("org.apache.hadoop.hive.ql.io.orc.OrcSerde", "x", &[], &[]);
    assert!(detect_format(&orc).unwrap_err().contains("ORC"));
    let view = Table::builder()
        .name("v")
        .table_type("VIRTUAL_VIEW")
        .build()
        .unwrap();
    assert!(detect_format(&view).unwrap_err().contains("view"));
    let two = table(
        "org.apache.hadoop.hive.serde2.lazy.LazySimpleSerDe",
        TEXT_INPUT,
        &[],
        &[("skip.header.line.count", "2")],
    );
    assert!(
        detect_format(&two)
            .unwrap_err()
            .contains("skip.header.line.count")
    );
}

#[test]
fn delimiters_and_compression() {
    assert_eq!(single_byte("|"), Some(b'|'));
    assert_eq!(single_byte("\\001"), Some(1));
    assert_eq!(single_byte("\\u0009"), Some(9));
    assert_eq!(single_byte("44"), Some(b','));
    assert_eq!(single_byte("ab"), None);
    assert_eq!(Compression::of("a/b.csv.gz"), Compression::Gzip);
    assert_eq!(Compression::of("a/b.json.BZ2"), Compression::Bzip2);
    assert_eq!(Compression::of("a/b.zst"), Compression::Zstd);
    assert_eq!(Compression::of("a/b.csv"), Compression::None);
}
