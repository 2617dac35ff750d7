//! Bind parameters: the types a prepared statement reports, and decoding the values
//! a client binds (text or binary) into DataFusion scalars.

use bytes::Bytes;
use datafusion::arrow::datatypes::DataType;
use std::collections::HashMap;

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::expr::{Cast, Placeholder, TryCast};
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::scalar::ScalarValue;

use crate::error::{PgError, SqlState};
use crate::wire::types::{array_element_oid, arrow_type_for_oid, oid, pg_type, type_name};

/// One parameter's wire type and the Arrow type the plan wants.
#[derive(Debug, Clone)]
pub struct ParamType {
    pub oid: u32,
    pub arrow: Option<DataType>,
}

/// Parameter types for a planned statement, combining what the client declared in
/// Parse with what DataFusion inferred from the query.
pub fn param_types(plan: &LogicalPlan, declared: &[u32]) -> Result<Vec<ParamType>, PgError> {
    let mut inferred = plan.get_parameter_types()?;
    // `CAST($1 AS BIGINT)` types $1 as bigint in PostgreSQL; DataFusion leaves it open.
    for (id, t) in cast_hints(plan) {
        let slot = inferred.entry(id).or_insert(None);
        if slot.is_none() {
            *slot = Some(t);
        }
    }
    let max_placeholder = inferred
        .keys()
        .filter_map(|k| k.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()))
        .max()
        .unwrap_or(0);
    let count = max_placeholder.max(declared.len());
    let mut types = Vec::with_capacity(count);
    for i in 0..count {
        let declared_oid = declared.get(i).copied().unwrap_or(0);
        let arrow = inferred
            .get(&format!("${}", i + 1))
            .cloned()
            .flatten()
            .or_else(|| arrow_type_for_oid(declared_oid));
        let oid = if declared_oid != 0 {
            declared_oid
        } else {
            arrow.as_ref().map(|t| pg_type(t).oid).unwrap_or(oid::TEXT)
        };
        types.push(ParamType { oid, arrow });
    }
    Ok(types)
}

