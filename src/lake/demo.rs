//! The NYC-taxi-shaped demo data set, generated deterministically (no download).
//!
//! Layout under the lake root:
//! - `nyc/trips/month=2024-MM/part-0.parquet`: 12 months × 100,000 trips
//! - `nyc/zones/zones.csv`: 265 taxi zones
//! - `nyc/vendors/vendors.json`: NDJSON
//!
//! The same seed always yields the same bytes, so tests can compare against
//! values computed independently on the same files.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, Float64Array, Int32Array, Int64Array, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;

/// Bump when the generated data changes, so stale copies are regenerated.
pub const VERSION: &str = "1";
pub const MONTHS: u32 = 12;
pub const TRIPS_PER_MONTH: usize = 100_000;
const MARKER: &str = "_sluice_demo_version";

/// SplitMix64: tiny, fast and fully deterministic.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

fn cents(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// What the marker file says for a data set of `trips_per_month` trips a month (the
/// demo's own size keeps the plain version, so existing copies stay current).
fn marker_text(trips_per_month: usize) -> String {
    if trips_per_month == TRIPS_PER_MONTH {
        VERSION.to_owned()
    } else {
        format!("{VERSION} trips_per_month={trips_per_month}")
    }
}

/// True when `root` holds a current copy of the demo data.
pub fn is_present(root: &Path) -> bool {
    is_present_sized(root, TRIPS_PER_MONTH)
}

fn is_present_sized(root: &Path, trips_per_month: usize) -> bool {
    std::fs::read_to_string(root.join(MARKER))
        .map(|v| v.trim() == marker_text(trips_per_month))
        .unwrap_or(false)
}

/// Generates the demo data into `root` unless a current copy is there. Writes into a
/// sibling temporary directory and renames it into place, so an interrupted run never
/// leaves a half-written lake behind.
pub fn ensure(root: &Path) -> Result<bool, String> {
    ensure_sized(root, TRIPS_PER_MONTH)
}

/// [`ensure`] with `trips_per_month` trips in each monthly file instead of the demo's
/// 100,000: the same generator, so any size is NYC-shaped and deterministic (the
/// lake benchmark uses 1,000,000 a month: 12 M trips).
pub fn ensure_sized(root: &Path, trips_per_month: usize) -> Result<bool, String> {
    if trips_per_month == 0 {
        return Err("trips_per_month must be positive".into());
    }
    if is_present_sized(root, trips_per_month) {
        return Ok(false);
    }
    if root.exists() {
        let empty = std::fs::read_dir(root)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if !empty && !root.join(MARKER).exists() {
            return Err(format!(
                "{} exists and is not Sluice demo data; refusing to overwrite it (point lake.local.root elsewhere or set demo_data = false)",
                root.display()
            ));
        }
    }
    let parent = root.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)
        .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    let tmp = parent.join(format!(
        ".{}.tmp-{}",
        root.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    write_all(&tmp, trips_per_month).map_err(|e| {
        let _ = std::fs::remove_dir_all(&tmp);
        format!("cannot generate demo data: {e}")
    })?;
    if root.exists() {
        std::fs::remove_dir_all(root)
            .map_err(|e| format!("cannot replace {}: {e}", root.display()))?;
    }
    match std::fs::rename(&tmp, root) {
        Ok(()) => Ok(true),
        // Another process generated it concurrently: theirs is as good as ours.
        Err(_) if is_present_sized(root, trips_per_month) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(false)
        }
        Err(e) => Err(format!(
            "cannot move demo data into {}: {e}",
            root.display()
        )),
    }
}

fn write_all(dir: &Path, trips_per_month: usize) -> Result<(), Box<dyn std::error::Error>> {
    write_trips(&dir.join("nyc").join("trips"), trips_per_month)?;
    write_zones(&dir.join("nyc").join("zones"))?;
    write_vendors(&dir.join("nyc").join("vendors"))?;
    std::fs::write(dir.join(MARKER), marker_text(trips_per_month))?;
    Ok(())
}

pub fn trips_schema() -> Arc<Schema> {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, None);
    let f = |n: &str| Field::new(n, DataType::Float64, false);
    Arc::new(Schema::new(vec![
        Field::new("vendor_id", DataType::Int32, false),
        Field::new("pickup_datetime", ts.clone(), false),
        Field::new("dropoff_datetime", ts, false),
        Field::new("passenger_count", DataType::Int32, false),
        f("trip_distance"),
        Field::new("pickup_location_id", DataType::Int32, false),
        Field::new("payment_type", DataType::Int32, false),
        f("fare_amount"),
        f("extra"),
        f("mta_tax"),
        f("tip_amount"),
        f("tolls_amount"),
        f("improvement_surcharge"),
        f("total_amount"),
        f("pickup_longitude"),
        f("pickup_latitude"),
        Field::new("trip_id", DataType::Int64, false),
    ]))
}

