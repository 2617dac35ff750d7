//! Value ranges of table columns per manifest or per data file, from Iceberg
//! metadata, for DataFusion's `PruningPredicate`: a manifest's partition summaries
//! and a file's partition tuple become ranges of the partition's source column
//! (`day(ts) = 19800` → `ts` in that day), and a file's column bounds narrow them.
//! Whatever cannot be decoded is simply unknown, which never prunes.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{Datelike, NaiveDate};
use datafusion::arrow::array::{ArrayRef, BooleanArray, UInt64Array};
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use datafusion::common::{Column, ScalarValue};
use datafusion::physical_optimizer::pruning::PruningStatistics;

use super::manifest::PartitionValue;
use super::metadata::{IcebergSchema, PartitionSpec};

const MICROS_PER_HOUR: i64 = 3_600_000_000;
const MICROS_PER_DAY: i64 = 24 * MICROS_PER_HOUR;

/// What is known of one container (a manifest or a data file).
#[derive(Debug, Default, Clone)]
pub struct Ranges {
    /// Column name → (lower, upper), either side possibly unknown.
    pub columns: HashMap<String, (Option<ScalarValue>, Option<ScalarValue>)>,
    pub null_counts: HashMap<String, u64>,
    pub rows: Option<u64>,
}

impl Ranges {
    /// Narrows the known range of `column` (the tighter bound wins).
    pub fn narrow(&mut self, column: &str, lower: Option<ScalarValue>, upper: Option<ScalarValue>) {
        let entry = self.columns.entry(column.to_owned()).or_default();
        if let Some(l) = lower
            && entry
                .0
                .as_ref()
                .is_none_or(|old| l.partial_cmp(old) == Some(std::cmp::Ordering::Greater))
        {
            entry.0 = Some(l);
        }
        if let Some(u) = upper
            && entry
                .1
                .as_ref()
                .is_none_or(|old| u.partial_cmp(old) == Some(std::cmp::Ordering::Less))
        {
            entry.1 = Some(u);
        }
    }

    /// The source-column ranges a partition tuple (or a manifest's per-field
    /// bounds) implies under `spec`.
    pub fn add_partition(
        &mut self,
        schema: &IcebergSchema,
        arrow: &SchemaRef,
        spec: &PartitionSpec,
        values: &[(Option<PartitionValue>, Option<PartitionValue>)],
    ) {
        for (field, (lower, upper)) in spec.fields.iter().zip(values) {
            let Some(source) = schema.field_by_id(field.source_id) else {
                continue;
            };
            let Ok(column) = arrow.field_with_name(&source.name) else {
                continue;
            };
            let data_type = column.data_type();
            let low = lower
                .as_ref()
                .and_then(|v| transform_range(&field.transform, v, data_type))
                .map(|r| r.0);
            let high = upper
                .as_ref()
                .and_then(|v| transform_range(&field.transform, v, data_type))
                .map(|r| r.1);
            self.narrow(&source.name, low, high);
        }
    }
}

/// The range of source values whose transform is `value`.
fn transform_range(
    transform: &str,
    value: &PartitionValue,
    data_type: &DataType,
) -> Option<(ScalarValue, ScalarValue)> {
    let n = match value {
        PartitionValue::Int(n) => Some(*n),
        _ => None,
    };
    match transform {
        "identity" => {
            let v = scalar_from_partition(value, data_type)?;
            Some((v.clone(), v))
        }
        "hour" => {
            let h = n?;
            micros_range(
                h * MICROS_PER_HOUR,
                (h + 1) * MICROS_PER_HOUR - 1,
                data_type,
            )
        }
        "day" => {
            let d = n?;
            match data_type {
                DataType::Date32 => {
                    let d = i32::try_from(d).ok()?;
                    Some((ScalarValue::Date32(Some(d)), ScalarValue::Date32(Some(d))))
                }
                _ => micros_range(d * MICROS_PER_DAY, (d + 1) * MICROS_PER_DAY - 1, data_type),
            }
        }
        "month" => {
            let m = n?;
            let first = month_start(m)?;
            let next = month_start(m + 1)?;
            days_range(first, next - 1, data_type)
        }
        "year" => {
            let y = n?;
            let first = month_start(y * 12)?;
            let next = month_start((y + 1) * 12)?;
            days_range(first, next - 1, data_type)
        }
        _ => None, // bucket, truncate, void: no range of the source column
    }
}

