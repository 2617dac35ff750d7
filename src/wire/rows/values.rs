//! Scalar values in PostgreSQL's text and binary forms: floats, decimals and
//! numerics, bytea, dates, times, timestamps, intervals. Each writes straight into
//! the output buffer.

use bytes::{BufMut, BytesMut};
use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, Timelike};

use super::{EncodeOptions, put_int};

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
pub(super) fn abs_digits(v: i128, buf: &mut itoa::Buffer) -> &[u8] {
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

pub(super) fn write_bytea_hex(out: &mut BytesMut, v: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(2 + v.len() * 2);
    out.extend_from_slice(b"\\x");
    for &b in v {
        out.put_u8(HEX[(b >> 4) as usize]);
        out.put_u8(HEX[(b & 15) as usize]);
    }
}

pub(super) fn put_2(out: &mut BytesMut, v: u32) {
    out.put_u8(b'0' + (v / 10 % 10) as u8);
    out.put_u8(b'0' + (v % 10) as u8);
}

pub(super) fn write_ymd(out: &mut BytesMut, d: NaiveDate) -> bool {
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

pub(super) fn write_date(out: &mut BytesMut, days: i32) {
    match NaiveDate::from_num_days_from_ce_opt(days.saturating_add(719_163)) {
        Some(d) => {
            if write_ymd(out, d) {
                out.extend_from_slice(b" BC");
            }
        }
        None => out.extend_from_slice(if days > 0 { b"infinity" } else { b"-infinity" }),
    }
}

pub(super) fn write_hms_frac(out: &mut BytesMut, h: u32, m: u32, s: u32, micros: u32) {
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

pub(super) fn write_naive(out: &mut BytesMut, dt: NaiveDateTime) -> bool {
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

pub(super) fn write_timestamp(
    out: &mut BytesMut,
    micros: i64,
    with_tz: bool,
    opts: &EncodeOptions,
) {
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

pub(super) fn write_time(out: &mut BytesMut, micros: i64) {
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
