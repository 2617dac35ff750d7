//! The Glue lake against real peers: `moto_server` is Glue and S3; the test creates
//! databases, tables and partitions through the Glue API, uploads real Parquet, CSV
//! and JSON objects, and queries them through the real `sluice` binary. moto's request
//! log shows which S3 objects were touched.

use std::io::Write;
use std::process::Stdio;
use std::sync::Arc;

use aws_sdk_glue::types::{Column, PartitionInput, SerDeInfo, StorageDescriptor, TableInput};
use datafusion::arrow::array::{ArrayRef, Float64Array, Int32Array, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::ArrowWriter;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tokio_postgres::Client;

use crate::harness::{GatewayConfig, connect_plain, error_message, rows, spawn_sluice, sqlstate};
use crate::moto::Moto;

pub(crate) const PARQUET_SERDE: &str =
    "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe";
pub(crate) const PARQUET_INPUT: &str =
    "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat";
const LAZY_SERDE: &str = "org.apache.hadoop.hive.serde2.lazy.LazySimpleSerDe";
const OPENCSV_SERDE: &str = "org.apache.hadoop.hive.serde2.OpenCSVSerde";
const OPENX_SERDE: &str = "org.openx.data.jsonserde.JsonSerDe";
const TEXT_INPUT: &str = "org.apache.hadoop.mapred.TextInputFormat";

const TAXI_COLUMNS: &[(&str, &str)] = &[
    ("pickup_datetime", "timestamp"),
    ("fare_amount", "double"),
    ("extra", "double"),
    ("mta_tax", "double"),
    ("tip_amount", "double"),
    ("tolls_amount", "double"),
    ("improvement_surcharge", "double"),
    ("total_amount", "double"),
    ("pickup_longitude", "double"),
    ("pickup_latitude", "double"),
];

/// One taxi trip of the generated data set.
struct Trip {
    pickup: i64, // microseconds since the epoch
    fare: f64,
    extra: f64,
    tip: f64,
}

const JULY_1_2017_MICROS: i64 = 1_498_867_200_000_000;

fn trips() -> Vec<Trip> {
    (0..1500i64)
        .map(|i| Trip {
            pickup: JULY_1_2017_MICROS + i * 7 * 60 * 1_000_000,
            fare: 2.5 + (i % 50) as f64,
            extra: 0.5 * (i % 3) as f64,
            tip: 1.25 * (i % 7) as f64,
        })
        .collect()
}

impl Trip {
    fn total(&self) -> f64 {
        self.fare + self.extra + 0.5 + self.tip + 0.3
    }

    fn hour(&self) -> i64 {
        (self.pickup / 3_600_000_000).rem_euclid(24)
    }
}

/// `pickup_datetime` → `Pickup_Datetime`: how writers such as Spark often spell the
/// columns that Glue stores in lower case.
fn capitalized(name: &str) -> String {
    name.split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_uppercase().chain(c).collect::<String>())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join("_")
}

/// The trips as Arrow, with Parquet-writer spelling of the column names.
fn taxi_batch(trips: &[Trip]) -> RecordBatch {
    let f64s = |f: &dyn Fn(&Trip) -> f64| -> ArrayRef {
        Arc::new(Float64Array::from(trips.iter().map(f).collect::<Vec<_>>()))
    };
    let mut fields = vec![Field::new(
        capitalized("pickup_datetime"),
        DataType::Timestamp(TimeUnit::Microsecond, None),
        true,
    )];
    fields.extend(
        TAXI_COLUMNS[1..]
            .iter()
            .map(|(n, _)| Field::new(capitalized(n), DataType::Float64, true)),
    );
    let columns: Vec<ArrayRef> = vec![
        Arc::new(TimestampMicrosecondArray::from(
            trips.iter().map(|t| t.pickup).collect::<Vec<_>>(),
        )),
        f64s(&|t| t.fare),
        f64s(&|t| t.extra),
        f64s(&|_| 0.5),
        f64s(&|t| t.tip),
        f64s(&|_| 0.0),
        f64s(&|_| 0.3),
        f64s(&|t| t.total()),
        f64s(&|_| -73.98),
        f64s(&|_| 40.75),
    ];
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).expect("batch")
}