/// Days since the epoch of the first day of `months` months after January 1970.
fn month_start(months: i64) -> Option<i64> {
    let year = i32::try_from(1970 + months.div_euclid(12)).ok()?;
    let month = u32::try_from(months.rem_euclid(12) + 1).ok()?;
    let date = NaiveDate::from_ymd_opt(year, month, 1)?;
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1)?;
    Some(i64::from(
        date.num_days_from_ce() - epoch.num_days_from_ce(),
    ))
}

fn days_range(first: i64, last: i64, data_type: &DataType) -> Option<(ScalarValue, ScalarValue)> {
    match data_type {
        DataType::Date32 => Some((
            ScalarValue::Date32(Some(i32::try_from(first).ok()?)),
            ScalarValue::Date32(Some(i32::try_from(last).ok()?)),
        )),
        _ => micros_range(
            first * MICROS_PER_DAY,
            (last + 1) * MICROS_PER_DAY - 1,
            data_type,
        ),
    }
}

fn micros_range(low: i64, high: i64, data_type: &DataType) -> Option<(ScalarValue, ScalarValue)> {
    match data_type {
        DataType::Timestamp(TimeUnit::Microsecond, tz) => Some((
            ScalarValue::TimestampMicrosecond(Some(low), tz.clone()),
            ScalarValue::TimestampMicrosecond(Some(high), tz.clone()),
        )),
        _ => None,
    }
}

fn scalar_from_partition(value: &PartitionValue, data_type: &DataType) -> Option<ScalarValue> {
    Some(match (value, data_type) {
        (PartitionValue::Int(n), DataType::Int32) => {
            ScalarValue::Int32(Some(i32::try_from(*n).ok()?))
        }
        (PartitionValue::Int(n), DataType::Int64) => ScalarValue::Int64(Some(*n)),
        (PartitionValue::Int(n), DataType::Date32) => {
            ScalarValue::Date32(Some(i32::try_from(*n).ok()?))
        }
        (PartitionValue::Int(n), DataType::Timestamp(TimeUnit::Microsecond, tz)) => {
            ScalarValue::TimestampMicrosecond(Some(*n), tz.clone())
        }
        (PartitionValue::Float(f), DataType::Float64) => ScalarValue::Float64(Some(*f)),
        (PartitionValue::Float(f), DataType::Float32) => ScalarValue::Float32(Some(*f as f32)),
        (PartitionValue::Text(s), DataType::Utf8) => ScalarValue::Utf8(Some(s.clone())),
        (PartitionValue::Bool(b), DataType::Boolean) => ScalarValue::Boolean(Some(*b)),
        (PartitionValue::Decimal(d), DataType::Decimal128(p, s)) => {
            ScalarValue::Decimal128(Some(*d), *p, *s)
        }
        _ => return None,
    })
}

