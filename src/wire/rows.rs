//! Arrow record batches → PostgreSQL DataRow messages, in text or binary format.
//!
//! Hot path: one [`BatchEncoder`] per batch does the type dispatch once per column;
//! each row is then written straight into the connection's output buffer with no
//! per-row or per-value allocation for the common scalar types.

use std::fmt::Write as _;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, Timelike};
use datafusion::arrow::array::*;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::*;
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};

use crate::wire::types::{PgType, pg_type};

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

/// PostgreSQL's float output (extra_float_digits ≥ 1): the shortest text that reads
/// back exactly, in exponent form when the decimal exponent is < -4 or ≥ 15 (6 for real).
pub fn write_float(out: &mut BytesMut, v: f64, is_f32: bool) {
    if v.is_nan() {
        out.extend_from_slice(b"NaN");
        return;
    }
    if v.is_infinite() {
        out.extend_from_slice(if v > 0.0 { b"Infinity" } else { b"-Infinity" });
        return;
    }
    let mut buf = ryu::Buffer::new();
    let s = if is_f32 {
        buf.format_finite(v as f32)
    } else {
        buf.format_finite(v)
    };
    let s = s.as_bytes();
    let (neg, s) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, s),
    };
    // Split ryu's output into significant digits and a decimal exponent.
    let (mantissa, exp_part) = match s.iter().position(|&b| b == b'e' || b == b'E') {
        Some(p) => (
            &s[..p],
            std::str::from_utf8(&s[p + 1..])
                .ok()
                .and_then(|e| e.parse::<i32>().ok())
                .unwrap_or(0),
        ),
        None => (s, 0),
    };
    let mut digits = [0u8; 40];
    let mut n = 0;
    let mut point = None;
    for &b in mantissa {
        if b == b'.' {
            point = Some(n);
        } else if n < digits.len() {
            digits[n] = b;
            n += 1;
        }
    }
    let int_len = point.unwrap_or(n) as i32;
    // Strip leading zeros (adjusting the exponent) and trailing zeros.
    let mut lead = 0;
    while lead < n && digits[lead] == b'0' {
        lead += 1;
    }
    if lead == n {
        out.extend_from_slice(if neg { b"-0" } else { b"0" });
        return;
    }
    let mut end = n;
    while end > lead && digits[end - 1] == b'0' {
        end -= 1;
    }
    let sig = &digits[lead..end];
    // Scientific exponent: value = d.ddd × 10^x
    let x = int_len - lead as i32 - 1 + exp_part;
    if neg {
        out.put_u8(b'-');
    }
    let max_fixed = if is_f32 { 6 } else { 15 };
    if x < -4 || x >= max_fixed {
        out.put_u8(sig[0]);
        if sig.len() > 1 {
            out.put_u8(b'.');
            out.extend_from_slice(&sig[1..]);
        }
        out.put_u8(b'e');
        out.put_u8(if x < 0 { b'-' } else { b'+' });
        let ax = x.unsigned_abs();
        if ax < 10 {
            out.put_u8(b'0');
        }
        put_int(out, ax);
    } else if x < 0 {
        out.extend_from_slice(b"0.");
        for _ in 0..(-x - 1) {
            out.put_u8(b'0');
        }
        out.extend_from_slice(sig);
    } else {
        let int_digits = (x + 1) as usize;
        if sig.len() <= int_digits {
            out.extend_from_slice(sig);
            for _ in sig.len()..int_digits {
                out.put_u8(b'0');
            }
        } else {
            out.extend_from_slice(&sig[..int_digits]);
            out.put_u8(b'.');
            out.extend_from_slice(&sig[int_digits..]);
        }
    }
}

/// Decimal digits of |v| into a stack buffer; returns the used tail.
fn abs_digits(v: i128, buf: &mut itoa::Buffer) -> &[u8] {
    buf.format(v.unsigned_abs()).as_bytes()
}

pub fn write_decimal_text(out: &mut BytesMut, v: i128, scale: i8) {
    if v < 0 {
        out.put_u8(b'-');
    }
    let mut b = itoa::Buffer::new();
    let digits = abs_digits(v, &mut b);
    if scale <= 0 {
        out.extend_from_slice(digits);
        if digits != b"0" {
            for _ in 0..(-scale as usize) {
                out.put_u8(b'0');
            }
        }
        return;
    }
    let scale = scale as usize;
    if digits.len() <= scale {
        out.extend_from_slice(b"0.");
        for _ in digits.len()..scale {
            out.put_u8(b'0');
        }
        out.extend_from_slice(digits);
    } else {
        let split = digits.len() - scale;
        out.extend_from_slice(&digits[..split]);
        out.put_u8(b'.');
        out.extend_from_slice(&digits[split..]);
    }
}

