//! Seed corpora, encoded by pgwire's frontend encoders (an implementation other
//! than the decoders under test) where it has one, by hand otherwise; and the
//! grammar tokens the mutator splices in.

use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::{Bytes, BytesMut};
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use pgwire::messages::Message;
use pgwire::messages::cancel::CancelRequest;
use pgwire::messages::copy::{CopyData, CopyDone, CopyFail};
use pgwire::messages::extendedquery::{Bind, Close, Describe, Execute, Flush, Parse, Sync};
use pgwire::messages::simplequery::Query;
use pgwire::messages::startup::{
    GssEncRequest, Password, SASLInitialResponse, SASLResponse, SecretKey, SslRequest, Startup,
};

use crate::engine::params::ParamType;
use crate::wire::types::{arrow_type_for_oid, oid};

fn enc<M: Message>(m: &M) -> Vec<u8> {
    let mut b = BytesMut::new();
    m.encode(&mut b).expect("seed encodes");
    b.to_vec()
}

/// A hand-built tagged message, for the types pgwire has no frontend encoder for.
fn tagged(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn startup_with(minor: u16, params: &[(&str, &str)]) -> Vec<u8> {
    let mut s = Startup::new();
    s.protocol_number_minor = minor;
    for (k, v) in params {
        s.parameters.insert(k.to_string(), v.to_string());
    }
    enc(&s)
}

pub const STARTUP_DICT: &[&[u8]] = &[
    b"user\0",
    b"database\0",
    b"options\0",
    b"client_protocol_version\0",
    b"driver_version\0Redshift JDBC Driver 2.1\0",
    b"idp_type\0",
    b"token_type\0",
    b"provider_name\0",
    b"_pq_.",
    b"replication\0",
    b"\0\0",
    b"\x04\xd2\x16\x2e",
    b"\x04\xd2\x16\x2f",
    b"\x04\xd2\x16\x30",
    b"\0\x03\0\0",
    b"\0\x03\0\x02",
    "é".as_bytes(),
    b"\xc3\x28",
];

pub fn startup() -> Vec<Vec<u8>> {
    let user = [("user", "demo"), ("database", "sluice")];
    let psql = [
        ("user", "demo"),
        ("database", "sluice"),
        ("application_name", "psql"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("options", "-c search_path=nyc -c statement_timeout=5s"),
    ];
    let jdbc_azure = [
        ("user", "alice@example.com"),
        ("database", "dev"),
        ("client_protocol_version", "2"),
        ("driver_version", "Redshift JDBC Driver 2.1.0.30"),
        ("application_name", "DBeaver"),
        (
            "plugin_name",
            "com.amazon.redshift.plugin.BrowserAzureOAuth2CredentialsProvider",
        ),
        ("idp_type", "AzureAD"),
        ("provider_name", "azure-prod"),
        ("token_type", "ACCESS_TOKEN"),
    ];
    let python_idc = [
        ("user", ""),
        ("database", "dev"),
        ("client_protocol_version", "2"),
        ("driver_version", "Redshift Python Driver 2.1.1"),
        ("os_version", "Linux-6.1"),
        ("idp_type", "AwsIdc"),
        ("token_type", "EXT_JWT"),
    ];
    let odbc = [
        ("user", "bob"),
        ("database", "sluice"),
        ("client_protocol_version", "1"),
        ("driver_version", "Redshift ODBC Driver 2.0.1.0"),
        ("application_name", "Tableau"),
    ];
    let mut seeds = vec![
        startup_with(0, &user),
        startup_with(0, &psql),
        startup_with(0, &jdbc_azure),
        startup_with(0, &python_idc),
        startup_with(0, &odbc),
        startup_with(2, &[("user", "demo"), ("_pq_.compression", "on")]),
        startup_with(0, &[("user", "demo"), ("replication", "database")]),
        startup_with(0, &[]),
        enc(&CancelRequest::new(4242, SecretKey::I32(-7))),
        enc(&CancelRequest::new(
            1,
            SecretKey::Bytes(Bytes::from(vec![9; 32])),
        )),
    ];
    let mut ssl = enc(&SslRequest::new());
    ssl.extend(startup_with(0, &user));
    seeds.push(ssl);
    let mut gss = enc(&GssEncRequest::new());
    gss.extend(enc(&SslRequest::new()));
    gss.extend(startup_with(0, &psql));
    seeds.push(gss);
    // Protocol 2.0: a version number and a fixed-size body.
    let mut v2 = vec![0, 0, 0, 16, 0, 2, 0, 0];
    v2.extend_from_slice(b"demo\0\0\0\0");
    seeds.push(v2);
    seeds
}

pub const FRAME_DICT: &[&[u8]] = &[
    b"\0",
    b"\xff\xff\xff\xff",
    b"\0\x01\0\x01",
    b"\x7f\xff",
    b"\x80\0",
    b"SCRAM-SHA-256\0",
    b"SELECT $1\0",
    b"S\0\0\0\x04",
    b"H\0\0\0\x04",
    "ü".as_bytes(),
    b"\xf0\x9f",
];

fn bind(portal: &str, statement: &str, formats: &[i16], values: &[Option<&[u8]>]) -> Bind {
    let values = values
        .iter()
        .map(|v| v.map(Bytes::copy_from_slice))
        .collect();
    Bind::new(
        Some(portal.into()),
        Some(statement.into()),
        formats.to_vec(),
        values,
        vec![1],
    )
}

pub fn frames() -> Vec<Vec<u8>> {
    let int8 = 42i64.to_be_bytes();
    let parse = Parse::new(
        Some("s1".into()),
        "SELECT $1::int8, $2".into(),
        vec![oid::INT8, oid::TEXT],
    );
    let bound = bind("p1", "s1", &[1, 0], &[Some(&int8), None]);
    let mut pipeline = enc(&parse);
    pipeline.extend(enc(&bound));
    pipeline.extend(enc(&Describe::new(b'P', Some("p1".into()))));
    pipeline.extend(enc(&Execute::new(Some("p1".into()), 0)));
    pipeline.extend(enc(&Sync::new()));
    let mut copy = enc(&CopyData::new(Bytes::from_static(b"1\tone\n")));
    copy.extend(enc(&CopyDone::new()));
    copy.extend(enc(&Sync::new()));
    vec![
        enc(&Query::new("SELECT count(*) FROM nyc.zones".into())),
        enc(&Query::new("BEGIN; SELECT 1; COMMIT".into())),
        enc(&Parse::new(None, "SELECT 1".into(), vec![])),
        enc(&parse),
        enc(&bound),
        pipeline,
        enc(&Describe::new(b'S', Some("s1".into()))),
        enc(&Execute::new(None, 100)),
        enc(&Close::new(b'S', Some("s1".into()))),
        enc(&Close::new(b'P', None)),
        enc(&Flush::new()),
        copy,
        enc(&CopyFail::new("client gave up".into())),
        enc(&Password::new("hunter2".into())),
        enc(&Password::new(
            "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln".into(),
        )),
        enc(&SASLInitialResponse::new(
            "SCRAM-SHA-256".into(),
            Some(Bytes::from_static(b"n,,n=,r=abc")),
        )),
        enc(&SASLResponse::new(Bytes::from_static(
            b"c=biws,r=abc,p=xyz",
        ))),
        // Redshift's IdP token message ('i'), with and without the trailing NUL.
        tagged(b'i', b"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln\0"),
        tagged(b'i', b"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"),
        // FunctionCall and Terminate, which pgwire does not encode for a client.
        tagged(b'F', &[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]),
        tagged(b'X', b""),
    ]
}

pub const SASL_DICT: &[&[u8]] = &[
    b"SCRAM-SHA-256\0",
    b"SCRAM-SHA-256-PLUS\0",
    b"n,,",
    b"y,,",
    b"p=tls-server-end-point,,",
    b"r=",
    b",r=@@",
    b"c=biws",
    b",p=!!",
    b"m=",
    b"a=",
    b"==",
];

fn sasl_pair(mechanism: &str, first: &str, last: &str) -> Vec<u8> {
    let mut v = enc(&SASLInitialResponse::new(
        mechanism.into(),
        Some(Bytes::copy_from_slice(first.as_bytes())),
    ));
    v.extend(enc(&SASLResponse::new(Bytes::copy_from_slice(
        last.as_bytes(),
    ))));
    v
}

pub fn sasl() -> Vec<Vec<u8>> {
    let mut plus_header = b"p=tls-server-end-point,,".to_vec();
    plus_header.extend_from_slice(&super::sasl::BINDING);
    let plus_final = format!("c={},r=@@,p=!!", B64.encode(plus_header));
    let wrong = format!("c=biws,r=@@,p={}", B64.encode([0u8; 32]));
    vec![
        sasl_pair(
            "SCRAM-SHA-256",
            "n,,n=,r=fyko+d2lbbFgONRv9qkxdawL",
            "c=biws,r=@@,p=!!",
        ),
        sasl_pair("SCRAM-SHA-256", "n,,n=,r=abc", &wrong),
        sasl_pair("SCRAM-SHA-256", "y,,n=,r=abc", "c=eSws,r=@@,p=!!"),
        sasl_pair(
            "SCRAM-SHA-256-PLUS",
            "p=tls-server-end-point,,n=,r=abc",
            &plus_final,
        ),
        sasl_pair("SCRAM-SHA-256", "n,a=admin,n=,r=abc", "c=biws,r=@@,p=!!"),
        sasl_pair("SCRAM-SHA-256", "n,,m=ext,n=,r=abc", "c=biws,r=@@,p=!!"),
        enc(&SASLInitialResponse::new("SCRAM-SHA-256".into(), None)),
        enc(&Password::new(super::sasl::PASSWORD.into())),
    ]
}

/// Statement types a Bind can be decoded for. `bind-params` picks one per value
/// from the statement name: `A` is the first, `B` the second, and so on.
pub fn param_types() -> &'static [ParamType] {
    static TYPES: OnceLock<Vec<ParamType>> = OnceLock::new();
    TYPES.get_or_init(|| {
        let declared = [
            oid::INT8,
            oid::INT4,
            oid::INT2,
            oid::BOOL,
            oid::FLOAT4,
            oid::FLOAT8,
            oid::TEXT,
            oid::NUMERIC,
            oid::DATE,
            oid::TIMESTAMP,
            oid::TIMESTAMPTZ,
            oid::TIME,
            oid::UUID,
            oid::JSONB,
            oid::BYTEA,
            oid::INTERVAL,
            oid::OID_ARRAY,
            oid::TEXT_ARRAY,
            oid::INT8_ARRAY,
            oid::NUMERIC_ARRAY,
            oid::TIMESTAMPTZ_ARRAY,
            oid::DATE_ARRAY,
        ];
        let mut types: Vec<ParamType> = declared
            .iter()
            .map(|&o| ParamType {
                oid: o,
                arrow: arrow_type_for_oid(o),
            })
            .collect();
        // Types inferred from the query, which the wire value must be cast to.
        let inferred = [
            (0, Some(DataType::Decimal128(10, 2))),
            (0, Some(DataType::Date32)),
            (0, Some(DataType::Timestamp(TimeUnit::Microsecond, None))),
            (0, None),
            (oid::NUMERIC, Some(DataType::Int64)),
            (oid::INT8, Some(DataType::Int16)),
            (oid::TEXT, Some(DataType::Boolean)),
            (oid::FLOAT8, Some(DataType::Decimal128(38, 10))),
            (
                oid::TEXT,
                Some(DataType::Interval(
                    datafusion::arrow::datatypes::IntervalUnit::MonthDayNano,
                )),
            ),
        ];
        types.extend(
            inferred
                .into_iter()
                .map(|(oid, arrow)| ParamType { oid, arrow }),
        );
        types
    })
}

/// A Bind body whose statement name picks the types (see `param_types`).
fn bind_body(types: &str, formats: &[i16], values: &[Option<&[u8]>]) -> Vec<u8> {
    enc(&bind("", types, formats, values))[5..].to_vec()
}

pub fn bind_params() -> Vec<Vec<u8>> {
    let numeric: Vec<u8> = [3i16, 1, 0, 3, 1, 2345, 6780]
        .iter()
        .flat_map(|x| x.to_be_bytes())
        .collect();
    let mut oid_array = vec![];
    for x in [1i32, 0, 26, 3, 1, 4, 1000, -1, 4, 22] {
        oid_array.extend_from_slice(&x.to_be_bytes());
    }
    let uuid = [0xabu8; 16];
    vec![
        bind_body(
            "ABCD",
            &[],
            &[Some(b"42"), Some(b"-7"), Some(b"3"), Some(b"t")],
        ),
        bind_body(
            "ABC",
            &[1],
            &[
                Some(&1i64.to_be_bytes()),
                Some(&2i32.to_be_bytes()),
                Some(&[0, 3]),
            ],
        ),
        bind_body(
            "EFG",
            &[1, 1, 0],
            &[
                Some(&1.5f32.to_be_bytes()),
                Some(&2.5f64.to_be_bytes()),
                Some(b"x"),
            ],
        ),
        bind_body("H", &[1], &[Some(&numeric)]),
        bind_body("H", &[], &[Some(b"12345.678")]),
        bind_body(
            "IJK",
            &[1],
            &[Some(&[0, 0, 1, 0]), Some(&[0; 8]), Some(&[0xff; 8])],
        ),
        bind_body(
            "IJKL",
            &[],
            &[
                Some(b"2024-02-29"),
                Some(b"2024-02-29 12:00:00"),
                Some(b"2024-02-29 12:00:00+02"),
                Some(b"12:34:56"),
            ],
        ),
        bind_body(
            "MNO",
            &[1],
            &[Some(&uuid), Some(b"\x01{\"a\":1}"), Some(b"\xde\xad")],
        ),
        bind_body("P", &[], &[Some(b"1 day 02:03:04")]),
        bind_body("Q", &[1], &[Some(&oid_array)]),
        bind_body(
            "QRST",
            &[],
            &[
                Some(b"{1,2,NULL}"),
                Some(b"{\"a b\",c}"),
                Some(b"{}"),
                Some(b"{1.5}"),
            ],
        ),
        bind_body(
            "UV",
            &[],
            &[Some(b"{\"2024-01-01 00:00:00+00\"}"), Some(b"{2024-01-01}")],
        ),
        bind_body(
            "WXYZ",
            &[],
            &[
                Some(b"12.345"),
                Some(b"2024-01-01"),
                Some(b"2024-01-01T00:00:00"),
                None,
            ],
        ),
        bind_body(
            "[\\]^_`",
            &[1, 1, 0, 1, 0, 0],
            &[
                Some(&numeric),
                Some(&i64::MAX.to_be_bytes()),
                Some(b"yes"),
                Some(&1e300f64.to_be_bytes()),
                Some(b"P1Y2M"),
                None,
            ],
        ),
    ]
}