fn taxi_csv(trips: &[Trip]) -> String {
    let mut out = String::from(
        "pickup_datetime,fare_amount,extra,mta_tax,tip_amount,tolls_amount,improvement_surcharge,total_amount,pickup_longitude,pickup_latitude\n",
    );
    for t in trips {
        let at = chrono::DateTime::from_timestamp_micros(t.pickup)
            .expect("time")
            .naive_utc()
            .format("%Y-%m-%d %H:%M:%S");
        out.push_str(&format!(
            "{at},{},{},0.5,{},0,0.3,{},-73.98,40.75\n",
            t.fare,
            t.extra,
            t.tip,
            t.total()
        ));
    }
    out
}

pub(crate) fn parquet(batch: &RecordBatch) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut w = ArrowWriter::try_new(&mut buf, batch.schema(), None).expect("writer");
    w.write(batch).expect("write");
    w.close().expect("close");
    buf
}

/// `data` compressed by `tool -c` (gzip, bzip2).
fn compress(tool: &str, data: &[u8]) -> Vec<u8> {
    let mut child = std::process::Command::new(tool)
        .arg("-c")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{tool} runs: {e}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(data)
        .unwrap_or_else(|e| panic!("{tool} input: {e}"));
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("{tool} output: {e}"))
        .stdout
}

pub(crate) async fn put(store: &Arc<dyn ObjectStore>, key: &str, data: Vec<u8>) {
    store
        .put(&object_store::path::Path::from(key), PutPayload::from(data))
        .await
        .unwrap_or_else(|e| panic!("upload {key}: {e}"));
}

pub(crate) struct TableSpec<'a> {
    pub(crate) name: &'a str,
    pub(crate) columns: &'a [(&'a str, &'a str)],
    pub(crate) partition_keys: &'a [(&'a str, &'a str)],
    pub(crate) location: String,
    pub(crate) serde: &'a str,
    pub(crate) input: &'a str,
    pub(crate) serde_params: &'a [(&'a str, &'a str)],
    pub(crate) params: &'a [(&'a str, &'a str)],
}

fn columns(list: &[(&str, &str)]) -> Vec<Column> {
    list.iter()
        .map(|(n, t)| {
            Column::builder()
                .name(*n)
                .r#type(*t)
                .build()
                .expect("column")
        })
        .collect()
}

