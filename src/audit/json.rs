//! The `json` format, written by hand into a reused buffer: one object per event,
//! `time` first, then `event` and the event's fields in their declared order
//! (`event.rs`; `Who`'s fields inline). The text is exactly what serde_json makes
//! of the same event (`tests` below compares the two), without serde's
//! per-field machinery, which the writer paid for every statement.

use chrono::{DateTime, Datelike, SecondsFormat, Timelike, Utc};

use super::event::{AuditEvent, StatementEvent, Who};

/// Appends the event's object: `{"time":"…","event":"…",…}`.
pub(super) fn render(out: &mut String, time: &DateTime<Utc>, event: &AuditEvent) {
    out.push_str("{\"time\":\"");
    push_time(out, time);
    out.push_str("\",\"event\":\"");
    out.push_str(event.kind());
    out.push('"');
    match event {
        AuditEvent::Login { who } => push_who(out, who),
        AuditEvent::LoginFailed {
            who,
            reason,
            sqlstate,
        } => {
            push_who(out, who);
            push_key(out, "reason");
            push_str(out, reason);
            push_key(out, "sqlstate");
            push_str(out, sqlstate);
        }
        AuditEvent::Logoff {
            who,
            duration_us,
            reason,
        } => {
            push_who(out, who);
            push_key(out, "duration_us");
            push_u64(out, *duration_us);
            if let Some(reason) = reason {
                push_key(out, "reason");
                push_str(out, reason);
            }
        }
        AuditEvent::Terminate { who, target } => {
            push_who(out, who);
            push_key(out, "target");
            // Who's fields as an object of their own: `{"session":…}`.
            let start = out.len();
            push_who(out, target);
            out.replace_range(start..start + 1, "{");
            out.push('}');
        }
        AuditEvent::Statement(s) => push_statement(out, s),
    }
    out.push('}');
}

fn push_who(out: &mut String, who: &Who) {
    push_key(out, "session");
    push_i64(out, i64::from(who.session));
    push_key(out, "user");
    push_str(out, &who.user);
    if let Some(tenant) = &who.tenant {
        push_key(out, "tenant");
        push_str(out, tenant);
    }
    if let Some(object_id) = &who.object_id {
        push_key(out, "object_id");
        push_str(out, object_id);
    }
    push_key(out, "auth");
    push_str(out, who.auth);
    push_key(out, "roles");
    push_strings(out, &who.roles);
    push_key(out, "groups");
    push_u64(out, who.groups as u64);
    push_key(out, "client");
    push_str(out, &who.client);
    if let Some(tls) = who.tls {
        push_key(out, "tls");
        push_str(out, tls);
    }
    push_key(out, "database");
    push_str(out, &who.database);
    push_key(out, "application_name");
    push_str(out, &who.application);
}

fn push_statement(out: &mut String, s: &StatementEvent) {
    push_who(out, &s.who);
    push_key(out, "application");
    push_str(out, &s.application);
    if let Some(group) = &s.query_group {
        push_key(out, "query_group");
        push_str(out, group);
    }
    push_key(out, "route");
    push_str(out, s.route);
    push_key(out, "fingerprint");
    out.push('"');
    push_fingerprint(out, s.fingerprint);
    out.push('"');
    push_key(out, "statement");
    push_str(out, &s.statement);
    if let Some(parameters) = &s.parameters {
        push_key(out, "parameters");
        out.push('[');
        for (i, p) in parameters.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            match p {
                Some(p) => push_str(out, p),
                None => out.push_str("null"),
            }
        }
        out.push(']');
    }
    push_key(out, "tables_read");
    push_strings(out, &s.tables_read);
    push_key(out, "tables_written");
    push_strings(out, &s.tables_written);
    push_key(out, "duration_us");
    push_u64(out, s.duration_us);
    if let Some(rows) = s.rows {
        push_key(out, "rows");
        push_u64(out, rows);
    }
    push_key(out, "bytes");
    push_u64(out, s.bytes);
    push_key(out, "sqlstate");
    push_str(out, &s.sqlstate);
    if let Some(error) = &s.error {
        push_key(out, "error");
        push_str(out, error);
    }
    if let Some(queue) = &s.queue {
        push_key(out, "queue");
        push_str(out, queue);
    }
    if s.queue_wait_us != 0 {
        push_key(out, "queue_wait_us");
        push_u64(out, s.queue_wait_us);
    }
    if !s.rules.is_empty() {
        push_key(out, "rules");
        push_strings(out, &s.rules);
    }
}

