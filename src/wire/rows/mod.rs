//! Arrow record batches → PostgreSQL DataRow messages, in text or binary format.
//!
//! Hot path: one [`BatchEncoder`] per batch does the type dispatch once per column;
//! each row is then written straight into the connection's output buffer with no
//! per-row or per-value allocation for the common scalar types.

use std::fmt::Write as _;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};

use datafusion::arrow::array::*;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::*;
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};

use crate::wire::types::{PgType, pg_type};

#[cfg(test)]
mod tests;
mod values;

use values::*;
pub use values::{write_decimal_text, write_float, write_interval, write_numeric_binary};

/// Result column format: 0 = text, 1 = binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Binary,
}

impl Format {
    pub fn code(self) -> i16 {
        match self {
            Format::Text => 0,
            Format::Binary => 1,
        }
    }

    /// Expands Bind's result-format list (none = all text, one = all the same, else per column).
    pub fn for_columns(codes: &[i16], columns: usize) -> Result<Vec<Format>, String> {
        let one = |c: i16| match c {
            0 => Ok(Format::Text),
            1 => Ok(Format::Binary),
            other => Err(format!("unsupported format code: {other}")),
        };
        match codes.len() {
            0 => Ok(vec![Format::Text; columns]),
            1 => Ok(vec![one(codes[0])?; columns]),
            n if n == columns => codes.iter().map(|&c| one(c)).collect(),
            n => Err(format!(
                "bind message has {n} result formats but query has {columns} columns"
            )),
        }
    }
}

/// Microseconds between 1970-01-01 and PostgreSQL's epoch 2000-01-01.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
/// Days between 1970-01-01 and 2000-01-01.
const PG_EPOCH_DAYS: i32 = 10_957;

/// Session settings that change how values are written.
#[derive(Debug, Clone, Default)]
pub struct EncodeOptions {
    /// The session TimeZone used to print timestamptz values; None = UTC.
    pub time_zone: Option<Tz>,
}

pub use datafusion::arrow::array::timezone::Tz;

/// Writes the RowDescription fields for a schema.
pub fn row_description(out: &mut BytesMut, schema: &Schema, formats: &[Format]) {
    crate::wire::frame::put_message(out, b'T', |b| {
        b.put_i16(schema.fields().len() as i16);
        for (i, field) in schema.fields().iter().enumerate() {
            let t: PgType = crate::wire::types::pg_type_of_field(field);
            b.extend_from_slice(field.name().as_bytes());
            b.put_u8(0);
            b.put_i32(0); // table oid
            b.put_i16(0); // column attnum
            b.put_u32(t.oid);
            b.put_i16(t.len);
            b.put_i32(t.modifier);
            b.put_i16(formats.get(i).copied().unwrap_or(Format::Text).code());
        }
    });
}