/// A partition field summary's bound (binary single-value encoding of the
/// partition's result type) as a partition value.
pub fn partition_from_bytes(
    bytes: &[u8],
    transform: &str,
    source_type: &DataType,
) -> Option<PartitionValue> {
    if transform != "identity" {
        // Temporal transforms' results are ints (days, months, years, hours).
        return match bytes.len() {
            4 => Some(PartitionValue::Int(i64::from(i32::from_le_bytes(
                bytes.try_into().ok()?,
            )))),
            8 => Some(PartitionValue::Int(i64::from_le_bytes(
                bytes.try_into().ok()?,
            ))),
            _ => None,
        };
    }
    Some(match decode(bytes, source_type)? {
        ScalarValue::Int32(Some(v)) | ScalarValue::Date32(Some(v)) => {
            PartitionValue::Int(i64::from(v))
        }
        ScalarValue::Int64(Some(v)) | ScalarValue::TimestampMicrosecond(Some(v), _) => {
            PartitionValue::Int(v)
        }
        ScalarValue::Float64(Some(v)) => PartitionValue::Float(v),
        ScalarValue::Float32(Some(v)) => PartitionValue::Float(f64::from(v)),
        ScalarValue::Utf8(Some(v)) => PartitionValue::Text(v),
        ScalarValue::Boolean(Some(v)) => PartitionValue::Bool(v),
        ScalarValue::Decimal128(Some(v), _, _) => PartitionValue::Decimal(v),
        _ => return None,
    })
}

/// Iceberg's single-value binary encoding of a column bound, as the column's type.
pub fn decode(bytes: &[u8], data_type: &DataType) -> Option<ScalarValue> {
    let le32 = || -> Option<[u8; 4]> { bytes.try_into().ok() };
    let le64 = || -> Option<[u8; 8]> { bytes.try_into().ok() };
    // A column promoted from int to long (or float to double) keeps 4-byte bounds
    // in files written before the promotion.
    let long = || match bytes.len() {
        4 => Some(i64::from(i32::from_le_bytes(le32()?))),
        8 => Some(i64::from_le_bytes(le64()?)),
        _ => None,
    };
    Some(match data_type {
        DataType::Boolean => ScalarValue::Boolean(Some(*bytes.first()? != 0)),
        DataType::Int32 => ScalarValue::Int32(Some(i32::from_le_bytes(le32()?))),
        DataType::Int64 => ScalarValue::Int64(Some(long()?)),
        DataType::Float32 => ScalarValue::Float32(Some(f32::from_le_bytes(le32()?))),
        DataType::Float64 => ScalarValue::Float64(Some(match bytes.len() {
            4 => f64::from(f32::from_le_bytes(le32()?)),
            _ => f64::from_le_bytes(le64()?),
        })),
        DataType::Date32 => ScalarValue::Date32(Some(i32::from_le_bytes(le32()?))),
        DataType::Timestamp(TimeUnit::Microsecond, tz) => {
            ScalarValue::TimestampMicrosecond(Some(long()?), tz.clone())
        }
        DataType::Utf8 => ScalarValue::Utf8(Some(std::str::from_utf8(bytes).ok()?.to_owned())),
        DataType::Decimal128(p, s) => ScalarValue::Decimal128(Some(be_i128(bytes)?), *p, *s),
        _ => return None,
    })
}

/// A big-endian two's-complement integer of up to 16 bytes.
pub fn be_i128(bytes: &[u8]) -> Option<i128> {
    if bytes.is_empty() || bytes.len() > 16 {
        return None;
    }
    let fill = if bytes[0] & 0x80 != 0 { 0xff } else { 0 };
    let mut buf = [fill; 16];
    buf[16 - bytes.len()..].copy_from_slice(bytes);
    Some(i128::from_be_bytes(buf))
}

/// Many containers' ranges, as DataFusion's pruning reads them.
pub struct Containers<'a> {
    pub schema: &'a SchemaRef,
    pub ranges: &'a [Ranges],
}

impl Containers<'_> {
    fn side(&self, column: &Column, upper: bool) -> Option<ArrayRef> {
        let data_type = self.schema.field_with_name(&column.name).ok()?.data_type();
        if !self
            .ranges
            .iter()
            .any(|r| r.columns.contains_key(&column.name))
        {
            return None;
        }
        let null = ScalarValue::try_from(data_type).ok()?;
        let values = self.ranges.iter().map(|r| {
            r.columns
                .get(&column.name)
                .and_then(|(l, u)| if upper { u.clone() } else { l.clone() })
                .filter(|v| &v.data_type() == data_type)
                .unwrap_or_else(|| null.clone())
        });
        ScalarValue::iter_to_array(values).ok()
    }
}

