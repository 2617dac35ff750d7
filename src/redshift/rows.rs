//! Reading a query's rows from an upstream session as Arrow record batches: what
//! a gateway materialized view stores when its query runs on Redshift.
//!
//! Rows arrive in text format and are gathered column by column into string
//! arrays; every `BATCH_ROWS` rows each column is cast to its Arrow type with
//! arrow's own parsers (which accept PostgreSQL's text forms: `t`/`f`, ISO dates and
//! timestamps, `NaN`/`Infinity`). The session should run with `TimeZone=UTC` and
//! `DateStyle=ISO`, which is how the gateway views (`cache::matview`) open it.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, StringBuilder};
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use postgres_protocol::message::frontend;

use super::wire::{UpstreamConn, lost, upstream_error};
use crate::error::{PgError, SqlState};

/// Field metadata key holding the upstream type OID.
pub const OID_KEY: &str = "sluice.pg_oid";

/// The upstream type OID of a field read by this module.
pub fn field_oid(field: &Field) -> Option<u32> {
    field.metadata().get(OID_KEY).and_then(|v| v.parse().ok())
}

/// Rows per record batch.
pub const BATCH_ROWS: usize = 8192;

/// The Arrow type for a PostgreSQL type OID (and type modifier).
pub fn arrow_type(oid: u32, typmod: i32) -> DataType {
    match oid {
        16 => DataType::Boolean,
        20 | 26 => DataType::Int64,
        21 => DataType::Int16,
        23 => DataType::Int32,
        700 => DataType::Float32,
        701 => DataType::Float64,
        1700 => {
            // typmod = ((precision << 16) | scale) + 4; -1 when unconstrained.
            if typmod >= 4 {
                let m = typmod - 4;
                let (precision, scale) = ((m >> 16) & 0xffff, m & 0xffff);
                if (1..=38).contains(&precision) && scale <= precision {
                    return DataType::Decimal128(precision as u8, scale as i8);
                }
            }
            // Unconstrained numeric (sums, averages): no fixed scale to store it with.
            DataType::Float64
        }
        1082 => DataType::Date32,
        1083 => DataType::Time64(TimeUnit::Microsecond),
        1114 => DataType::Timestamp(TimeUnit::Microsecond, None),
        1184 => DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
        // text, varchar, bpchar, name, char, json, uuid, interval, arrays, …
        _ => DataType::Utf8,
    }
}

/// Where [`query_batches`] delivers record batches.
pub trait BatchSink: Send {
    fn accept(
        &mut self,
        batch: RecordBatch,
    ) -> impl std::future::Future<Output = Result<(), PgError>> + Send;
}