/// Placeholders that appear directly inside a CAST, with the cast's target type.
fn cast_hints(plan: &LogicalPlan) -> HashMap<String, DataType> {
    let mut hints = HashMap::new();
    let _ = plan.apply_with_subqueries(|p| {
        p.apply_expressions(|e| {
            e.apply(|e| {
                let (inner, field) = match e {
                    Expr::Cast(Cast { expr, field }) | Expr::TryCast(TryCast { expr, field }) => {
                        (expr, field)
                    }
                    _ => return Ok(TreeNodeRecursion::Continue),
                };
                if let Expr::Placeholder(Placeholder { id, field: None }) = inner.as_ref() {
                    hints
                        .entry(id.clone())
                        .or_insert_with(|| field.data_type().clone());
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    });
    hints
}

/// Decodes all bound values. `formats` follows Bind's rules (none = text, one = all).
pub fn decode_all(
    types: &[ParamType],
    formats: &[i16],
    values: &[Option<Bytes>],
) -> Result<Vec<ScalarValue>, PgError> {
    if values.len() != types.len() {
        return Err(PgError::new(
            SqlState::PROTOCOL_VIOLATION,
            format!(
                "bind message supplies {} parameters, but prepared statement requires {}",
                values.len(),
                types.len()
            ),
        ));
    }
    if formats.len() > 1 && formats.len() != values.len() {
        return Err(PgError::new(
            SqlState::PROTOCOL_VIOLATION,
            format!(
                "bind message has {} parameter formats but {} parameters",
                formats.len(),
                values.len()
            ),
        ));
    }
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let binary = match formats.len() {
                0 => false,
                1 => formats[0] == 1,
                _ => formats[i] == 1,
            };
            decode_one(i + 1, &types[i], v.as_ref(), binary)
        })
        .collect()
}

fn decode_one(
    n: usize,
    t: &ParamType,
    value: Option<&Bytes>,
    binary: bool,
) -> Result<ScalarValue, PgError> {
    let Some(bytes) = value else {
        return Ok(match &t.arrow {
            Some(dt) => ScalarValue::try_from(dt).unwrap_or(ScalarValue::Utf8(None)),
            None => ScalarValue::Utf8(None),
        });
    };
    if let Some(DataType::List(element)) = &t.arrow {
        return decode_array(n, t.oid, element.data_type(), bytes, binary);
    }
    let scalar = if binary {
        decode_binary(n, t.oid, bytes)?
    } else {
        let s = std::str::from_utf8(bytes).map_err(|_| {
            PgError::new(
                SqlState::CHARACTER_NOT_IN_REPERTOIRE,
                format!("parameter ${n} is not valid UTF-8"),
            )
        })?;
        ScalarValue::Utf8(Some(s.to_owned()))
    };
    match &t.arrow {
        Some(target) if &scalar.data_type() != target => scalar.cast_to(target).map_err(|_| {
            PgError::new(
                SqlState::INVALID_TEXT_REPRESENTATION,
                format!(
                    "invalid input syntax for type {} in parameter ${n}: \"{}\"",
                    type_name(pg_type(target).oid),
                    String::from_utf8_lossy(bytes)
                ),
            )
        }),
        _ => Ok(scalar),
    }
}

fn decode_binary(n: usize, type_oid: u32, b: &Bytes) -> Result<ScalarValue, PgError> {
    let bad = || {
        PgError::new(
            SqlState::INVALID_BINARY_REPRESENTATION,
            format!(
                "incorrect binary data format in bind parameter {n} (type {})",
                type_name(type_oid)
            ),
        )
    };
    let fixed = |len: usize| -> Result<&[u8], PgError> {
        if b.len() == len {
            Ok(&b[..])
        } else {
            Err(bad())
        }
    };
    Ok(match type_oid {
        oid::BOOL => ScalarValue::Boolean(Some(fixed(1)?[0] != 0)),
        oid::INT2 => ScalarValue::Int16(Some(i16::from_be_bytes(
            fixed(2)?.try_into().map_err(|_| bad())?,
        ))),
        oid::INT4 | oid::OID => ScalarValue::Int32(Some(i32::from_be_bytes(
            fixed(4)?.try_into().map_err(|_| bad())?,
        ))),
        oid::INT8 => ScalarValue::Int64(Some(i64::from_be_bytes(
            fixed(8)?.try_into().map_err(|_| bad())?,
        ))),
        oid::FLOAT4 => ScalarValue::Float32(Some(f32::from_be_bytes(
            fixed(4)?.try_into().map_err(|_| bad())?,
        ))),
        oid::FLOAT8 => ScalarValue::Float64(Some(f64::from_be_bytes(
            fixed(8)?.try_into().map_err(|_| bad())?,
        ))),
        oid::TEXT
        | oid::VARCHAR
        | oid::BPCHAR
        | oid::NAME
        | oid::UNKNOWN
        | oid::JSON
        | oid::CHAR => {
            ScalarValue::Utf8(Some(std::str::from_utf8(b).map_err(|_| bad())?.to_owned()))
        }
        oid::JSONB => {
            // jsonb's binary format is a version byte (1) followed by the text.
            let (&version, text) = b.split_first().ok_or_else(bad)?;
            if version != 1 {
                return Err(bad());
            }
            ScalarValue::Utf8(Some(
                std::str::from_utf8(text).map_err(|_| bad())?.to_owned(),
            ))
        }
        oid::BYTEA => ScalarValue::Binary(Some(b.to_vec())),
        oid::DATE => {
            let days = i32::from_be_bytes(fixed(4)?.try_into().map_err(|_| bad())?);
            ScalarValue::Date32(Some(days.checked_add(10_957).ok_or_else(bad)?))
        }
        oid::TIMESTAMP | oid::TIMESTAMPTZ => {
            let micros = i64::from_be_bytes(fixed(8)?.try_into().map_err(|_| bad())?);
            let unix = micros.checked_add(946_684_800_000_000).ok_or_else(bad)?;
            let tz = (type_oid == oid::TIMESTAMPTZ).then(|| "+00:00".into());
            ScalarValue::TimestampMicrosecond(Some(unix), tz)
        }
        oid::TIME => ScalarValue::Time64Microsecond(Some(i64::from_be_bytes(
            fixed(8)?.try_into().map_err(|_| bad())?,
        ))),
        oid::UUID => {
            let u = fixed(16)?;
            let hex: String = u.iter().map(|x| format!("{x:02x}")).collect();
            ScalarValue::Utf8(Some(format!(
                "{}-{}-{}-{}-{}",
                &hex[0..8],
                &hex[8..12],
                &hex[12..16],
                &hex[16..20],
                &hex[20..32]
            )))
        }
        oid::NUMERIC => decode_numeric(b).ok_or_else(bad)?,
        other => {
            return Err(PgError::new(
                SqlState::FEATURE_NOT_SUPPORTED,
                format!(
                    "binary format for parameter ${n} of type oid {other} is not supported; send it in text format"
                ),
            ));
        }
    })
}

/// An array parameter (asyncpg binds `oid[]` this way for its type lookups): the
/// binary format (dimensions, flags, element oid, then length-prefixed elements) or
/// a text literal `{a,"b c",NULL}`. One dimension only: Sluice's arrays are lists.
fn decode_array(
    n: usize,
    type_oid: u32,
    element: &DataType,
    b: &Bytes,
    binary: bool,
) -> Result<ScalarValue, PgError> {
    let bad = |why: &str| {
        PgError::new(
            if binary {
                SqlState::INVALID_BINARY_REPRESENTATION
            } else {
                SqlState::INVALID_TEXT_REPRESENTATION
            },
            format!("malformed array literal in parameter ${n}: {why}"),
        )
    };
    let mut values = Vec::new();
    if binary {
        let mut c = crate::wire::frame::Cursor::new(b, "array parameter");
        let ndims = c.i32().map_err(|_| bad("truncated"))?;
        let _flags = c.i32().map_err(|_| bad("truncated"))?;
        let element_oid = c.i32().map_err(|_| bad("truncated"))? as u32;
        if ndims > 1 {
            return Err(bad("multidimensional arrays are not supported"));
        }
        let count = if ndims == 1 {
            let len = c.i32().map_err(|_| bad("truncated"))?;
            let _lower_bound = c.i32().map_err(|_| bad("truncated"))?;
            usize::try_from(len).map_err(|_| bad("negative dimension"))?
        } else {
            0
        };
        let element_oid = array_element_oid(type_oid).unwrap_or(element_oid);
        for _ in 0..count {
            let len = c.i32().map_err(|_| bad("truncated"))?;
            if len < 0 {
                values.push(ScalarValue::try_from(element).unwrap_or(ScalarValue::Null));
                continue;
            }
            let raw = Bytes::copy_from_slice(c.take(len as usize).map_err(|_| bad("truncated"))?);
            values.push(cast_element(
                n,
                decode_binary(n, element_oid, &raw)?,
                element,
            )?);
        }
    } else {
        let text = std::str::from_utf8(b).map_err(|_| bad("not UTF-8"))?;
        for item in parse_array_literal(text).ok_or_else(|| bad(text))? {
            values.push(match item {
                None => ScalarValue::try_from(element).unwrap_or(ScalarValue::Null),
                Some(s) => cast_element(n, ScalarValue::Utf8(Some(s)), element)?,
            });
        }
    }
    Ok(ScalarValue::List(ScalarValue::new_list_nullable(
        &values, element,
    )))
}

fn cast_element(n: usize, v: ScalarValue, element: &DataType) -> Result<ScalarValue, PgError> {
    if &v.data_type() == element {
        return Ok(v);
    }
    v.cast_to(element).map_err(|_| {
        PgError::new(
            SqlState::INVALID_TEXT_REPRESENTATION,
            format!(
                "invalid input syntax for type {} in an element of parameter ${n}",
                type_name(pg_type(element).oid)
            ),
        )
    })
}

/// The elements of a one-dimensional PostgreSQL array literal; `None` for NULL.
fn parse_array_literal(text: &str) -> Option<Vec<Option<String>>> {
    let inner = text.trim().strip_prefix('{')?.strip_suffix('}')?;
    let mut items = Vec::new();
    if inner.trim().is_empty() {
        return Some(items);
    }
    let mut chars = inner.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek() == Some(&'"') {
            chars.next();
            let mut s = String::new();
            loop {
                match chars.next()? {
                    '\\' => s.push(chars.next()?),
                    '"' => break,
                    c => s.push(c),
                }
            }
            items.push(Some(s));
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
        } else {
            let mut s = String::new();
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                if c == '{' || c == '"' {
                    return None;
                }
                s.push(c);
                chars.next();
            }
            let s = s.trim();
            items.push((!s.eq_ignore_ascii_case("null")).then(|| s.to_owned()));
        }
        match chars.next() {
            None => return Some(items),
            Some(',') => {}
            Some(_) => return None,
        }
    }
}

/// numeric binary → Decimal128 (precision 38) or Float64 for NaN/Infinity.
fn decode_numeric(b: &[u8]) -> Option<ScalarValue> {
    if b.len() < 8 {
        return None;
    }
    let rd = |i: usize| i16::from_be_bytes([b[i], b[i + 1]]);
    let ndigits = rd(0);
    let weight = rd(2) as i32;
    let sign = u16::from_be_bytes([b[4], b[5]]);
    let dscale = rd(6);
    if ndigits < 0 || dscale < 0 || b.len() != 8 + 2 * ndigits as usize {
        return None;
    }
    match sign {
        0xC000 => return Some(ScalarValue::Float64(Some(f64::NAN))),
        0xD000 => return Some(ScalarValue::Float64(Some(f64::INFINITY))),
        0xF000 => return Some(ScalarValue::Float64(Some(f64::NEG_INFINITY))),
        0 | 0x4000 => {}
        _ => return None,
    }
    // value = Σ digit_i × 10000^(weight - i); scaled by 10^dscale.
    let scale = dscale as i32;
    if scale > 38 {
        return None;
    }
    let mut acc: i128 = 0;
    for i in 0..ndigits as i32 {
        let d = rd(8 + 2 * i as usize);
        if !(0..10_000).contains(&d) {
            return None;
        }
        let exp10 = 4 * (weight - i) + scale;
        if exp10 < 0 {
            // Digits beyond the display scale: drop (PostgreSQL never sends them).
            let div = 10i128.checked_pow((-exp10) as u32)?;
            acc = acc.checked_add(d as i128 / div)?;
        } else {
            let mul = 10i128.checked_pow(exp10 as u32)?;
            acc = acc.checked_add((d as i128).checked_mul(mul)?)?;
        }
    }
    if sign == 0x4000 {
        acc = -acc;
    }
    Some(ScalarValue::Decimal128(Some(acc), 38, scale as i8))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn pt(o: u32, arrow: Option<DataType>) -> ParamType {
        ParamType { oid: o, arrow }
    }

    #[test]
    fn text_params_cast_to_plan_types() {
        let v = decode_all(
            &[pt(0, Some(DataType::Int64))],
            &[],
            &[Some(Bytes::from_static(b"42"))],
        )
        .unwrap();
        assert_eq!(v, vec![ScalarValue::Int64(Some(42))]);
        let e = decode_all(
            &[pt(0, Some(DataType::Int64))],
            &[],
            &[Some(Bytes::from_static(b"x"))],
        )
        .unwrap_err();
        assert_eq!(e.code, SqlState::INVALID_TEXT_REPRESENTATION);
    }

    #[test]
    fn array_params_decode_in_both_formats() {
        let list = DataType::new_list(DataType::Int32, true);
        let want = ScalarValue::List(ScalarValue::new_list_nullable(
            &[
                ScalarValue::Int32(Some(1000)),
                ScalarValue::Int32(None),
                ScalarValue::Int32(Some(22)),
            ],
            &DataType::Int32,
        ));
        let text = decode_all(
            &[pt(oid::OID_ARRAY, Some(list.clone()))],
            &[],
            &[Some(Bytes::from_static(b"{1000, NULL,\"22\"}"))],
        )
        .unwrap();
        assert_eq!(text, vec![want.clone()]);
        // asyncpg's binary oid[]: 1 dimension, no flags, element oid 26, [3 from 1].
        let mut b = vec![];
        for x in [1i32, 0, 26, 3, 1, 4, 1000, -1, 4, 22] {
            b.extend_from_slice(&x.to_be_bytes());
        }
        let binary = decode_all(
            &[pt(oid::OID_ARRAY, Some(list.clone()))],
            &[1],
            &[Some(Bytes::from(b))],
        )
        .unwrap();
        assert_eq!(binary, vec![want]);
        let bad = decode_all(
            &[pt(oid::OID_ARRAY, Some(list.clone()))],
            &[],
            &[Some(Bytes::from_static(b"{1,{2}}"))],
        )
        .unwrap_err();
        assert_eq!(bad.code, SqlState::INVALID_TEXT_REPRESENTATION);
        let short = decode_all(
            &[pt(oid::OID_ARRAY, Some(list))],
            &[1],
            &[Some(Bytes::from_static(&[0, 0, 0, 1, 0]))],
        )
        .unwrap_err();
        assert_eq!(short.code, SqlState::INVALID_BINARY_REPRESENTATION);
        assert_eq!(parse_array_literal("{}"), Some(vec![]));
        assert_eq!(
            parse_array_literal("{\"a\\\"b\",c}"),
            Some(vec![Some("a\"b".into()), Some("c".into())])
        );
    }

    #[test]
    fn binary_params_decode_and_check_length() {
        let v = decode_all(
            &[pt(oid::INT4, Some(DataType::Int32))],
            &[1],
            &[Some(Bytes::from_static(&[0, 0, 1, 0]))],
        )
        .unwrap();
        assert_eq!(v, vec![ScalarValue::Int32(Some(256))]);
        let e = decode_all(
            &[pt(oid::INT4, None)],
            &[1],
            &[Some(Bytes::from_static(&[0, 1]))],
        )
        .unwrap_err();
        assert_eq!(e.code, SqlState::INVALID_BINARY_REPRESENTATION);
        let e = decode_all(&[pt(oid::INT4, None)], &[], &[]).unwrap_err();
        assert_eq!(e.code, SqlState::PROTOCOL_VIOLATION);
    }

    #[test]
    fn numeric_binary_decodes() {
        // 12345.678: ndigits 3, weight 1, +, dscale 3, [1, 2345, 6780]
        let b: Vec<u8> = [3i16, 1, 0, 3, 1, 2345, 6780]
            .iter()
            .flat_map(|x| x.to_be_bytes())
            .collect();
        assert_eq!(
            decode_numeric(&b),
            Some(ScalarValue::Decimal128(Some(12_345_678), 38, 3))
        );
        assert_eq!(decode_numeric(&[0, 1]), None);
    }

    #[test]
    fn nulls_take_the_plan_type() {
        let v = decode_all(&[pt(0, Some(DataType::Int32))], &[], &[None]).unwrap();
        assert_eq!(v, vec![ScalarValue::Int32(None)]);
    }
}