impl PruningStatistics for Containers<'_> {
    fn min_values(&self, column: &Column) -> Option<ArrayRef> {
        self.side(column, false)
    }

    fn max_values(&self, column: &Column) -> Option<ArrayRef> {
        self.side(column, true)
    }

    fn num_containers(&self) -> usize {
        self.ranges.len()
    }

    fn null_counts(&self, column: &Column) -> Option<ArrayRef> {
        if !self
            .ranges
            .iter()
            .any(|r| r.null_counts.contains_key(&column.name))
        {
            return None;
        }
        Some(Arc::new(UInt64Array::from_iter(
            self.ranges
                .iter()
                .map(|r| r.null_counts.get(&column.name).copied()),
        )))
    }

    fn row_counts(&self) -> Option<ArrayRef> {
        if self.ranges.iter().all(|r| r.rows.is_none()) {
            return None;
        }
        Some(Arc::new(UInt64Array::from_iter(
            self.ranges.iter().map(|r| r.rows),
        )))
    }

    fn contained(
        &self,
        _column: &Column,
        _values: &std::collections::HashSet<ScalarValue>,
    ) -> Option<BooleanArray> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_decode_as_iceberg_encodes_them() {
        assert_eq!(
            decode(&7i32.to_le_bytes(), &DataType::Int64),
            Some(ScalarValue::Int64(Some(7)))
        );
        assert_eq!(
            decode(&(-2i64).to_le_bytes(), &DataType::Int64),
            Some(ScalarValue::Int64(Some(-2)))
        );
        assert_eq!(
            decode(b"abc", &DataType::Utf8),
            Some(ScalarValue::Utf8(Some("abc".into())))
        );
        assert_eq!(
            decode(&[0xff, 0x85], &DataType::Decimal128(9, 2)),
            Some(ScalarValue::Decimal128(Some(-123), 9, 2))
        );
        assert_eq!(be_i128(&[0x01, 0x00]), Some(256));
        assert_eq!(decode(&[1, 2, 3], &DataType::Int32), None);
    }

    #[test]
    fn temporal_partitions_become_source_ranges() {
        let ts = DataType::Timestamp(TimeUnit::Microsecond, None);
        // 2024-03 is month 650 since 1970-01.
        let (low, high) = transform_range("month", &PartitionValue::Int(650), &ts).unwrap();
        let day = |y, m, d| {
            NaiveDate::from_ymd_opt(y, m, d)
                .unwrap()
                .and_hms_opt(0, 0, 0)
                .unwrap()
                .and_utc()
                .timestamp_micros()
        };
        assert_eq!(
            low,
            ScalarValue::TimestampMicrosecond(Some(day(2024, 3, 1)), None)
        );
        assert_eq!(
            high,
            ScalarValue::TimestampMicrosecond(Some(day(2024, 4, 1) - 1), None)
        );
        let (low, _) =
            transform_range("year", &PartitionValue::Int(54), &DataType::Date32).unwrap();
        assert_eq!(low, ScalarValue::Date32(Some(19723))); // 2024-01-01
        assert!(transform_range("bucket[16]", &PartitionValue::Int(3), &ts).is_none());
        let mut r = Ranges::default();
        r.narrow(
            "x",
            Some(ScalarValue::Int64(Some(1))),
            Some(ScalarValue::Int64(Some(9))),
        );
        r.narrow(
            "x",
            Some(ScalarValue::Int64(Some(3))),
            Some(ScalarValue::Int64(Some(20))),
        );
        assert_eq!(
            r.columns["x"],
            (
                Some(ScalarValue::Int64(Some(3))),
                Some(ScalarValue::Int64(Some(9)))
            )
        );
    }
}