fn days_in_month(month: u32) -> i64 {
    match month {
        2 => 29, // 2024 is a leap year
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Rows built and written at a time: bounds the generator's memory at any size.
const CHUNK_ROWS: usize = 1 << 20;

fn write_trips(dir: &Path, trips_per_month: usize) -> Result<(), Box<dyn std::error::Error>> {
    let schema = trips_schema();
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1)?))
        .set_max_row_group_row_count(Some(32_768))
        .build();
    let mut trip_id = 0i64;
    for month in 1..=MONTHS {
        let mut rng = Rng(0x5EED_0000 + month as u64);
        let start = chrono::NaiveDate::from_ymd_opt(2024, month, 1)
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .ok_or("bad date")?
            .and_utc()
            .timestamp_micros();
        let span = days_in_month(month) * 86_400_000_000;
        let mut pickups: Vec<i64> = (0..trips_per_month)
            .map(|_| start + rng.below(span as u64) as i64)
            .collect();
        pickups.sort_unstable();

        let month_dir = dir.join(format!("month=2024-{month:02}"));
        std::fs::create_dir_all(&month_dir)?;
        let file = File::create(month_dir.join("part-0.parquet"))?;
        let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(props.clone()))?;
        // The generator draws in the same order whatever the chunking, so the rows
        // (and row groups) do not depend on CHUNK_ROWS.
        for chunk in pickups.chunks(CHUNK_ROWS) {
            let batch = trips_batch(&schema, chunk, &mut rng, &mut trip_id)?;
            writer.write(&batch)?;
        }
        writer.close()?;
    }
    Ok(())
}

/// One batch of trips for the sorted `pickups`.
fn trips_batch(
    schema: &Arc<Schema>,
    pickups: &[i64],
    rng: &mut Rng,
    trip_id: &mut i64,
) -> Result<RecordBatch, Box<dyn std::error::Error>> {
    let n = pickups.len();
    let mut vendor = Vec::with_capacity(n);
    let mut dropoff = Vec::with_capacity(n);
    let mut passengers = Vec::with_capacity(n);
    let mut distance = Vec::with_capacity(n);
    let mut location = Vec::with_capacity(n);
    let mut payment = Vec::with_capacity(n);
    let mut fare = Vec::with_capacity(n);
    let mut extra = Vec::with_capacity(n);
    let mut mta = Vec::with_capacity(n);
    let mut tip = Vec::with_capacity(n);
    let mut tolls = Vec::with_capacity(n);
    let mut surcharge = Vec::with_capacity(n);
    let mut total = Vec::with_capacity(n);
    let mut lon = Vec::with_capacity(n);
    let mut lat = Vec::with_capacity(n);
    let mut ids = Vec::with_capacity(n);
    for &p in pickups {
        let d = cents(0.3 + -(1.0 - rng.unit()).ln() * 2.8);
        let minutes = (d * 3.5 + rng.unit() * 10.0) as i64 + 1;
        let hour = (p / 3_600_000_000).rem_euclid(24);
        let f = cents(3.0 + d * 2.5 + rng.unit() * 2.0);
        let e = if (16..20).contains(&hour) {
            1.0
        } else if !(6..20).contains(&hour) {
            0.5
        } else {
            0.0
        };
        let card = rng.unit() < 0.7;
        let t = if card {
            cents(f * (rng.below(6) as f64 * 5.0) / 100.0)
        } else {
            0.0
        };
        let toll = if rng.unit() < 0.05 { 6.94 } else { 0.0 };
        vendor.push(1 + rng.below(2) as i32);
        dropoff.push(p + minutes * 60_000_000);
        passengers.push(1 + (rng.unit().powi(3) * 5.0) as i32);
        distance.push(d);
        location.push(1 + rng.below(265) as i32);
        payment.push(if card { 1 } else { 2 });
        fare.push(f);
        extra.push(e);
        mta.push(0.5);
        tip.push(t);
        tolls.push(toll);
        surcharge.push(1.0);
        total.push(cents(f + e + 0.5 + t + toll + 1.0));
        lon.push(-73.98 + (rng.unit() - 0.5) * 0.1);
        lat.push(40.75 + (rng.unit() - 0.5) * 0.1);
        *trip_id += 1;
        ids.push(*trip_id);
    }
    let f64a = |v: Vec<f64>| Arc::new(Float64Array::from(v)) as ArrayRef;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int32Array::from(vendor)),
        Arc::new(TimestampMicrosecondArray::from(pickups.to_vec())),
        Arc::new(TimestampMicrosecondArray::from(dropoff)),
        Arc::new(Int32Array::from(passengers)),
        f64a(distance),
        Arc::new(Int32Array::from(location)),
        Arc::new(Int32Array::from(payment)),
        f64a(fare),
        f64a(extra),
        f64a(mta),
        f64a(tip),
        f64a(tolls),
        f64a(surcharge),
        f64a(total),
        f64a(lon),
        f64a(lat),
        Arc::new(Int64Array::from(ids)),
    ];
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

const BOROUGHS: [&str; 6] = [
    "Manhattan",
    "Brooklyn",
    "Queens",
    "Bronx",
    "Staten Island",
    "EWR",
];

fn write_zones(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    std::fs::create_dir_all(dir)?;
    let mut f = std::io::BufWriter::new(File::create(dir.join("zones.csv"))?);
    writeln!(f, "location_id,borough,zone,service_zone")?;
    for id in 1..=265 {
        let borough = BOROUGHS[(id * 7 % 6) as usize];
        let service = if borough == "Manhattan" {
            "Yellow Zone"
        } else if borough == "EWR" {
            "EWR"
        } else {
            "Boro Zone"
        };
        writeln!(f, "{id},{borough},{borough} Zone {id},{service}")?;
    }
    f.flush()?;
    Ok(())
}

fn write_vendors(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("vendors.json"),
        "{\"vendor_id\":1,\"name\":\"Creative Mobile Technologies\",\"active\":true}\n\
         {\"vendor_id\":2,\"name\":\"VeriFone Inc.\",\"active\":true}\n",
    )?;
    Ok(())
}