pub(crate) async fn create_table(glue: &aws_sdk_glue::Client, database: &str, t: TableSpec<'_>) {
    let mut serde = SerDeInfo::builder().serialization_library(t.serde);
    for (k, v) in t.serde_params {
        serde = serde.parameters(*k, *v);
    }
    let sd = StorageDescriptor::builder()
        .set_columns(Some(columns(t.columns)))
        .location(t.location)
        .input_format(t.input)
        .serde_info(serde.build())
        .build();
    let mut input = TableInput::builder()
        .name(t.name)
        .table_type("EXTERNAL_TABLE")
        .storage_descriptor(sd)
        .set_partition_keys(Some(columns(t.partition_keys)));
    for (k, v) in t.params {
        input = input.parameters(*k, *v);
    }
    glue.create_table()
        .database_name(database)
        .table_input(input.build().expect("table input"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("create table {}: {e:?}", t.name));
}

pub(crate) async fn create_database(glue: &aws_sdk_glue::Client, name: &str) {
    glue.create_database()
        .database_input(
            aws_sdk_glue::types::DatabaseInput::builder()
                .name(name)
                .build()
                .expect("database input"),
        )
        .send()
        .await
        .unwrap_or_else(|e| panic!("create database {name}: {e:?}"));
}

/// moto (Glue + S3) with the test lake in it, and a `sluice serve` reading it.
struct Rig {
    moto: Option<Moto>,
    _sluice: tokio::process::Child,
    port: u16,
    dir: tempfile::TempDir,
}

const DAYS: u32 = 31;

impl Rig {
    async fn start() -> Rig {
        let moto = Moto::start().expect("moto starts");
        let glue = moto.glue();
        let lake = moto.bucket("lake").expect("bucket");
        let dir = tempfile::tempdir().expect("tempdir");
        let data = trips();

        create_database(&glue, "blog-db").await;
        // CSV: half plain, half gzip-compressed, with a header line to skip.
        let (first, second) = data.split_at(data.len() / 2);
        put(&lake, "taxi/csv/part-0.csv", taxi_csv(first).into_bytes()).await;
        put(
            &lake,
            "taxi/csv/part-1.csv.gz",
            compress("gzip", taxi_csv(second).as_bytes()),
        )
        .await;
        put(&lake, "taxi/csv/_SUCCESS", b"marker".to_vec()).await;
        create_table(
            &glue,
            "blog-db",
            TableSpec {
                name: "taxi",
                columns: TAXI_COLUMNS,
                partition_keys: &[],
                location: "s3://lake/taxi/csv/".into(),
                serde: LAZY_SERDE,
                input: TEXT_INPUT,
                serde_params: &[("field.delim", ",")],
                params: &[("classification", "csv"), ("skip.header.line.count", "1")],
            },
        )
        .await;
        put(
            &lake,
            "taxi/parquet/part-0.parquet",
            parquet(&taxi_batch(first)),
        )
        .await;
        put(
            &lake,
            "taxi/parquet/part-1.parquet",
            parquet(&taxi_batch(second)),
        )
        .await;
        create_table(
            &glue,
            "blog-db",
            TableSpec {
                name: "taxi_parquet",
                columns: TAXI_COLUMNS,
                partition_keys: &[],
                location: "s3://lake/taxi/parquet".into(),
                serde: PARQUET_SERDE,
                input: PARQUET_INPUT,
                serde_params: &[],
                params: &[("classification", "parquet")],
            },
        )
        .await;

        // Partitions at non-Hive locations: …/2017/07/DD/, one file each.
        create_table(
            &glue,
            "blog-db",
            TableSpec {
                name: "trips_daily",
                columns: &[("trip_id", "int"), ("fare", "double")],
                partition_keys: &[("year", "string"), ("month", "string"), ("day", "string")],
                location: "s3://lake/trips_daily/".into(),
                serde: PARQUET_SERDE,
                input: PARQUET_INPUT,
                serde_params: &[],
                params: &[],
            },
        )
        .await;
        let mut partitions = Vec::new();
        for day in 1..=DAYS {
            let ids: Vec<i32> = (0..10).map(|i| (day * 100 + i) as i32).collect();
            let fares: Vec<f64> = ids.iter().map(|i| *i as f64 / 10.0).collect();
            let batch = RecordBatch::try_new(
                Arc::new(Schema::new(vec![
                    Field::new("trip_id", DataType::Int32, true),
                    Field::new("fare", DataType::Float64, true),
                ])),
                vec![
                    Arc::new(Int32Array::from(ids)),
                    Arc::new(Float64Array::from(fares)),
                ],
            )
            .expect("batch");
            put(
                &lake,
                &format!("trips_daily/2017/07/{day:02}/data.parquet"),
                parquet(&batch),
            )
            .await;
            partitions.push(
                PartitionInput::builder()
                    .set_values(Some(vec!["2017".into(), "07".into(), format!("{day:02}")]))
                    .storage_descriptor(
                        StorageDescriptor::builder()
                            .location(format!("s3://lake/trips_daily/2017/07/{day:02}/"))
                            .build(),
                    )
                    .build(),
            );
        }
        glue.batch_create_partition()
            .database_name("blog-db")
            .table_name("trips_daily")
            .set_partition_input_list(Some(partitions))
            .send()
            .await
            .expect("partitions");

        // Quoted CSV with OpenCSVSerde.
        put(
            &lake,
            "people/people.csv",
            b"id,name,score\n1,\"Smith, John\",5\n2,\"O'Hara\",7\n".to_vec(),
        )
        .await;
        create_table(
            &glue,
            "blog-db",
            TableSpec {
                name: "people",
                columns: &[("id", "int"), ("name", "string"), ("score", "int")],
                partition_keys: &[],
                location: "s3://lake/people/".into(),
                serde: OPENCSV_SERDE,
                input: TEXT_INPUT,
                serde_params: &[("separatorChar", ","), ("quoteChar", "\"")],
                params: &[("skip.header.line.count", "1")],
            },
        )
        .await;

        // Tables Sluice must refuse to read.
        create_table(
            &glue,
            "blog-db",
            TableSpec {
                name: "events_iceberg",
                columns: &[("id", "int")],
                partition_keys: &[],
                location: "s3://lake/iceberg/".into(),
                serde: PARQUET_SERDE,
                input: PARQUET_INPUT,
                serde_params: &[],
                params: &[("table_type", "ICEBERG")],
            },
        )
        .await;

        // Nested types in gzip-compressed JSON lines.
        create_database(&glue, "nested").await;
        let json = "{\"id\":1,\"tags\":[\"a\",\"b\"],\"info\":{\"city\":\"Oslo\",\"zip\":150},\"attrs\":{\"x\":1}}\n\
                    {\"id\":2,\"tags\":[],\"info\":{\"city\":\"Lima\",\"zip\":null},\"attrs\":{}}\n";
        put(
            &lake,
            "nested/events/part-0.json.gz",
            compress("gzip", json.as_bytes()),
        )
        .await;
        create_table(
            &glue,
            "nested",
            TableSpec {
                name: "events",
                columns: &[
                    ("id", "int"),
                    ("tags", "array<string>"),
                    ("info", "struct<city:string,zip:int>"),
                    ("attrs", "map<string,int>"),
                ],
                partition_keys: &[],
                location: "s3://lake/nested/events/".into(),
                serde: OPENX_SERDE,
                input: TEXT_INPUT,
                serde_params: &[],
                params: &[("classification", "json")],
            },
        )
        .await;

        // Every primitive Hive type, bzip2-compressed TSV with \N for NULL (and a value
        // that does not parse, which Hive reads as NULL).
        let tsv = "1\t300\t9000000000\t1.5\t2.25\t12.34\ttrue\t2017-07-02\t2017-07-02 10:11:12\tab\tabcde\n\
                   -2\t\\N\toops\t\\N\t\\N\t\\N\tfalse\t\\N\t\\N\t\t\n";
        put(
            &lake,
            "types/part-0.tsv.bz2",
            compress("bzip2", tsv.as_bytes()),
        )
        .await;
        create_table(
            &glue,
            "nested",
            TableSpec {
                name: "types",
                columns: &[
                    ("t", "tinyint"),
                    ("s", "smallint"),
                    ("b", "bigint"),
                    ("f", "float"),
                    ("d", "double"),
                    ("n", "decimal(10,2)"),
                    ("ok", "boolean"),
                    ("day", "date"),
                    ("at", "timestamp"),
                    ("c", "char(2)"),
                    ("v", "varchar(5)"),
                ],
                partition_keys: &[],
                location: "s3://lake/types/".into(),
                serde: LAZY_SERDE,
                input: TEXT_INPUT,
                serde_params: &[("field.delim", "\t")],
                params: &[],
            },
        )
        .await;

        // A table on local disk: readable when moto (Glue) is gone.
        let local = dir.path().join("local_t");
        std::fs::create_dir_all(&local).expect("dir");
        std::fs::write(local.join("a.tsv"), "1\tone\n2\ttwo\n").expect("tsv");
        create_database(&glue, "ops").await;
        create_table(
            &glue,
            "ops",
            TableSpec {
                name: "local_t",
                columns: &[("id", "int"), ("word", "string")],
                partition_keys: &[],
                location: format!("file://{}/", local.display()),
                serde: LAZY_SERDE,
                input: TEXT_INPUT,
                serde_params: &[("field.delim", "\t")],
                params: &[],
            },
        )
        .await;

        let port = crate::postgres::free_port().expect("port");
        let lake = format!(
            r#"
[lake.glue]
region = "us-east-1"
aws_endpoint = "{aws}"
exclude = ["hidden*"]
allow_local_locations = true
[lake.glue.s3]
endpoint = "{aws}"
path_style = true
"#,
            aws = moto.endpoint(),
        );
        let path = GatewayConfig::bare()
            .port(port)
            .auth(AUTH)
            .lake(&lake)
            .write(dir.path());
        let sluice = spawn_sluice(&path, port, &[]).await;
        Rig {
            moto: Some(moto),
            _sluice: sluice,
            port,
            dir,
        }
    }

    fn moto(&self) -> &Moto {
        self.moto.as_ref().expect("moto running")
    }

    async fn connect(&self, user: &str, password: &str) -> Client {
        connect_plain(self.port, user, password)
            .await
            .expect("connect")
    }

    async fn admin(&self) -> Client {
        self.connect("admin", "admin-pw").await
    }
}

/// The admin reads everything; the analyst only blog-db's taxi tables.
const AUTH: &str = r#"
[[auth.users]]
name = "admin"
password = "admin-pw"
roles = ["everything"]
[[auth.users]]
name = "analyst"
password = "analyst-pw"
roles = ["taxi_only"]

[[roles]]
name = "everything"
read = ["*"]
admin = true
[[roles]]
name = "taxi_only"
read = ["blog-db.taxi*"]
"#;

const HOURLY_FARE: &str = "SELECT EXTRACT(HOUR FROM pickup_datetime) AS hour, avg(fare_amount) \
     FROM \"blog-db\".{table} GROUP BY 1 ORDER BY 1";

const TIP_BUCKETS: &str =
    "SELECT tip_bucket, count(*) AS trips, round(avg(total_amount), 4) AS avg_total FROM (
       SELECT total_amount, CASE WHEN tip_pct = 0 THEN 'none'
                                 WHEN tip_pct < 10 THEN 'low'
                                 WHEN tip_pct < 20 THEN 'mid'
                                 ELSE 'high' END AS tip_bucket
       FROM (SELECT tip_amount / fare_amount * 100 AS tip_pct, total_amount
             FROM \"blog-db\".{table}
             WHERE fare_amount > 0) AS with_pct
     ) AS bucketed GROUP BY tip_bucket ORDER BY tip_bucket";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nyc_taxi_queries_over_csv_and_parquet_match_the_data() {
    let rig = Rig::start().await;
    let c = rig.admin().await;
    let data = trips();

    // Expected answers computed from the generated trips.
    let mut by_hour: std::collections::BTreeMap<i64, (f64, u32)> = Default::default();
    for t in &data {
        let e = by_hour.entry(t.hour()).or_default();
        e.0 += t.fare;
        e.1 += 1;
    }
    for table in ["taxi", "taxi_parquet", "TAXI_PARQUET"] {
        let got = rows(&c, &HOURLY_FARE.replace("{table}", table)).await;
        assert_eq!(got.len(), by_hour.len(), "{table}: {got:?}");
        for (row, (hour, (sum, n))) in got.iter().zip(&by_hour) {
            assert_eq!(row[0], hour.to_string(), "{table}");
            let avg: f64 = row[1].parse().expect("avg");
            assert!(
                (avg - sum / *n as f64).abs() < 1e-9,
                "{table} hour {hour}: {avg}"
            );
        }
    }
    let mut buckets: std::collections::BTreeMap<&str, (u32, f64)> = Default::default();
    for t in &data {
        let pct = t.tip / t.fare * 100.0;
        let b = match pct {
            0.0 => "none",
            p if p < 10.0 => "low",
            p if p < 20.0 => "mid",
            _ => "high",
        };
        let e = buckets.entry(b).or_default();
        e.0 += 1;
        e.1 += t.total();
    }
    let csv = rows(&c, &TIP_BUCKETS.replace("{table}", "taxi")).await;
    let parquet = rows(&c, &TIP_BUCKETS.replace("{table}", "taxi_parquet")).await;
    assert_eq!(csv, parquet, "CSV and Parquet copies disagree");
    assert_eq!(csv.len(), buckets.len(), "{csv:?}");
    for (row, (bucket, (n, total))) in csv.iter().zip(&buckets) {
        assert_eq!(&row[0], bucket);
        assert_eq!(row[1], n.to_string(), "{bucket}");
        let avg: f64 = row[2].parse().expect("avg");
        assert!((avg - total / *n as f64).abs() < 1e-4, "{bucket}: {avg}");
    }
    // Filters on Parquet columns spelled differently in the files still apply.
    let expensive = data.iter().filter(|t| t.fare > 40.0).count();
    for table in ["taxi", "taxi_parquet"] {
        assert_eq!(
            rows(
                &c,
                &format!("SELECT count(*) FROM \"blog-db\".{table} WHERE fare_amount > 40")
            )
            .await[0][0],
            expensive.to_string(),
            "{table}"
        );
    }
    // The header line was skipped, the gzip file read, `_SUCCESS` ignored.
    assert_eq!(
        rows(&c, "SELECT count(*) FROM \"blog-db\".taxi").await[0][0],
        data.len().to_string()
    );

    // Quoted CSV fields keep their commas.
    assert_eq!(
        rows(
            &c,
            "SELECT id, name, score FROM \"blog-db\".people ORDER BY id"
        )
        .await,
        vec![
            vec!["1".to_owned(), "Smith, John".into(), "5".into()],
            vec!["2".to_owned(), "O'Hara".into(), "7".into()],
        ]
    );

    // Catalog browsing sees PostgreSQL types.
    let types = rows(
        &c,
        "SELECT column_name, data_type FROM information_schema.columns \
         WHERE table_schema = 'blog-db' AND table_name = 'taxi_parquet' ORDER BY ordinal_position",
    )
    .await;
    assert_eq!(
        types[0],
        vec!["pickup_datetime", "timestamp without time zone"]
    );
    assert_eq!(types[1], vec!["fare_amount", "double precision"]);
    assert_eq!(types.len(), TAXI_COLUMNS.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_come_from_glue_and_other_days_are_never_read() {
    let rig = Rig::start().await;
    let c = rig.admin().await;
    let fetched = |lake: &[Vec<String>]| -> u64 {
        let row = lake
            .iter()
            .find(|r| r[0] == "blog-db")
            .expect("blog-db row");
        row[6].parse().expect("partitions_fetched")
    };
    let fetched_before = fetched(&rows(&c, "SHOW sluice.lake").await);
    let before = rig.moto().requests().len();
    let one_day = rows(
        &c,
        "SELECT count(*), sum(trip_id), min(day), max(year) FROM \"blog-db\".trips_daily \
         WHERE year = '2017' AND month = '07' AND day = '02'",
    )
    .await;
    assert_eq!(
        one_day,
        vec![vec![
            "10".to_owned(),
            "2045".into(),
            "02".into(),
            "2017".into()
        ]]
    );
    // The filter went to Glue as an expression: Glue returned one partition of 31.
    assert_eq!(
        fetched(&rows(&c, "SHOW sluice.lake").await) - fetched_before,
        1
    );
    let touched: Vec<String> = rig.moto().requests()[before..]
        .iter()
        .filter(|l| l.contains("trips_daily"))
        .cloned()
        .collect();
    assert!(
        touched
            .iter()
            .any(|l| l.contains("07/02") || l.contains("07%2F02")),
        "the queried day was read: {touched:#?}"
    );
    for day in (1..=DAYS).filter(|d| *d != 2) {
        for pattern in [format!("07/{day:02}"), format!("07%2F{day:02}")] {
            assert!(
                !touched.iter().any(|l| l.contains(&pattern)),
                "day {day:02} was touched: {touched:#?}"
            );
        }
    }

    // Filters Glue's expression language cannot carry are still exact.
    assert_eq!(
        rows(
            &c,
            "SELECT count(*) FROM \"blog-db\".trips_daily WHERE CAST(day AS INT) BETWEEN 30 AND 31"
        )
        .await[0][0],
        "20"
    );
    // The whole table: every partition, values as columns.
    assert_eq!(
        rows(
            &c,
            "SELECT count(*), count(DISTINCT day) FROM \"blog-db\".trips_daily"
        )
        .await,
        vec![vec![(DAYS * 10).to_string(), DAYS.to_string()]]
    );
    // EXPLAIN shows one file for one day.
    let plan = rows(
        &c,
        "EXPLAIN SELECT sum(fare) FROM \"blog-db\".trips_daily WHERE day = '05'",
    )
    .await
    .concat()
    .join("\n");
    assert!(plan.contains("2017/07/05/data.parquet"), "{plan}");
    assert!(!plan.contains("2017/07/06/"), "{plan}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_json_unsupported_tables_and_role_filtered_listing() {
    let rig = Rig::start().await;
    let c = rig.admin().await;
    assert_eq!(
        rows(
            &c,
            "SELECT id, tags, info['city'], info['zip'], attrs, cardinality(tags) \
             FROM nested.events ORDER BY id"
        )
        .await,
        vec![
            vec!["1", "{a,b}", "Oslo", "150", "{\"x\":1}", "2"]
                .into_iter()
                .map(String::from)
                .collect::<Vec<_>>(),
            vec!["2", "{}", "Lima", "NULL", "{}", "0"]
                .into_iter()
                .map(String::from)
                .collect(),
        ]
    );

    assert_eq!(
        rows(&c, "SELECT * FROM nested.types ORDER BY t DESC").await,
        vec![
            vec![
                "1",
                "300",
                "9000000000",
                "1.5",
                "2.25",
                "12.34",
                "t",
                "2017-07-02",
                "2017-07-02 10:11:12",
                "ab",
                "abcde"
            ]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>(),
            vec![
                "-2", "NULL", "NULL", "NULL", "NULL", "NULL", "f", "NULL", "NULL", "NULL", "NULL"
            ]
            .into_iter()
            .map(String::from)
            .collect(),
        ]
    );
    let types: Vec<String> = rows(
        &c,
        "SELECT data_type FROM information_schema.columns \
         WHERE table_schema = 'nested' AND table_name = 'types' ORDER BY ordinal_position",
    )
    .await
    .concat();
    assert_eq!(
        types,
        [
            "smallint",
            "smallint",
            "bigint",
            "real",
            "double precision",
            "numeric",
            "boolean",
            "date",
            "timestamp without time zone",
            "text",
            "text"
        ]
    );

    // An Iceberg table is listed, but reading it names what it is.
    let e = c
        .simple_query("SELECT * FROM \"blog-db\".events_iceberg")
        .await
        .expect_err("iceberg refused");
    assert_eq!(sqlstate(&e), "0A000");
    let message = error_message(&e);
    assert!(message.contains("Iceberg"), "{message}");

    // The analyst's role reads blog-db.taxi* only: the listing shows nothing else.
    let a = rig.connect("analyst", "analyst-pw").await;
    let tables = rows(
        &a,
        "SELECT table_schema, table_name FROM information_schema.tables \
         WHERE table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2",
    )
    .await;
    assert_eq!(
        tables,
        vec![
            vec!["blog-db".to_owned(), "taxi".into()],
            vec!["blog-db".to_owned(), "taxi_parquet".into()],
        ]
    );
    let lake = rows(&a, "SHOW sluice.lake").await;
    assert_eq!(lake.len(), 1, "{lake:?}");
    assert_eq!((lake[0][0].as_str(), lake[0][2].as_str()), ("blog-db", "2"));
    let e = a
        .simple_query("SELECT count(*) FROM \"blog-db\".trips_daily")
        .await
        .expect_err("not granted");
    assert_eq!(sqlstate(&e), "42501");
    assert!(a.simple_query("SELECT * FROM nested.events").await.is_err());
    let e = a
        .simple_query("CALL sluice.refresh_lake('nested')")
        .await
        .expect_err("no grant in nested");
    assert_eq!(sqlstate(&e), "42501");
    a.simple_query("CALL sluice.refresh_lake('blog-db')")
        .await
        .expect("refresh a granted database");
    let e = a
        .simple_query("CALL sluice.refresh_lake()")
        .await
        .expect_err("the whole catalog needs admin");
    assert_eq!(sqlstate(&e), "42501");
    let e = c
        .simple_query("CALL sluice.refresh_lake('hidden_db')")
        .await
        .expect_err("excluded by config");
    assert!(
        e.as_db_error()
            .is_some_and(|d| d.message().contains("not exposed")),
        "{e:?}"
    );
    // The admin sees every database.
    let all: Vec<String> = rows(&c, "SHOW sluice.lake")
        .await
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    assert_eq!(all, vec!["blog-db", "nested", "ops"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_picks_up_new_tables_and_cached_metadata_survives_glue_outage() {
    let mut rig = Rig::start().await;
    let c = rig.admin().await;
    let glue = rig.moto().glue();
    let extra = rig.dir.path().join("extra");
    std::fs::create_dir_all(&extra).expect("dir");
    std::fs::write(extra.join("x.csv"), "7,seven\n").expect("csv");
    create_table(
        &glue,
        "ops",
        TableSpec {
            name: "added_later",
            columns: &[("id", "bigint"), ("word", "varchar(10)")],
            partition_keys: &[],
            location: format!("file://{}", extra.display()),
            serde: LAZY_SERDE,
            input: TEXT_INPUT,
            serde_params: &[("field.delim", ",")],
            params: &[],
        },
    )
    .await;
    let e = c
        .simple_query("SELECT * FROM ops.added_later")
        .await
        .expect_err("not loaded yet");
    assert_eq!(sqlstate(&e), "42P01");
    c.simple_query("CALL sluice.refresh_lake('ops')")
        .await
        .expect("refresh one database");
    assert_eq!(
        rows(&c, "SELECT id, word FROM ops.added_later").await,
        vec![vec!["7".to_owned(), "seven".into()]]
    );

    // Glue goes away: the refresh fails clearly, cached tables keep answering.
    rig.moto.take();
    let e = c
        .simple_query("CALL sluice.refresh_lake()")
        .await
        .expect_err("Glue is down");
    assert_eq!(sqlstate(&e), "58000");
    let message = error_message(&e);
    assert!(message.contains("GetDatabases"), "{message}");
    assert!(
        !message.contains("testing"),
        "no credentials in errors: {message}"
    );
    assert_eq!(
        rows(&c, "SELECT word FROM ops.local_t ORDER BY id").await,
        vec![vec!["one".to_owned()], vec!["two".to_owned()]]
    );
    let lake = rows(&c, "SHOW sluice.lake").await;
    assert!(
        lake.iter().all(|r| r[4].contains("GetDatabases")),
        "{lake:?}"
    );
    let bad = c
        .simple_query("CALL sluice.refresh_lake(1, 2)")
        .await
        .expect_err("usage");
    assert_eq!(sqlstate(&bad), "42601");
}