/// numeric's binary format: base-10000 digits with weight, sign and display scale.
pub fn write_numeric_binary(out: &mut BytesMut, v: i128, scale: i8) {
    let mut b = itoa::Buffer::new();
    let raw = abs_digits(v, &mut b);
    let dscale = scale.max(0) as isize;
    // A negative scale means trailing zeros that are not stored.
    let trailing_zeros = if scale < 0 { (-scale) as isize } else { 0 };
    let n = raw.len() as isize + trailing_zeros;
    let int_len = n - dscale;
    let floor_div = |a: isize| a.div_euclid(4);
    let g_hi = floor_div(int_len - 1);
    let g_lo = floor_div(-dscale);
    let mut groups = [0i16; 48];
    let count = ((g_hi - g_lo + 1) as usize).min(groups.len());
    for i in 0..n {
        let d = if i < raw.len() as isize {
            (raw[i as usize] - b'0') as i16
        } else {
            0
        };
        if d == 0 {
            continue;
        }
        let e = int_len - 1 - i;
        let g = floor_div(e);
        let place = e - 4 * g;
        let idx = (g_hi - g) as usize;
        if idx < count {
            groups[idx] += d * [1, 10, 100, 1000][place as usize];
        }
    }
    let mut weight = g_hi as i16;
    let mut start = 0;
    while start < count && groups[start] == 0 {
        start += 1;
        weight -= 1;
    }
    let mut end = count;
    while end > start && groups[end - 1] == 0 {
        end -= 1;
    }
    if start == end {
        weight = 0;
    }
    out.put_i16((end - start) as i16);
    out.put_i16(weight);
    out.put_u16(if v < 0 && start != end { 0x4000 } else { 0 });
    out.put_i16(dscale as i16);
    for g in &groups[start..end] {
        out.put_i16(*g);
    }
}

fn write_bytea_hex(out: &mut BytesMut, v: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(2 + v.len() * 2);
    out.extend_from_slice(b"\\x");
    for &b in v {
        out.put_u8(HEX[(b >> 4) as usize]);
        out.put_u8(HEX[(b & 15) as usize]);
    }
}

fn put_2(out: &mut BytesMut, v: u32) {
    out.put_u8(b'0' + (v / 10 % 10) as u8);
    out.put_u8(b'0' + (v % 10) as u8);
}

fn write_ymd(out: &mut BytesMut, d: NaiveDate) -> bool {
    let year = d.year();
    let (y, bc) = if year <= 0 {
        (1 - year, true)
    } else {
        (year, false)
    };
    if y < 1000 {
        out.extend_from_slice(
            &b"000"[..(if y < 10 {
                3
            } else if y < 100 {
                2
            } else {
                1
            })],
        );
    }
    put_int(out, y);
    out.put_u8(b'-');
    put_2(out, d.month());
    out.put_u8(b'-');
    put_2(out, d.day());
    bc
}

fn write_date(out: &mut BytesMut, days: i32) {
    match NaiveDate::from_num_days_from_ce_opt(days.saturating_add(719_163)) {
        Some(d) => {
            if write_ymd(out, d) {
                out.extend_from_slice(b" BC");
            }
        }
        None => out.extend_from_slice(if days > 0 { b"infinity" } else { b"-infinity" }),
    }
}

