//! Backend messages: everything Sluice sends a client goes through here.
//!
//! pgwire's encoders are used where they exist (re-exported below, so callers name
//! one module); ErrorResponse, NoticeResponse and text DataRows are written here
//! because Sluice needs control over their fields (truncation, interior NULs) and
//! their allocation (no intermediate message values on hot paths).

use bytes::BytesMut;

pub use pgwire::messages::Message;
pub use pgwire::messages::data::{NoData, ParameterDescription};
pub use pgwire::messages::extendedquery::{
    BindComplete, CloseComplete, ParseComplete, PortalSuspended,
};
pub use pgwire::messages::response::{
    CommandComplete, EmptyQueryResponse, ReadyForQuery, TransactionStatus,
};
pub use pgwire::messages::startup::{BackendKeyData, ParameterStatus, SecretKey};

use crate::error::{PgError, Severity, SqlState, truncate};
use crate::wire::frame::put_message;

/// Appends `e` as an ErrorResponse.
pub fn error_response(out: &mut BytesMut, e: &PgError) {
    let severity = match e.severity {
        Severity::Error => "ERROR",
        Severity::Fatal => "FATAL",
    };
    put_message(out, b'E', |b| {
        let mut field = |tag: u8, value: &str| {
            b.extend_from_slice(&[tag]);
            // Interior NULs would end the field early; strip them.
            for part in value.split('\0') {
                b.extend_from_slice(part.as_bytes());
            }
            b.extend_from_slice(&[0]);
        };
        field(b'S', severity);
        field(b'V', severity);
        field(b'C', e.code.0);
        field(b'M', truncate(&e.message, 8000));
        if let Some(d) = &e.detail {
            field(b'D', truncate(d, 8000));
        }
        if let Some(h) = &e.hint {
            field(b'H', truncate(h, 2000));
        }
        b.extend_from_slice(&[0]);
    });
}

/// Appends a NoticeResponse (`severity`: NOTICE, WARNING, …).
pub fn notice(out: &mut BytesMut, code: SqlState, severity: &str, message: &str) {
    put_message(out, b'N', |b| {
        for (tag, value) in [
            (b'S', severity),
            (b'V', severity),
            (b'C', code.0),
            (b'M', message),
        ] {
            b.extend_from_slice(&[tag]);
            b.extend_from_slice(value.as_bytes());
            b.extend_from_slice(&[0]);
        }
        b.extend_from_slice(&[0]);
    });
}

/// Appends a DataRow of text values (admin views, SHOW); text's binary form is the
/// same bytes, so the row serves both formats.
pub fn text_row<S: AsRef<str>>(out: &mut BytesMut, values: &[S]) {
    put_message(out, b'D', |b| {
        b.extend_from_slice(&(values.len() as i16).to_be_bytes());
        for v in values {
            let v = v.as_ref();
            b.extend_from_slice(&(v.len() as i32).to_be_bytes());
            b.extend_from_slice(v.as_bytes());
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_response_has_code_and_message() {
        let mut out = BytesMut::new();
        let e = PgError::new(SqlState::UNDEFINED_TABLE, "relation \"x\" does not exist");
        error_response(&mut out, &e);
        assert_eq!(out[0], b'E');
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("C42P01\0"));
        assert!(text.contains("Mrelation \"x\" does not exist\0"));
    }

    #[test]
    fn notice_and_text_rows_are_framed() {
        let mut out = BytesMut::new();
        notice(&mut out, SqlState("00000"), "NOTICE", "hello");
        text_row(&mut out, &["a", ""]);
        let mut messages = crate::wire::frame::messages(&out);
        assert_eq!(messages.next().map(|m| m[0]), Some(b'N'));
        let row = messages.next().expect("a DataRow");
        assert_eq!(&row[..1], b"D");
        assert_eq!(&row[5..7], &2i16.to_be_bytes());
    }
}