enum Col<'a> {
    Null,
    Bool(&'a BooleanArray),
    I16(&'a Int16Array),
    I32(&'a Int32Array),
    I64(&'a Int64Array),
    F32(&'a Float32Array),
    F64(&'a Float64Array),
    Dec128(&'a Decimal128Array, i8),
    Str(&'a StringArray),
    LargeStr(&'a LargeStringArray),
    StrView(&'a StringViewArray),
    Bin(&'a BinaryArray),
    LargeBin(&'a LargeBinaryArray),
    BinView(&'a BinaryViewArray),
    FixedBin(&'a FixedSizeBinaryArray),
    Date(&'a Date32Array),
    /// Timestamps in any unit, with the factor that turns them into microseconds.
    Ts(&'a dyn Array, TimeUnit, bool),
    Time(&'a Time64MicrosecondArray),
    IntervalMdn(&'a IntervalMonthDayNanoArray),
    List(ListCol<'a>),
    /// Struct and map values as JSON text, pre-rendered once per batch.
    Json(std::borrow::Cow<'a, JsonCol>),
    /// Anything else: Arrow's own display format, sent as text.
    Display(ArrayFormatter<'a>),
}

struct ListCol<'a> {
    offsets: Vec<usize>,
    element_oid: u32,
    values: Box<ColumnEncoder<'a>>,
}

#[derive(Clone)]
pub struct JsonCol {
    text: Vec<u8>,
    offsets: Vec<usize>,
}

/// Encodes one column of one batch.
pub struct ColumnEncoder<'a> {
    array: &'a dyn Array,
    col: Col<'a>,
    format: Format,
}

/// Arrays whose physical type Sluice does not write directly are cast once per batch.
fn normalize(array: &ArrayRef) -> Result<Option<ArrayRef>, ArrowError> {
    use DataType::*;
    let target = match array.data_type() {
        Int8 | UInt8 => Int16,
        UInt16 => Int32,
        UInt32 => Int64,
        UInt64 => Decimal128(20, 0),
        Float16 => Float32,
        Date64 => Date32,
        Time32(_) | Time64(TimeUnit::Nanosecond) => Time64(TimeUnit::Microsecond),
        Decimal32(p, s) | Decimal64(p, s) => Decimal128(*p, *s),
        Interval(IntervalUnit::YearMonth) | Interval(IntervalUnit::DayTime) => {
            Interval(IntervalUnit::MonthDayNano)
        }
        Dictionary(_, value) => value.as_ref().clone(),
        RunEndEncoded(_, values) => values.data_type().clone(),
        _ => return Ok(None),
    };
    cast(array, &target).map(Some)
}

/// One batch made ready for encoding: normalized arrays, and struct/map columns
/// rendered to JSON once. Encoders borrow from it (it is `Send`; they are not).
pub struct Prepared {
    pub arrays: Vec<ArrayRef>,
    json: Vec<Option<JsonCol>>,
}

impl Prepared {
    pub fn new(batch: &RecordBatch) -> Result<Prepared, ArrowError> {
        let arrays = batch
            .columns()
            .iter()
            .map(|a| Ok(normalize(a)?.unwrap_or_else(|| Arc::clone(a))))
            .collect::<Result<Vec<_>, ArrowError>>()?;
        let json = arrays
            .iter()
            .map(|a| match a.data_type() {
                DataType::Struct(_) | DataType::Map(_, _) => json_col(a).map(Some),
                _ => Ok(None),
            })
            .collect::<Result<Vec<_>, ArrowError>>()?;
        Ok(Prepared { arrays, json })
    }
}

impl<'a> ColumnEncoder<'a> {
    pub fn new(array: &'a ArrayRef, format: Format) -> Result<ColumnEncoder<'a>, ArrowError> {
        ColumnEncoder::with_json(array, format, None)
    }

    fn with_json(
        array: &'a ArrayRef,
        format: Format,
        json: Option<&'a JsonCol>,
    ) -> Result<ColumnEncoder<'a>, ArrowError> {
        let a: &'a dyn Array = array.as_ref();
        let col = match a.data_type() {
            DataType::Null => Col::Null,
            DataType::Boolean => Col::Bool(a.as_boolean()),
            DataType::Int16 => Col::I16(a.as_primitive()),
            DataType::Int32 => Col::I32(a.as_primitive()),
            DataType::Int64 => Col::I64(a.as_primitive()),
            DataType::Float32 => Col::F32(a.as_primitive()),
            DataType::Float64 => Col::F64(a.as_primitive()),
            DataType::Decimal128(_, s) => Col::Dec128(a.as_primitive(), *s),
            DataType::Utf8 => Col::Str(a.as_string()),
            DataType::LargeUtf8 => Col::LargeStr(a.as_string()),
            DataType::Utf8View => Col::StrView(a.as_string_view()),
            DataType::Binary => Col::Bin(a.as_binary()),
            DataType::LargeBinary => Col::LargeBin(a.as_binary()),
            DataType::BinaryView => Col::BinView(a.as_binary_view()),
            DataType::FixedSizeBinary(_) => Col::FixedBin(a.as_fixed_size_binary()),
            DataType::Date32 => Col::Date(a.as_primitive()),
            DataType::Timestamp(unit, tz) => Col::Ts(a, *unit, tz.is_some()),
            DataType::Time64(TimeUnit::Microsecond) => Col::Time(a.as_primitive()),
            DataType::Interval(IntervalUnit::MonthDayNano) => Col::IntervalMdn(a.as_primitive()),
            DataType::List(f) => {
                let l = a.as_list::<i32>();
                list_col(
                    l.values(),
                    l.offsets().iter().map(|&o| o as usize),
                    f,
                    format,
                )?
            }
            DataType::LargeList(f) => {
                let l = a.as_list::<i64>();
                list_col(
                    l.values(),
                    l.offsets().iter().map(|&o| o as usize),
                    f,
                    format,
                )?
            }
            DataType::FixedSizeList(f, n) => {
                let l = a.as_fixed_size_list();
                let n = *n as usize;
                list_col(l.values(), (0..=l.len()).map(|i| i * n), f, format)?
            }
            DataType::Struct(_) | DataType::Map(_, _) => Col::Json(match json {
                Some(j) => std::borrow::Cow::Borrowed(j),
                None => std::borrow::Cow::Owned(json_col(array)?),
            }),
            _ => Col::Display(ArrayFormatter::try_new(a, &FormatOptions::default())?),
        };
        Ok(ColumnEncoder {
            array: a,
            col,
            format,
        })
    }

    /// Writes one value with its 4-byte length prefix (-1 for NULL).
    #[inline]
    pub fn write(&self, row: usize, out: &mut BytesMut, opts: &EncodeOptions) {
        if self.array.is_null(row) || matches!(self.col, Col::Null) {
            out.put_i32(-1);
            return;
        }
        let len_at = out.len();
        out.put_i32(0);
        match self.format {
            Format::Text => self.write_text(row, out, opts),
            Format::Binary => self.write_binary(row, out),
        }
        let len = (out.len() - len_at - 4) as i32;
        out[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
    }

    fn write_text(&self, row: usize, out: &mut BytesMut, opts: &EncodeOptions) {
        match &self.col {
            Col::Null => {}
            Col::Bool(a) => out.put_u8(if a.value(row) { b't' } else { b'f' }),
            Col::I16(a) => put_int(out, a.value(row)),
            Col::I32(a) => put_int(out, a.value(row)),
            Col::I64(a) => put_int(out, a.value(row)),
            Col::F32(a) => write_float(out, a.value(row) as f64, true),
            Col::F64(a) => write_float(out, a.value(row), false),
            Col::Dec128(a, s) => write_decimal_text(out, a.value(row), *s),
            Col::Str(a) => out.extend_from_slice(a.value(row).as_bytes()),
            Col::LargeStr(a) => out.extend_from_slice(a.value(row).as_bytes()),
            Col::StrView(a) => out.extend_from_slice(a.value(row).as_bytes()),
            Col::Bin(a) => write_bytea_hex(out, a.value(row)),
            Col::LargeBin(a) => write_bytea_hex(out, a.value(row)),
            Col::BinView(a) => write_bytea_hex(out, a.value(row)),
            Col::FixedBin(a) => write_bytea_hex(out, a.value(row)),
            Col::Date(a) => write_date(out, a.value(row)),
            Col::Ts(a, unit, with_tz) => {
                let micros = ts_micros(*a, *unit, row);
                write_timestamp(out, micros, *with_tz, opts)
            }
            Col::Time(a) => write_time(out, a.value(row)),
            Col::IntervalMdn(a) => {
                let v = a.value(row);
                write_interval(out, v.months, v.days, v.nanoseconds / 1000)
            }
            Col::List(l) => l.write_text(row, out, opts),
            Col::Json(j) => out.extend_from_slice(&j.text[j.offsets[row]..j.offsets[row + 1]]),
            Col::Display(f) => {
                let _ = write!(BytesWriter(out), "{}", f.value(row));
            }
        }
    }

    fn write_binary(&self, row: usize, out: &mut BytesMut) {
        match &self.col {
            Col::Null => {}
            Col::Bool(a) => out.put_u8(a.value(row) as u8),
            Col::I16(a) => out.put_i16(a.value(row)),
            Col::I32(a) => out.put_i32(a.value(row)),
            Col::I64(a) => out.put_i64(a.value(row)),
            Col::F32(a) => out.put_f32(a.value(row)),
            Col::F64(a) => out.put_f64(a.value(row)),
            Col::Dec128(a, s) => write_numeric_binary(out, a.value(row), *s),
            Col::Str(a) => out.extend_from_slice(a.value(row).as_bytes()),
            Col::LargeStr(a) => out.extend_from_slice(a.value(row).as_bytes()),
            Col::StrView(a) => out.extend_from_slice(a.value(row).as_bytes()),
            Col::Bin(a) => out.extend_from_slice(a.value(row)),
            Col::LargeBin(a) => out.extend_from_slice(a.value(row)),
            Col::BinView(a) => out.extend_from_slice(a.value(row)),
            Col::FixedBin(a) => out.extend_from_slice(a.value(row)),
            Col::Date(a) => out.put_i32(a.value(row) - PG_EPOCH_DAYS),
            Col::Ts(a, unit, _) => out.put_i64(ts_micros(*a, *unit, row) - PG_EPOCH_MICROS),
            Col::Time(a) => out.put_i64(a.value(row)),
            Col::IntervalMdn(a) => {
                let v = a.value(row);
                out.put_i64(v.nanoseconds / 1000);
                out.put_i32(v.days);
                out.put_i32(v.months);
            }
            Col::List(l) => l.write_binary(row, out),
            // json's binary format is its text.
            Col::Json(j) => out.extend_from_slice(&j.text[j.offsets[row]..j.offsets[row + 1]]),
            Col::Display(f) => {
                let _ = write!(BytesWriter(out), "{}", f.value(row));
            }
        }
    }
}

fn list_col<'a>(
    values: &'a ArrayRef,
    offsets: impl Iterator<Item = usize>,
    field: &Field,
    format: Format,
) -> Result<Col<'a>, ArrowError> {
    let element_oid = pg_type(field.data_type()).oid;
    Ok(Col::List(ListCol {
        offsets: offsets.collect(),
        element_oid,
        values: Box::new(ColumnEncoder::new(values, format)?),
    }))
}

impl ListCol<'_> {
    fn write_text(&self, row: usize, out: &mut BytesMut, opts: &EncodeOptions) {
        let (start, end) = (self.offsets[row], self.offsets[row + 1]);
        out.put_u8(b'{');
        let mut scratch = BytesMut::new();
        for i in start..end {
            if i > start {
                out.put_u8(b',');
            }
            if self.values.array.is_null(i) {
                out.extend_from_slice(b"NULL");
                continue;
            }
            scratch.clear();
            self.values.write_text(i, &mut scratch, opts);
            write_array_element(out, &scratch);
        }
        out.put_u8(b'}');
    }

    fn write_binary(&self, row: usize, out: &mut BytesMut) {
        let (start, end) = (self.offsets[row], self.offsets[row + 1]);
        let has_null = (start..end).any(|i| self.values.array.is_null(i));
        if start == end {
            out.put_i32(0);
            out.put_i32(0);
            out.put_u32(self.element_oid);
            return;
        }
        out.put_i32(1);
        out.put_i32(has_null as i32);
        out.put_u32(self.element_oid);
        out.put_i32((end - start) as i32);
        out.put_i32(1);
        for i in start..end {
            self.values.write(i, out, &EncodeOptions::default());
        }
    }
}

/// Quotes an array element the way PostgreSQL's array_out does.
fn write_array_element(out: &mut BytesMut, text: &[u8]) {
    let needs_quotes = text.is_empty()
        || text.eq_ignore_ascii_case(b"NULL")
        || text.iter().any(|&b| {
            matches!(
                b,
                b'"' | b'\\' | b',' | b'{' | b'}' | b' ' | b'\t' | b'\n' | b'\r'
            )
        });
    if !needs_quotes {
        out.extend_from_slice(text);
        return;
    }
    out.put_u8(b'"');
    for &b in text {
        if b == b'"' || b == b'\\' {
            out.put_u8(b'\\');
        }
        out.put_u8(b);
    }
    out.put_u8(b'"');
}

fn json_col(array: &ArrayRef) -> Result<JsonCol, ArrowError> {
    use datafusion::arrow::json::{LineDelimitedWriter, WriterBuilder};
    let schema = Arc::new(Schema::new(vec![Field::new(
        "v",
        array.data_type().clone(),
        true,
    )]));
    let batch = RecordBatch::try_new(schema, vec![Arc::clone(array)])?;
    let mut buf = Vec::new();
    {
        let mut writer: LineDelimitedWriter<&mut Vec<u8>> = WriterBuilder::new()
            .with_explicit_nulls(true)
            .build(&mut buf);
        writer.write(&batch)?;
        writer.finish()?;
    }
    // Each line is {"v":<value>}; keep only <value>.
    let mut text = Vec::with_capacity(buf.len());
    let mut offsets = Vec::with_capacity(array.len() + 1);
    offsets.push(0);
    for line in buf.split(|&b| b == b'\n').take(array.len()) {
        let inner = line
            .strip_prefix(b"{\"v\":")
            .and_then(|l| l.strip_suffix(b"}"))
            .unwrap_or(b"null");
        text.extend_from_slice(inner);
        offsets.push(text.len());
    }
    while offsets.len() < array.len() + 1 {
        offsets.push(text.len());
    }
    Ok(JsonCol { text, offsets })
}

/// `fmt::Write` into a BytesMut.
pub struct BytesWriter<'a>(pub &'a mut BytesMut);

impl std::fmt::Write for BytesWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

#[inline]
fn put_int<I: itoa::Integer>(out: &mut BytesMut, v: I) {
    let mut b = itoa::Buffer::new();
    out.extend_from_slice(b.format(v).as_bytes());
}

fn ts_micros(a: &dyn Array, unit: TimeUnit, row: usize) -> i64 {
    match unit {
        TimeUnit::Second => a
            .as_primitive::<TimestampSecondType>()
            .value(row)
            .saturating_mul(1_000_000),
        TimeUnit::Millisecond => a
            .as_primitive::<TimestampMillisecondType>()
            .value(row)
            .saturating_mul(1000),
        TimeUnit::Microsecond => a.as_primitive::<TimestampMicrosecondType>().value(row),
        TimeUnit::Nanosecond => a
            .as_primitive::<TimestampNanosecondType>()
            .value(row)
            .div_euclid(1000),
    }
}

/// Encodes every row of a batch as DataRow messages.
pub struct BatchEncoder<'a> {
    columns: Vec<ColumnEncoder<'a>>,
    rows: usize,
}

impl<'a> BatchEncoder<'a> {
    pub fn new(
        prepared: &'a Prepared,
        rows: usize,
        formats: &[Format],
    ) -> Result<BatchEncoder<'a>, ArrowError> {
        let columns = prepared
            .arrays
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let format = formats.get(i).copied().unwrap_or(Format::Text);
                ColumnEncoder::with_json(a, format, prepared.json[i].as_ref())
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(BatchEncoder { columns, rows })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Writes row `row` as one DataRow message.
    #[inline]
    pub fn write_row(&self, row: usize, out: &mut BytesMut, opts: &EncodeOptions) {
        let start = out.len();
        out.put_u8(b'D');
        out.put_i32(0);
        out.put_i16(self.columns.len() as i16);
        for c in &self.columns {
            c.write(row, out, opts);
        }
        let len = (out.len() - start - 1) as i32;
        out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
    }
}