/// Runs one statement on `conn` and hands its rows to `sink` batch by batch; returns
/// the result schema. An upstream error is returned with the upstream's SQLSTATE.
/// The connection is left ready for the next query (ReadyForQuery consumed).
pub async fn query_batches(
    conn: &mut UpstreamConn,
    sql: &str,
    sink: &mut impl BatchSink,
) -> Result<SchemaRef, PgError> {
    // The extended protocol: exactly one statement runs (text with `;` and a second
    // statement is refused by the upstream), and results come in text format.
    frontend::parse("", sql, std::iter::empty(), &mut conn.out).map_err(lost)?;
    frontend::bind(
        "",
        "",
        std::iter::empty(),
        std::iter::empty::<Option<&[u8]>>(),
        |_, _| Ok(postgres_protocol::IsNull::Yes),
        std::iter::empty(),
        &mut conn.out,
    )
    .map_err(|_| lost(std::io::Error::other("cannot encode Bind")))?;
    frontend::describe(b'P', "", &mut conn.out).map_err(lost)?;
    frontend::execute("", 0, &mut conn.out).map_err(lost)?;
    frontend::sync(&mut conn.out);
    conn.flush().await.map_err(lost)?;
    let mut columns: Option<Columns> = None;
    let mut failure: Option<PgError> = None;
    loop {
        let (tag, len) = conn.read_message().await.map_err(lost)?;
        let body = &conn.message(len)[5..];
        match tag {
            b'T' if failure.is_none() => {
                if columns.is_some() {
                    failure = Some(PgError::new(
                        SqlState::FEATURE_NOT_SUPPORTED,
                        "the view query must be a single SELECT",
                    ));
                } else {
                    match Columns::from_row_description(body) {
                        Ok(c) => columns = Some(c),
                        Err(e) => failure = Some(e),
                    }
                }
            }
            b'D' if failure.is_none() => {
                if let Some(c) = columns.as_mut()
                    && let Err(e) = c.push_row(body)
                {
                    failure = Some(e);
                }
                if let Some(c) = columns.as_mut()
                    && c.rows >= BATCH_ROWS
                    && failure.is_none()
                {
                    let batch = c.take_batch();
                    conn.consume(len);
                    match batch {
                        Ok(b) => {
                            // A sink that stops (its reader went away) stops the read;
                            // the session is mid-result and must not be reused.
                            sink.accept(b).await?;
                        }
                        Err(e) => failure = Some(e),
                    }
                    continue;
                }
            }
            b'E' if failure.is_none() => {
                failure = Some(upstream_error(body, "Redshift refused the view query"));
            }
            b'Z' => {
                conn.status = body.first().copied().unwrap_or(b'I');
                conn.consume(len);
                break;
            }
            _ => {}
        }
        conn.consume(len);
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let Some(mut c) = columns else {
        return Err(PgError::new(
            SqlState::FEATURE_NOT_SUPPORTED,
            "the view query returned no rows description: it must be a SELECT",
        ));
    };
    if c.rows > 0 {
        let batch = c.take_batch()?;
        sink.accept(batch).await?;
    }
    Ok(c.schema)
}

/// Text values of the current batch, column by column.
struct Columns {
    schema: SchemaRef,
    builders: Vec<StringBuilder>,
    rows: usize,
}

impl Columns {
    fn from_row_description(body: &[u8]) -> Result<Columns, PgError> {
        let bad = || PgError::new(SqlState::PROTOCOL_VIOLATION, "malformed RowDescription");
        let count = u16::from_be_bytes([
            *body.first().ok_or_else(bad)?,
            *body.get(1).ok_or_else(bad)?,
        ]);
        let mut rest = &body[2..];
        let mut fields = Vec::with_capacity(count as usize);
        let mut seen = std::collections::HashSet::new();
        for i in 0..count {
            let nul = rest.iter().position(|b| *b == 0).ok_or_else(bad)?;
            let mut name = String::from_utf8_lossy(&rest[..nul]).into_owned();
            rest = &rest[nul + 1..];
            if rest.len() < 18 {
                return Err(bad());
            }
            let oid = u32::from_be_bytes([rest[6], rest[7], rest[8], rest[9]]);
            let typmod = i32::from_be_bytes([rest[12], rest[13], rest[14], rest[15]]);
            rest = &rest[18..];
            // Parquet and DataFusion need distinct names (`?column?` twice is legal SQL).
            if !seen.insert(name.clone()) {
                name = format!("{name}_{}", i + 1);
                seen.insert(name.clone());
            }
            // The upstream type travels with the field: cross-engine pushdown
            // decides by it (text and bpchar both read as Utf8 but compare apart).
            fields.push(
                Field::new(name, arrow_type(oid, typmod), true).with_metadata(
                    std::collections::HashMap::from([(OID_KEY.to_owned(), oid.to_string())]),
                ),
            );
        }
        let builders = fields
            .iter()
            .map(|_| StringBuilder::with_capacity(BATCH_ROWS, BATCH_ROWS * 8))
            .collect();
        Ok(Columns {
            schema: Arc::new(Schema::new(fields)),
            builders,
            rows: 0,
        })
    }

    fn push_row(&mut self, body: &[u8]) -> Result<(), PgError> {
        let bad = || PgError::new(SqlState::PROTOCOL_VIOLATION, "malformed DataRow");
        if body.len() < 2 {
            return Err(bad());
        }
        let count = u16::from_be_bytes([body[0], body[1]]) as usize;
        if count != self.builders.len() {
            return Err(bad());
        }
        let mut rest = &body[2..];
        for b in self.builders.iter_mut() {
            if rest.len() < 4 {
                return Err(bad());
            }
            let len = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
            rest = &rest[4..];
            if len < 0 {
                b.append_null();
                continue;
            }
            let len = len as usize;
            let value = rest.get(..len).ok_or_else(bad)?;
            let text = std::str::from_utf8(value).map_err(|_| {
                PgError::new(
                    SqlState::CHARACTER_NOT_IN_REPERTOIRE,
                    "the upstream sent a value that is not UTF-8",
                )
            })?;
            b.append_value(text);
            rest = &rest[len..];
        }
        self.rows += 1;
        Ok(())
    }

    /// Casts the gathered text to the column types and starts a new batch.
    fn take_batch(&mut self) -> Result<RecordBatch, PgError> {
        let options = CastOptions {
            safe: false,
            ..Default::default()
        };
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(self.builders.len());
        for (b, field) in self.builders.iter_mut().zip(self.schema.fields()) {
            let text: ArrayRef = Arc::new(b.finish());
            let array = if field.data_type() == &DataType::Utf8 {
                text
            } else {
                let text = normalize_offsets(&text, field.data_type());
                cast_with_options(&text, field.data_type(), &options).map_err(|e| {
                    PgError::new(
                        SqlState::INVALID_TEXT_REPRESENTATION,
                        format!(
                            "cannot store column \"{}\" as {}: {e}",
                            field.name(),
                            field.data_type()
                        ),
                    )
                })?
            };
            arrays.push(array);
        }
        self.rows = 0;
        RecordBatch::try_new(self.schema.clone(), arrays).map_err(|e| {
            PgError::new(
                SqlState::INTERNAL_ERROR,
                format!("cannot build a batch: {e}"),
            )
        })
    }
}

/// PostgreSQL writes UTC offsets as `+00` (hours only); arrow's timestamp parser
/// wants `+00:00`.
fn normalize_offsets(text: &ArrayRef, target: &DataType) -> ArrayRef {
    use datafusion::arrow::array::AsArray;
    if !matches!(target, DataType::Timestamp(_, Some(_))) {
        return text.clone();
    }
    let strings = text.as_string::<i32>();
    let fixed: datafusion::arrow::array::StringArray = strings
        .iter()
        .map(|v| {
            v.map(|s| {
                let b = s.as_bytes();
                let n = b.len();
                if n >= 3
                    && (b[n - 3] == b'+' || b[n - 3] == b'-')
                    && b[n - 2].is_ascii_digit()
                    && b[n - 1].is_ascii_digit()
                {
                    format!("{s}:00")
                } else {
                    s.to_owned()
                }
            })
        })
        .collect();
    Arc::new(fixed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::{Int32Type, TimestampMicrosecondType};

    #[test]
    fn types_follow_oids_and_typmods() {
        assert_eq!(arrow_type(23, -1), DataType::Int32);
        assert_eq!(
            arrow_type(1700, ((12 << 16) | 2) + 4),
            DataType::Decimal128(12, 2)
        );
        assert_eq!(arrow_type(1700, -1), DataType::Float64);
        assert_eq!(arrow_type(1043, 68), DataType::Utf8);
        assert_eq!(arrow_type(3802, -1), DataType::Utf8);
    }

    fn row_description(fields: &[(&str, u32, i32)]) -> Vec<u8> {
        let mut b = (fields.len() as u16).to_be_bytes().to_vec();
        for (name, oid, typmod) in fields {
            b.extend_from_slice(name.as_bytes());
            b.push(0);
            b.extend_from_slice(&0u32.to_be_bytes());
            b.extend_from_slice(&0u16.to_be_bytes());
            b.extend_from_slice(&oid.to_be_bytes());
            b.extend_from_slice(&0i16.to_be_bytes());
            b.extend_from_slice(&typmod.to_be_bytes());
            b.extend_from_slice(&0u16.to_be_bytes());
        }
        b
    }

    fn data_row(values: &[Option<&str>]) -> Vec<u8> {
        let mut b = (values.len() as u16).to_be_bytes().to_vec();
        for v in values {
            match v {
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(s) => {
                    b.extend_from_slice(&(s.len() as i32).to_be_bytes());
                    b.extend_from_slice(s.as_bytes());
                }
            }
        }
        b
    }

    #[test]
    fn postgres_text_values_become_typed_columns() {
        let mut c = Columns::from_row_description(&row_description(&[
            ("id", 23, -1),
            ("ok", 16, -1),
            ("amount", 1700, ((10 << 16) | 2) + 4),
            ("at", 1184, -1),
            ("day", 1082, -1),
            ("id", 25, -1),
        ]))
        .unwrap();
        c.push_row(&data_row(&[
            Some("7"),
            Some("t"),
            Some("12.50"),
            Some("2024-03-01 10:00:00+00"),
            Some("2024-03-01"),
            Some("x"),
        ]))
        .unwrap();
        c.push_row(&data_row(&[None, Some("f"), None, None, None, None]))
            .unwrap();
        let batch = c.take_batch().unwrap();
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(batch.schema().field(5).name(), "id_6");
        assert_eq!(batch.column(0).as_primitive::<Int32Type>().value(0), 7);
        assert_eq!(
            batch
                .column(3)
                .as_primitive::<TimestampMicrosecondType>()
                .value(0),
            1_709_287_200_000_000
        );
        assert!(batch.column(0).is_null(1));
        let bad = c.push_row(&data_row(&[Some("x"), None, None, None, None, None]));
        assert!(bad.is_ok());
        let e = c.take_batch().unwrap_err();
        assert_eq!(e.code, SqlState::INVALID_TEXT_REPRESENTATION);
        assert!(
            c.push_row(&data_row(&[Some("1")])).is_err(),
            "column count checked"
        );
    }
}