/// `,"key":` (every field follows `time` and `event`).
fn push_key(out: &mut String, key: &str) {
    out.push_str(",\"");
    out.push_str(key);
    out.push_str("\":");
}

fn push_strings(out: &mut String, items: &[String]) {
    out.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_str(out, item);
    }
    out.push(']');
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A JSON string as serde_json writes it: `"` and `\` escaped, the control
/// characters below 0x20 as `\b \t \n \f \r` or `\u00XX`, everything else
/// (DEL and non-ASCII included) as it is.
pub(super) fn push_str(out: &mut String, s: &str) {
    out.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &str = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0x00..=0x1f => "",
            _ => continue,
        };
        // Only ASCII bytes get here, so `start..i` falls on char boundaries.
        out.push_str(&s[start..i]);
        if escape.is_empty() {
            out.push_str("\\u00");
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0xf)] as char);
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

pub(super) fn push_u64(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[i..] {
        out.push(d as char);
    }
}

fn push_i64(out: &mut String, n: i64) {
    if n < 0 {
        out.push('-');
    }
    push_u64(out, n.unsigned_abs());
}

/// 16 lower-case hex digits (as `route::fingerprint::hex` writes it).
fn push_fingerprint(out: &mut String, fp: u64) {
    for shift in (0..16).rev() {
        out.push(HEX[((fp >> (shift * 4)) & 0xf) as usize] as char);
    }
}

/// Lower-case hex of a digest, appended to bytes (the file chain's `prev`).
pub(super) fn push_hex(out: &mut Vec<u8>, digest: &[u8]) {
    for &b in digest {
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 0xf)]);
    }
}

/// `time.to_rfc3339_opts(SecondsFormat::Micros, true)`: `2024-01-01T00:00:00.000000Z`.
fn push_time(out: &mut String, time: &DateTime<Utc>) {
    let year = time.year();
    let nanos = time.nanosecond();
    if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
        // Years chrono writes with a sign, and leap seconds: its own formatting.
        out.push_str(&time.to_rfc3339_opts(SecondsFormat::Micros, true));
        return;
    }
    let mut buf = *b"0000-00-00T00:00:00.000000Z";
    let mut put = |at: usize, width: usize, mut value: u32| {
        for i in (at..at + width).rev() {
            buf[i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, 4, year as u32);
    put(5, 2, time.month());
    put(8, 2, time.day());
    put(11, 2, time.hour());
    put(14, 2, time.minute());
    put(17, 2, time.second());
    put(20, 6, nanos / 1000);
    // Only ASCII digits and punctuation were written.
    out.push_str(std::str::from_utf8(&buf).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::sync::Arc;

    use super::*;

    /// What the writer rendered before this module: serde_json with `time` first.
    fn with_serde(time: &DateTime<Utc>, event: &AuditEvent) -> String {
        let time = time.to_rfc3339_opts(SecondsFormat::Micros, true);
        let fields = serde_json::to_string(event).unwrap();
        let inner = &fields[1..fields.len() - 1];
        format!("{{\"time\":\"{time}\",{inner}}}")
    }

    fn by_hand(time: &DateTime<Utc>, event: &AuditEvent) -> String {
        let mut out = String::from("left alone");
        render(&mut out, time, event);
        out.strip_prefix("left alone").unwrap().to_owned()
    }

    const AWKWARD: &str = "a\"b\\c\nd\re\tf\u{8}g\u{c}h\u{0}i\u{1f}j\u{7f}k é ✓ 😀 </script> '";

    fn whos() -> Vec<Arc<Who>> {
        vec![
            Arc::new(Who::default()),
            Arc::new(Who {
                session: -12,
                user: AWKWARD.into(),
                tenant: Some("t-1".into()),
                object_id: Some("o\"1".into()),
                auth: "token",
                roles: vec!["analyst".into(), AWKWARD.into()],
                groups: 3,
                client: "[::1]:51234".into(),
                tls: Some("TLSv1.3"),
                database: "sluice".into(),
                application: "psql\u{2028}".into(),
            }),
        ]
    }

    fn statements(who: &Arc<Who>) -> Vec<StatementEvent> {
        let plain = StatementEvent {
            who: who.clone(),
            application: String::new(),
            query_group: None,
            route: "upstream",
            fingerprint: 0,
            statement: "SELECT abalance FROM pgbench_accounts WHERE aid = $1;".into(),
            parameters: None,
            tables_read: vec!["pgbench_accounts".into()],
            tables_written: vec![],
            duration_us: 0,
            rows: None,
            bytes: 0,
            sqlstate: Cow::Borrowed("00000"),
            error: None,
            queue: None,
            queue_wait_us: 0,
            rules: vec![],
        };
        let full = StatementEvent {
            who: who.clone(),
            application: AWKWARD.into(),
            query_group: Some("nightly\n".into()),
            route: "lake",
            fingerprint: 0x0123_4567_89ab_cdef,
            statement: AWKWARD.into(),
            parameters: Some(vec![Some("42".into()), None, Some(AWKWARD.into())]),
            tables_read: vec!["a.b".into(), "c\"d".into()],
            tables_written: vec!["e.f".into()],
            duration_us: u64::MAX,
            rows: Some(7),
            bytes: 1_234_567_890,
            sqlstate: Cow::Owned("42501".into()),
            error: Some(AWKWARD.into()),
            queue: Some(AWKWARD.into()),
            queue_wait_us: 1_500,
            rules: vec!["slow:cancel".into(), AWKWARD.into()],
        };
        let empty_parameters = StatementEvent {
            parameters: Some(vec![]),
            rows: Some(0),
            fingerprint: u64::MAX,
            ..plain.clone()
        };
        vec![plain, full, empty_parameters]
    }

    #[test]
    fn renders_what_serde_json_rendered() {
        let times = [
            DateTime::from_timestamp_micros(0).unwrap(),
            DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            DateTime::from_timestamp_nanos(1_764_547_200_999_999_999),
            Utc::now(),
        ];
        let mut events = Vec::new();
        for who in whos() {
            events.push(AuditEvent::Login { who: who.clone() });
            events.push(AuditEvent::LoginFailed {
                who: who.clone(),
                reason: AWKWARD.into(),
                sqlstate: "28P01",
            });
            events.push(AuditEvent::Logoff {
                who: who.clone(),
                duration_us: 5_000_000,
                reason: None,
            });
            events.push(AuditEvent::Logoff {
                who: who.clone(),
                duration_us: 1,
                reason: Some("idle_session_timeout"),
            });
            events.push(AuditEvent::Terminate {
                who: who.clone(),
                target: who.clone(),
            });
            for s in statements(&who) {
                events.push(AuditEvent::Statement(Box::new(s)));
            }
        }
        for time in &times {
            for event in &events {
                assert_eq!(by_hand(time, event), with_serde(time, event));
            }
        }
    }

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        let every_ascii: String = (0u8..0x80).map(char::from).collect();
        for text in ["", "plain", AWKWARD, &every_ascii, "\u{0}", "\"", "é\u{1}"] {
            let mut out = String::new();
            push_str(&mut out, text);
            assert_eq!(out, serde_json::to_string(text).unwrap());
        }
    }

    #[test]
    fn numbers_and_digests() {
        for n in [0, 1, 9, 10, 99, 100, 12_345, u64::MAX] {
            let mut out = String::new();
            push_u64(&mut out, n);
            assert_eq!(out, n.to_string());
        }
        for n in [0, -1, i64::from(i32::MIN), i64::from(i32::MAX)] {
            let mut out = String::new();
            push_i64(&mut out, n);
            assert_eq!(out, n.to_string());
        }
        let digest: Vec<u8> = (0..32).map(|i| i * 8).collect();
        let mut out = Vec::new();
        push_hex(&mut out, &digest);
        let expected: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(String::from_utf8(out).unwrap(), expected);
        let mut out = String::new();
        push_fingerprint(&mut out, 0xab);
        assert_eq!(out, "00000000000000ab");
    }
}
