//! Arrow ↔ PostgreSQL type mapping: which PostgreSQL type a column is reported as.

use datafusion::arrow::datatypes::{DataType, Field, TimeUnit};

/// PostgreSQL type OIDs Sluice reports or accepts.
pub mod oid {
    pub const BOOL: u32 = 16;
    pub const BYTEA: u32 = 17;
    pub const CHAR: u32 = 18;
    pub const NAME: u32 = 19;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
    pub const OID: u32 = 26;
    pub const JSON: u32 = 114;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const UNKNOWN: u32 = 705;
    pub const BPCHAR: u32 = 1042;
    pub const VARCHAR: u32 = 1043;
    pub const DATE: u32 = 1082;
    pub const TIME: u32 = 1083;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const INTERVAL: u32 = 1186;
    pub const NUMERIC: u32 = 1700;
    pub const UUID: u32 = 2950;
    pub const JSONB: u32 = 3802;

    pub const BOOL_ARRAY: u32 = 1000;
    pub const BYTEA_ARRAY: u32 = 1001;
    pub const INT2_ARRAY: u32 = 1005;
    pub const INT4_ARRAY: u32 = 1007;
    pub const TEXT_ARRAY: u32 = 1009;
    pub const INT8_ARRAY: u32 = 1016;
    pub const FLOAT4_ARRAY: u32 = 1021;
    pub const FLOAT8_ARRAY: u32 = 1022;
    pub const TIMESTAMP_ARRAY: u32 = 1115;
    pub const DATE_ARRAY: u32 = 1182;
    pub const TIME_ARRAY: u32 = 1183;
    pub const TIMESTAMPTZ_ARRAY: u32 = 1185;
    pub const INTERVAL_ARRAY: u32 = 1187;
    pub const NUMERIC_ARRAY: u32 = 1231;
    pub const JSON_ARRAY: u32 = 199;
    pub const OID_ARRAY: u32 = 1028;
    pub const VARCHAR_ARRAY: u32 = 1015;
    pub const NAME_ARRAY: u32 = 1003;
}

/// The element type of a PostgreSQL array type (for decoding array parameters).
pub fn array_element_oid(array_oid: u32) -> Option<u32> {
    Some(match array_oid {
        oid::BOOL_ARRAY => oid::BOOL,
        oid::INT2_ARRAY => oid::INT2,
        oid::INT4_ARRAY => oid::INT4,
        oid::INT8_ARRAY => oid::INT8,
        oid::OID_ARRAY => oid::OID,
        oid::TEXT_ARRAY => oid::TEXT,
        oid::VARCHAR_ARRAY => oid::VARCHAR,
        oid::NAME_ARRAY => oid::NAME,
        oid::FLOAT4_ARRAY => oid::FLOAT4,
        oid::FLOAT8_ARRAY => oid::FLOAT8,
        oid::NUMERIC_ARRAY => oid::NUMERIC,
        oid::DATE_ARRAY => oid::DATE,
        oid::TIMESTAMP_ARRAY => oid::TIMESTAMP,
        oid::TIMESTAMPTZ_ARRAY => oid::TIMESTAMPTZ,
        _ => return None,
    })
}

/// How a column is described in RowDescription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PgType {
    pub oid: u32,
    /// `pg_type.typlen`: fixed width in bytes, or -1 for variable length.
    pub len: i16,
    /// Type modifier, e.g. numeric precision/scale; -1 when none.
    pub modifier: i32,
}

impl PgType {
    const fn new(oid: u32, len: i16) -> PgType {
        PgType {
            oid,
            len,
            modifier: -1,
        }
    }
}

/// Field metadata naming the PostgreSQL type oid a column is reported as, where the
/// Arrow type alone would say otherwise (see `pg_compat::KnownQuery`).
pub const PG_OID_METADATA: &str = "sluice.pg_type_oid";

/// The PostgreSQL type a column is described as: its metadata's oid if set, else
/// the mapping of its Arrow type.
pub fn pg_type_of_field(field: &Field) -> PgType {
    let mapped = pg_type(field.data_type());
    match field
        .metadata()
        .get(PG_OID_METADATA)
        .and_then(|o| o.parse::<u32>().ok())
    {
        Some(oid) => PgType { oid, ..mapped },
        None => mapped,
    }
}

/// `schema` with the named columns described as the given PostgreSQL types.
pub fn with_column_oids(
    schema: &datafusion::arrow::datatypes::SchemaRef,
    oids: &[(&str, u32)],
) -> datafusion::arrow::datatypes::SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match oids.iter().find(|(n, _)| *n == f.name()) {
            Some((_, oid)) => {
                let mut metadata = f.metadata().clone();
                metadata.insert(PG_OID_METADATA.to_owned(), oid.to_string());
                f.as_ref().clone().with_metadata(metadata)
            }
            None => f.as_ref().clone(),
        })
        .collect();
    std::sync::Arc::new(datafusion::arrow::datatypes::Schema::new_with_metadata(
        fields,
        schema.metadata().clone(),
    ))
}

