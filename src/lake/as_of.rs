//! Time travel on Delta Lake and Iceberg tables, spelled as a suffix of the table
//! name as Databricks spells it: `"events@v12"` (a Delta version or an Iceberg
//! snapshot id) or `"events@20261201093000000"` (the table as of that UTC time,
//! `yyyyMMddHHmmss` with optional milliseconds). The name must be quoted because `@`
//! is not an identifier character. Sluice speaks PostgreSQL's grammar, which has no
//! `FOR VERSION AS OF`; the suffix needs no parser change and keeps every other rule
//! (policy, listings, routing) working on the base name.

use chrono::{DateTime, NaiveDateTime, Utc};

use crate::error::{PgError, SqlState};

/// Which version of a table to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsOf {
    /// A Delta table version, or an Iceberg snapshot id.
    Version(i64),
    /// The newest version committed at or before this time.
    Timestamp(DateTime<Utc>),
}

impl std::fmt::Display for AsOf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AsOf::Version(v) => write!(f, "version {v}"),
            AsOf::Timestamp(t) => write!(f, "{}", t.format("%Y-%m-%d %H:%M:%S%.3f UTC")),
        }
    }
}

/// The base table name and the time-travel suffix, if the name has one. A name
/// whose suffix does not parse is an error that says how to spell it.
pub fn split(name: &str) -> Result<(&str, Option<AsOf>), PgError> {
    let Some((base, suffix)) = name.rsplit_once('@') else {
        return Ok((name, None));
    };
    if base.is_empty() {
        return Ok((name, None));
    }
    parse_suffix(suffix)
        .map(|as_of| (base, Some(as_of)))
        .ok_or_else(|| {
            PgError::new(
                SqlState::INVALID_PARAMETER_VALUE,
                format!("\"{name}\": `@{suffix}` is not a table version or time"),
            )
            .with_hint("write \"table@v12\" for a version (an Iceberg snapshot id) or \"table@20261201093000000\" for a UTC time (yyyyMMddHHmmss[SSS])")
        })
}

/// The base name alone (for policy checks and listings).
pub fn base_name(name: &str) -> &str {
    split(name).map(|(base, _)| base).unwrap_or(name)
}

fn parse_suffix(suffix: &str) -> Option<AsOf> {
    if let Some(v) = suffix.strip_prefix(['v', 'V']) {
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        return v.parse().ok().map(AsOf::Version);
    }
    if !suffix.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (seconds, millis) = match suffix.len() {
        14 => (suffix, 0),
        17 => (&suffix[..14], suffix[14..].parse::<i64>().ok()?),
        _ => return None,
    };
    let at = NaiveDateTime::parse_from_str(seconds, "%Y%m%d%H%M%S").ok()?;
    let at = at.and_utc() + chrono::Duration::milliseconds(millis);
    Some(AsOf::Timestamp(at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_parse_as_databricks_writes_them() {
        assert_eq!(split("events").unwrap(), ("events", None));
        assert_eq!(
            split("events@v12").unwrap(),
            ("events", Some(AsOf::Version(12)))
        );
        let (base, at) = split("events@20261201093000123").unwrap();
        assert_eq!(base, "events");
        let Some(AsOf::Timestamp(t)) = at else {
            panic!("timestamp")
        };
        assert_eq!(t.timestamp_millis(), 1_796_117_400_123);
        assert!(matches!(
            split("events@20261201093000").unwrap().1,
            Some(AsOf::Timestamp(_))
        ));
        for bad in [
            "events@v",
            "events@vx",
            "events@2026",
            "events@20261301093000",
            "e@x",
        ] {
            let e = split(bad).unwrap_err();
            assert_eq!(e.code, SqlState::INVALID_PARAMETER_VALUE, "{bad}");
        }
        // A leading `@` is part of a name, not a suffix.
        assert_eq!(split("@odd").unwrap(), ("@odd", None));
        assert_eq!(base_name("t@v3"), "t");
    }
}