fn write_hms_frac(out: &mut BytesMut, h: u32, m: u32, s: u32, micros: u32) {
    put_2(out, h);
    out.put_u8(b':');
    put_2(out, m);
    out.put_u8(b':');
    put_2(out, s);
    if micros > 0 {
        out.put_u8(b'.');
        let mut frac = [b'0'; 6];
        let mut v = micros;
        for i in (0..6).rev() {
            frac[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
        let mut len = 6;
        while len > 1 && frac[len - 1] == b'0' {
            len -= 1;
        }
        out.extend_from_slice(&frac[..len]);
    }
}

fn write_naive(out: &mut BytesMut, dt: NaiveDateTime) -> bool {
    let bc = write_ymd(out, dt.date());
    out.put_u8(b' ');
    write_hms_frac(
        out,
        dt.hour(),
        dt.minute(),
        dt.second(),
        dt.nanosecond() / 1000,
    );
    bc
}

fn write_timestamp(out: &mut BytesMut, micros: i64, with_tz: bool, opts: &EncodeOptions) {
    let Some(utc) = DateTime::from_timestamp_micros(micros) else {
        out.extend_from_slice(if micros > 0 {
            b"infinity"
        } else {
            b"-infinity"
        });
        return;
    };
    if !with_tz {
        if write_naive(out, utc.naive_utc()) {
            out.extend_from_slice(b" BC");
        }
        return;
    }
    let (local, offset_secs) = match &opts.time_zone {
        Some(tz) => {
            let t = utc.with_timezone(tz);
            (
                t.naive_local(),
                chrono::Offset::fix(t.offset()).local_minus_utc(),
            )
        }
        None => (utc.naive_utc(), 0),
    };
    let bc = write_naive(out, local);
    out.put_u8(if offset_secs < 0 { b'-' } else { b'+' });
    let off = offset_secs.unsigned_abs();
    put_2(out, off / 3600);
    if off % 3600 != 0 {
        out.put_u8(b':');
        put_2(out, off % 3600 / 60);
    }
    if bc {
        out.extend_from_slice(b" BC");
    }
}

fn write_time(out: &mut BytesMut, micros: i64) {
    let micros = micros.rem_euclid(86_400_000_000) as u64;
    let secs = (micros / 1_000_000) as u32;
    write_hms_frac(
        out,
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        (micros % 1_000_000) as u32,
    );
}

/// IntervalStyle `postgres`: `1 year 2 mons 3 days 04:05:06.5`.
pub fn write_interval(out: &mut BytesMut, months: i32, days: i32, micros: i64) {
    let mut first = true;
    let mut part = |out: &mut BytesMut, v: i64, unit: &str| {
        if v == 0 {
            return;
        }
        if !first {
            out.put_u8(b' ');
        }
        first = false;
        put_int(out, v);
        out.put_u8(b' ');
        out.extend_from_slice(unit.as_bytes());
        if v != 1 {
            out.put_u8(b's');
        }
    };
    let years = months / 12;
    let mons = months % 12;
    part(out, years as i64, "year");
    part(out, mons as i64, "mon");
    part(out, days as i64, "day");
    if micros != 0 || first {
        if !first {
            out.put_u8(b' ');
        }
        if micros < 0 {
            out.put_u8(b'-');
        }
        let m = micros.unsigned_abs();
        let secs = m / 1_000_000;
        let hours = secs / 3600;
        if hours < 10 {
            out.put_u8(b'0');
        }
        put_int(out, hours);
        out.put_u8(b':');
        put_2(out, (secs / 60 % 60) as u32);
        out.put_u8(b':');
        put_2(out, (secs % 60) as u32);
        let frac = (m % 1_000_000) as u32;
        if frac > 0 {
            let mut tmp = BytesMut::new();
            write_hms_frac(&mut tmp, 0, 0, 0, frac);
            out.extend_from_slice(&tmp[8..]);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn text_of(array: ArrayRef) -> Vec<Option<String>> {
        let batch = RecordBatch::try_from_iter([("c", array)]).unwrap();
        let prepared = Prepared::new(&batch).unwrap();
        let enc = BatchEncoder::new(&prepared, batch.num_rows(), &[Format::Text]).unwrap();
        let mut res = vec![];
        for r in 0..batch.num_rows() {
            let mut out = BytesMut::new();
            enc.write_row(r, &mut out, &EncodeOptions::default());
            let len = i32::from_be_bytes(out[7..11].try_into().unwrap());
            res.push((len >= 0).then(|| String::from_utf8(out[11..].to_vec()).unwrap()));
        }
        res
    }

    fn float_text(v: f64, f32_: bool) -> String {
        let mut out = BytesMut::new();
        write_float(&mut out, v, f32_);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn floats_print_like_postgres() {
        for (v, want) in [
            (1.0, "1"),
            (-2.5, "-2.5"),
            (0.1, "0.1"),
            (1e15, "1e+15"),
            (123456789012345.0, "123456789012345"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (1e100, "1e+100"),
            (0.0, "0"),
            (f64::NAN, "NaN"),
            (f64::NEG_INFINITY, "-Infinity"),
            (12.34, "12.34"),
        ] {
            assert_eq!(float_text(v, false), want, "{v}");
        }
        assert_eq!(float_text(1e6, true), "1e+06");
        assert_eq!(float_text(0.1f32 as f64, true), "0.1");
    }

    #[test]
    fn scalars_print_like_postgres() {
        let ts = Arc::new(TimestampMicrosecondArray::from(vec![
            Some(1_700_000_000_123_000),
            None,
        ]));
        assert_eq!(
            text_of(ts),
            vec![Some("2023-11-14 22:13:20.123".into()), None]
        );
        let d = Arc::new(Date32Array::from(vec![19_000]));
        assert_eq!(text_of(d), vec![Some("2022-01-08".into())]);
        let b = Arc::new(BooleanArray::from(vec![true, false]));
        assert_eq!(text_of(b), vec![Some("t".into()), Some("f".into())]);
        let dec = Arc::new(
            Decimal128Array::from(vec![150, -5, 0])
                .with_precision_and_scale(10, 2)
                .unwrap(),
        );
        assert_eq!(
            text_of(dec),
            vec![
                Some("1.50".into()),
                Some("-0.05".into()),
                Some("0.00".into())
            ]
        );
        let bin = Arc::new(BinaryArray::from(vec![&b"\x01\xab"[..]]));
        assert_eq!(text_of(bin), vec![Some("\\x01ab".into())]);
        let tz = Arc::new(TimestampMicrosecondArray::from(vec![0]).with_timezone("UTC"));
        assert_eq!(text_of(tz), vec![Some("1970-01-01 00:00:00+00".into())]);
    }

    #[test]
    fn intervals_print_like_postgres() {
        let mut out = BytesMut::new();
        write_interval(
            &mut out,
            14,
            3,
            4 * 3_600_000_000 + 5 * 60_000_000 + 6_500_000,
        );
        assert_eq!(&out[..], b"1 year 2 mons 3 days 04:05:06.5");
        out.clear();
        write_interval(&mut out, 0, 0, 0);
        assert_eq!(&out[..], b"00:00:00");
        out.clear();
        write_interval(&mut out, 0, 1, -3_600_000_000);
        assert_eq!(&out[..], b"1 day -01:00:00");
    }

    #[test]
    fn arrays_quote_like_postgres() {
        let list = Arc::new(ListArray::from_iter_primitive::<Int32Type, _, _>(vec![
            Some(vec![Some(1), None, Some(3)]),
            Some(vec![]),
        ]));
        assert_eq!(
            text_of(list),
            vec![Some("{1,NULL,3}".into()), Some("{}".into())]
        );
        let values = StringArray::from(vec!["a b", "", "x\"y", "plain"]);
        let offsets = datafusion::arrow::buffer::OffsetBuffer::new(vec![0, 4].into());
        let l = ListArray::new(
            Arc::new(Field::new("item", DataType::Utf8, true)),
            offsets,
            Arc::new(values),
            None,
        );
        assert_eq!(
            text_of(Arc::new(l)),
            vec![Some(r#"{"a b","","x\"y",plain}"#.into())]
        );
    }

    #[test]
    fn structs_become_json() {
        let s = StructArray::from(vec![
            (
                Arc::new(Field::new("a", DataType::Int32, true)),
                Arc::new(Int32Array::from(vec![1])) as ArrayRef,
            ),
            (
                Arc::new(Field::new("b", DataType::Utf8, true)),
                Arc::new(StringArray::from(vec!["x"])) as ArrayRef,
            ),
        ]);
        assert_eq!(
            text_of(Arc::new(s)),
            vec![Some(r#"{"a":1,"b":"x"}"#.into())]
        );
    }

    fn numeric_binary(v: i128, scale: i8) -> Vec<i16> {
        let mut out = BytesMut::new();
        write_numeric_binary(&mut out, v, scale);
        out.chunks(2)
            .map(|c| i16::from_be_bytes([c[0], c[1]]))
            .collect()
    }

    #[test]
    fn numeric_binary_matches_postgres_layout() {
        // 12345.678 → ndigits 3, weight 1, +, dscale 3, digits [1, 2345, 6780]
        assert_eq!(
            numeric_binary(12_345_678, 3),
            vec![3, 1, 0, 3, 1, 2345, 6780]
        );
        // -0.05 (scale 2) → ndigits 1, weight -1, -, dscale 2, [500]
        assert_eq!(numeric_binary(-5, 2), vec![1, -1, 0x4000, 2, 500]);
        // 0 → no digits
        assert_eq!(numeric_binary(0, 2), vec![0, 0, 0, 2]);
        // 10000 (scale 0) → [1], weight 1
        assert_eq!(numeric_binary(10_000, 0), vec![1, 1, 0, 0, 1]);
    }
}