/// The PostgreSQL type a value of this Arrow type is sent as.
pub fn pg_type(dt: &DataType) -> PgType {
    use DataType::*;
    match dt {
        Boolean => PgType::new(oid::BOOL, 1),
        Int8 | Int16 | UInt8 => PgType::new(oid::INT2, 2),
        Int32 | UInt16 => PgType::new(oid::INT4, 4),
        Int64 | UInt32 => PgType::new(oid::INT8, 8),
        UInt64 => PgType::new(oid::NUMERIC, -1),
        Float16 | Float32 => PgType::new(oid::FLOAT4, 4),
        Float64 => PgType::new(oid::FLOAT8, 8),
        Decimal32(p, s) | Decimal64(p, s) | Decimal128(p, s) | Decimal256(p, s) => PgType {
            oid: oid::NUMERIC,
            len: -1,
            modifier: if *s >= 0 {
                ((*p as i32) << 16 | (*s as i32)) + 4
            } else {
                -1
            },
        },
        Utf8 | LargeUtf8 | Utf8View => PgType::new(oid::TEXT, -1),
        Binary | LargeBinary | BinaryView | FixedSizeBinary(_) => PgType::new(oid::BYTEA, -1),
        Date32 | Date64 => PgType::new(oid::DATE, 4),
        Time32(_) | Time64(_) => PgType::new(oid::TIME, 8),
        Timestamp(_, None) => PgType::new(oid::TIMESTAMP, 8),
        Timestamp(_, Some(_)) => PgType::new(oid::TIMESTAMPTZ, 8),
        Interval(_) | Duration(_) => PgType::new(oid::INTERVAL, 16),
        List(f) | LargeList(f) | FixedSizeList(f, _) | ListView(f) | LargeListView(f) => {
            PgType::new(array_oid(f), -1)
        }
        Struct(_) | Map(_, _) => PgType::new(oid::JSON, -1),
        Dictionary(_, value) => pg_type(value),
        RunEndEncoded(_, values) => pg_type(values.data_type()),
        _ => PgType::new(oid::TEXT, -1),
    }
}

fn array_oid(element: &Field) -> u32 {
    match pg_type(element.data_type()).oid {
        oid::BOOL => oid::BOOL_ARRAY,
        oid::BYTEA => oid::BYTEA_ARRAY,
        oid::INT2 => oid::INT2_ARRAY,
        oid::INT4 => oid::INT4_ARRAY,
        oid::INT8 => oid::INT8_ARRAY,
        oid::FLOAT4 => oid::FLOAT4_ARRAY,
        oid::FLOAT8 => oid::FLOAT8_ARRAY,
        oid::NUMERIC => oid::NUMERIC_ARRAY,
        oid::DATE => oid::DATE_ARRAY,
        oid::TIME => oid::TIME_ARRAY,
        oid::TIMESTAMP => oid::TIMESTAMP_ARRAY,
        oid::TIMESTAMPTZ => oid::TIMESTAMPTZ_ARRAY,
        oid::INTERVAL => oid::INTERVAL_ARRAY,
        oid::JSON => oid::JSON_ARRAY,
        // Nested arrays and anything else travel as text[] of their text form.
        _ => oid::TEXT_ARRAY,
    }
}

/// The Arrow type a parameter of this PostgreSQL type decodes to, when the plan does not say.
pub fn arrow_type_for_oid(type_oid: u32) -> Option<DataType> {
    Some(match type_oid {
        oid::BOOL => DataType::Boolean,
        oid::INT2 => DataType::Int16,
        oid::INT4 | oid::OID => DataType::Int32,
        oid::INT8 => DataType::Int64,
        oid::FLOAT4 => DataType::Float32,
        oid::FLOAT8 => DataType::Float64,
        oid::TEXT
        | oid::VARCHAR
        | oid::BPCHAR
        | oid::NAME
        | oid::UNKNOWN
        | oid::CHAR
        | oid::JSON
        | oid::JSONB
        | oid::UUID => DataType::Utf8,
        oid::BYTEA => DataType::Binary,
        oid::DATE => DataType::Date32,
        oid::TIMESTAMP => DataType::Timestamp(TimeUnit::Microsecond, None),
        oid::TIMESTAMPTZ => DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
        oid::TIME => DataType::Time64(TimeUnit::Microsecond),
        oid::NUMERIC => DataType::Decimal128(38, 10),
        _ => return None,
    })
}

/// The PostgreSQL name of a type OID, for messages.
pub fn type_name(type_oid: u32) -> &'static str {
    match type_oid {
        oid::BOOL => "boolean",
        oid::BYTEA => "bytea",
        oid::INT2 => "smallint",
        oid::INT4 => "integer",
        oid::INT8 => "bigint",
        oid::TEXT => "text",
        oid::VARCHAR => "character varying",
        oid::FLOAT4 => "real",
        oid::FLOAT8 => "double precision",
        oid::NUMERIC => "numeric",
        oid::DATE => "date",
        oid::TIME => "time without time zone",
        oid::TIMESTAMP => "timestamp without time zone",
        oid::TIMESTAMPTZ => "timestamp with time zone",
        oid::INTERVAL => "interval",
        oid::JSON => "json",
        oid::JSONB => "jsonb",
        oid::UUID => "uuid",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn common_types_map_like_postgres() {
        assert_eq!(pg_type(&DataType::Int64).oid, oid::INT8);
        assert_eq!(pg_type(&DataType::Utf8View).oid, oid::TEXT);
        assert_eq!(
            pg_type(&DataType::Timestamp(
                TimeUnit::Nanosecond,
                Some("UTC".into())
            ))
            .oid,
            oid::TIMESTAMPTZ
        );
        let numeric = pg_type(&DataType::Decimal128(10, 2));
        assert_eq!(
            (numeric.oid, numeric.modifier),
            (oid::NUMERIC, (10 << 16 | 2) + 4)
        );
        let list = DataType::List(Arc::new(Field::new("item", DataType::Int32, true)));
        assert_eq!(pg_type(&list).oid, oid::INT4_ARRAY);
        let dict = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
        assert_eq!(pg_type(&dict).oid, oid::TEXT);
    }
}
