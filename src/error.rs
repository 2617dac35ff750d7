//! Errors a client can see: each carries a SQLSTATE and a message a user can act on.

use std::fmt;

use datafusion::error::DataFusionError;

/// A five-character SQLSTATE code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqlState(pub &'static str);

impl SqlState {
    pub const SUCCESSFUL_COMPLETION: SqlState = SqlState("00000");
    pub const WARNING: SqlState = SqlState("01000");
    pub const CONNECTION_EXCEPTION: SqlState = SqlState("08000");
    pub const PROTOCOL_VIOLATION: SqlState = SqlState("08P01");
    pub const FEATURE_NOT_SUPPORTED: SqlState = SqlState("0A000");
    pub const INVALID_PARAMETER_VALUE: SqlState = SqlState("22023");
    pub const DIVISION_BY_ZERO: SqlState = SqlState("22012");
    pub const INVALID_TEXT_REPRESENTATION: SqlState = SqlState("22P02");
    pub const INVALID_BINARY_REPRESENTATION: SqlState = SqlState("22P03");
    pub const NUMERIC_VALUE_OUT_OF_RANGE: SqlState = SqlState("22003");
    pub const DATA_EXCEPTION: SqlState = SqlState("22000");
    pub const CHARACTER_NOT_IN_REPERTOIRE: SqlState = SqlState("22021");
    pub const ACTIVE_SQL_TRANSACTION: SqlState = SqlState("25001");
    pub const NO_ACTIVE_SQL_TRANSACTION: SqlState = SqlState("25P01");
    pub const IN_FAILED_SQL_TRANSACTION: SqlState = SqlState("25P02");
    pub const READ_ONLY_SQL_TRANSACTION: SqlState = SqlState("25006");
    pub const INVALID_AUTHORIZATION: SqlState = SqlState("28000");
    pub const INVALID_PASSWORD: SqlState = SqlState("28P01");
    pub const INVALID_CATALOG_NAME: SqlState = SqlState("3D000");
    pub const INVALID_SCHEMA_NAME: SqlState = SqlState("3F000");
    pub const INVALID_SQL_STATEMENT_NAME: SqlState = SqlState("26000");
    pub const INVALID_CURSOR_NAME: SqlState = SqlState("34000");
    pub const SYNTAX_ERROR: SqlState = SqlState("42601");
    pub const INSUFFICIENT_PRIVILEGE: SqlState = SqlState("42501");
    pub const UNDEFINED_TABLE: SqlState = SqlState("42P01");
    pub const UNDEFINED_COLUMN: SqlState = SqlState("42703");
    pub const UNDEFINED_FUNCTION: SqlState = SqlState("42883");
    pub const UNDEFINED_OBJECT: SqlState = SqlState("42704");
    pub const DUPLICATE_PREPARED_STATEMENT: SqlState = SqlState("42P05");
    pub const DUPLICATE_CURSOR: SqlState = SqlState("42P03");
    pub const DATATYPE_MISMATCH: SqlState = SqlState("42804");
    pub const AMBIGUOUS_COLUMN: SqlState = SqlState("42702");
    pub const GROUPING_ERROR: SqlState = SqlState("42803");
    pub const TOO_MANY_CONNECTIONS: SqlState = SqlState("53300");
    pub const OUT_OF_MEMORY: SqlState = SqlState("53200");
    pub const CONFIGURATION_LIMIT_EXCEEDED: SqlState = SqlState("53400");
    pub const PROGRAM_LIMIT_EXCEEDED: SqlState = SqlState("54000");
    pub const QUERY_CANCELED: SqlState = SqlState("57014");
    pub const ADMIN_SHUTDOWN: SqlState = SqlState("57P01");
    pub const INTERNAL_ERROR: SqlState = SqlState("XX000");
    pub const IO_ERROR: SqlState = SqlState("58030");

    /// A code received from elsewhere (an upstream's ErrorResponse). Codes are
    /// interned: there are a few hundred distinct SQLSTATEs, and anything that is
    /// not five ASCII letters or digits becomes `fallback`.
    pub fn intern(code: &str, fallback: SqlState) -> SqlState {
        use std::collections::HashSet;
        use std::sync::{Mutex, OnceLock};
        static CODES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
        if code.len() != 5
            || !code
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        {
            return fallback;
        }
        let mut set = CODES
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(known) = set.get(code) {
            return SqlState(known);
        }
        let leaked: &'static str = Box::leak(code.to_owned().into_boxed_str());
        set.insert(leaked);
        SqlState(leaked)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
}

/// An error reported to the client as an ErrorResponse.
#[derive(Debug, Clone)]
pub struct PgError {
    pub severity: Severity,
    pub code: SqlState,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl PgError {
    pub fn new(code: SqlState, message: impl Into<String>) -> PgError {
        PgError {
            severity: Severity::Error,
            code,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    pub fn fatal(code: SqlState, message: impl Into<String>) -> PgError {
        PgError {
            severity: Severity::Fatal,
            ..PgError::new(code, message)
        }
    }

    pub fn protocol(message: impl Into<String>) -> PgError {
        PgError::fatal(SqlState::PROTOCOL_VIOLATION, message)
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> PgError {
        self.hint = Some(hint.into());
        self
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> PgError {
        self.detail = Some(detail.into());
        self
    }

    pub fn canceled() -> PgError {
        PgError::new(
            SqlState::QUERY_CANCELED,
            "canceling statement due to user request",
        )
    }
}

pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl fmt::Display for PgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.0, self.message)
    }
}

impl std::error::Error for PgError {}

impl From<DataFusionError> for PgError {
    fn from(e: DataFusionError) -> PgError {
        from_datafusion(&e)
    }
}

/// Maps a DataFusion error to the SQLSTATE PostgreSQL would use for the same mistake.
pub fn from_datafusion(e: &DataFusionError) -> PgError {
    let root = e.find_root();
    if let DataFusionError::External(inner) = root
        && let Some(pg) = inner.downcast_ref::<PgError>()
    {
        return pg.clone();
    }
    if let Some(limit) = spill_limit(e) {
        return PgError::new(
            SqlState::CONFIGURATION_LIMIT_EXCEEDED,
            format!("temporary file size exceeds engine.spill_max_mb ({limit})"),
        )
        .with_hint(
            "The spill files of all running lake statements together are limited by engine.spill_max_mb. \
             Read fewer rows or columns, retry when fewer large statements run, or ask an administrator to raise the limit.",
        );
    }
    if let DataFusionError::ResourcesExhausted(m) = root {
        return out_of_memory(m);
    }
    let message = strip_prefixes(&root.to_string());
    if let Some(name) = missing_table(&message) {
        return PgError::new(
            SqlState::UNDEFINED_TABLE,
            format!("relation \"{name}\" does not exist"),
        );
    }
    let lower = message.to_ascii_lowercase();
    let code = match root {
        DataFusionError::SQL(..) => SqlState::SYNTAX_ERROR,
        DataFusionError::NotImplemented(_) => SqlState::FEATURE_NOT_SUPPORTED,
        DataFusionError::ResourcesExhausted(_) => SqlState::OUT_OF_MEMORY,
        DataFusionError::SchemaError(..) => {
            if lower.contains("ambiguous") {
                SqlState::AMBIGUOUS_COLUMN
            } else {
                SqlState::UNDEFINED_COLUMN
            }
        }
        DataFusionError::ArrowError(..) | DataFusionError::Execution(_) => {
            if lower.contains("divide by zero") || lower.contains("division by zero") {
                SqlState::DIVISION_BY_ZERO
            } else if lower.contains("overflow") {
                SqlState::NUMERIC_VALUE_OUT_OF_RANGE
            } else if lower.contains("cannot cast")
                || lower.contains("cast error")
                || lower.contains("parse")
            {
                SqlState::INVALID_TEXT_REPRESENTATION
            } else if lower.contains("io error") || lower.contains("object store") {
                SqlState::IO_ERROR
            } else {
                SqlState::DATA_EXCEPTION
            }
        }
        DataFusionError::Plan(_) => {
            if lower.contains("table") && lower.contains("not found") {
                SqlState::UNDEFINED_TABLE
            } else if lower.contains("schema") && lower.contains("not found") {
                SqlState::INVALID_SCHEMA_NAME
            } else if lower.contains("invalid function") || lower.contains("no function matches") {
                SqlState::UNDEFINED_FUNCTION
            } else if lower.contains("group by") || lower.contains("aggregate") {
                SqlState::GROUPING_ERROR
            } else if lower.contains("cannot coerce") || lower.contains("type") {
                SqlState::DATATYPE_MISMATCH
            } else {
                SqlState::SYNTAX_ERROR
            }
        }
        _ => SqlState::INTERNAL_ERROR,
    };
    if code == SqlState::DIVISION_BY_ZERO {
        // PostgreSQL's wording; some tools match on it.
        return PgError::new(code, "division by zero");
    }
    PgError::new(code, message)
}

/// DataFusion's refusal of a spill write past the disk manager's limit (an I/O
/// error, wrapped differently by each writer): the limit as it printed it.
fn spill_limit(e: &DataFusionError) -> Option<String> {
    const MARK: &str = "during the spilling process has exceeded the allowable limit of ";
    let text = e.to_string();
    let rest = &text[text.find(MARK)? + MARK.len()..];
    let end = rest.find(". ").unwrap_or(rest.len());
    let printed = rest[..end].trim();
    // DataFusion prints 1024-based sizes ("1024.0 KB", "100.0 GB"); the key is in MB.
    let mb = printed.split_once(' ').and_then(|(n, unit)| {
        let n: f64 = n.parse().ok()?;
        let scale = match unit {
            "B" => 1.0 / 1024.0 / 1024.0,
            "KB" => 1.0 / 1024.0,
            "MB" => 1.0,
            "GB" => 1024.0,
            "TB" => 1024.0 * 1024.0,
            "PB" => 1024.0 * 1024.0 * 1024.0,
            _ => return None,
        };
        Some(n * scale)
    });
    Some(match mb {
        Some(v) if (v - v.round()).abs() < 0.05 => format!("{} MB", v.round() as u64),
        Some(v) => format!("{v:.1} MB"),
        None => printed.to_owned(),
    })
}

/// 53200, from a memory pool's refusal. Sluice's pool (`engine::memory`) puts the
/// sentence naming the limit on the first line and what was asked for (and the top
/// consumers) after it: that becomes the detail.
fn out_of_memory(message: &str) -> PgError {
    let message = strip_prefixes_keep_lines(message);
    let (first, rest) = message.split_once('\n').unwrap_or((&message, ""));
    let first = if first.starts_with("out of memory") {
        first.to_owned()
    } else {
        format!("out of memory: {first}")
    };
    let mut e = PgError::new(SqlState::OUT_OF_MEMORY, first).with_hint(
        "The statement could not spill enough to disk to fit (hash joins and some aggregates cannot spill). \
         Read fewer rows or columns, filter or aggregate before joining, put the smaller table on the join's build side, \
         or ask an administrator to raise the role's memory_share or engine.memory_limit_mb.",
    );
    let rest = rest.trim();
    if !rest.is_empty() {
        e = e.with_detail(truncate(rest, 2000).to_owned());
    }
    e
}

fn strip_prefixes_keep_lines(s: &str) -> String {
    let mut s = s.trim();
    while let Some(rest) = s.strip_prefix("Resources exhausted: ") {
        s = rest;
    }
    s.to_owned()
}

/// `table 'catalog.schema.name' not found` → the name as a user would write it.
fn missing_table(message: &str) -> Option<String> {
    let rest = message.strip_prefix("table '")?;
    let name = rest.strip_suffix("' not found")?;
    let parts: Vec<&str> = name.split('.').collect();
    let parts = if parts.len() == 3 {
        &parts[1..]
    } else {
        &parts[..]
    };
    let parts = match parts {
        ["public", table] => &[*table][..],
        other => other,
    };
    Some(parts.join("."))
}

/// DataFusion prefixes messages with its error kind ("Error during planning: …");
/// users need the sentence, not the internal category.
fn strip_prefixes(s: &str) -> String {
    const PREFIXES: &[&str] = &[
        "Error during planning: ",
        "Execution error: ",
        "SQL error: ",
        "This feature is not implemented: ",
        "Schema error: ",
        "Arrow error: ",
        "Internal error: ",
        "External error: ",
        "Resources exhausted: ",
        "ParserError(\"",
    ];
    let mut s = s.trim();
    loop {
        let before = s;
        for p in PREFIXES {
            if let Some(rest) = s.strip_prefix(p) {
                s = rest;
            }
        }
        if s == before {
            break;
        }
    }
    let s = s.strip_suffix("\")").unwrap_or(s);
    s.lines().next().unwrap_or(s).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    async fn err_of(sql: &str) -> PgError {
        let ctx = SessionContext::new();
        let e = match ctx.sql(sql).await {
            Err(e) => e,
            Ok(df) => df.collect().await.expect_err("query should fail"),
        };
        PgError::from(e)
    }

    #[tokio::test]
    async fn datafusion_errors_get_postgres_codes() {
        assert_eq!(err_of("SELEC 1").await.code, SqlState::SYNTAX_ERROR);
        assert_eq!(
            err_of("SELECT * FROM nope").await.code,
            SqlState::UNDEFINED_TABLE
        );
        assert_eq!(
            err_of("SELECT nope FROM (SELECT 1 AS a)").await.code,
            SqlState::UNDEFINED_COLUMN
        );
        assert_eq!(
            err_of("SELECT nofunc(1)").await.code,
            SqlState::UNDEFINED_FUNCTION
        );
        let e = err_of("SELECT * FROM nope").await;
        assert!(
            !e.message.starts_with("Error during planning"),
            "{}",
            e.message
        );
    }

    #[test]
    fn memory_and_spill_limits_name_the_key() {
        let pool = DataFusionError::ResourcesExhausted(
            "out of memory: role \"analyst\" may hold 32 MB of lake query memory (25% of engine.memory_limit_mb = 128 MB)\nHashJoinInput asked for 2 MB more".into(),
        );
        let wrapped = DataFusionError::Context(
            "Not enough memory".into(),
            Box::new(DataFusionError::Shared(std::sync::Arc::new(pool))),
        );
        let e = PgError::from(wrapped);
        assert_eq!(e.code, SqlState::OUT_OF_MEMORY);
        assert!(
            e.message.contains("memory_limit_mb = 128 MB"),
            "{}",
            e.message
        );
        assert!(e.detail.as_deref().unwrap_or("").contains("HashJoinInput"));
        assert!(e.hint.is_some());
        let other = PgError::from(DataFusionError::ResourcesExhausted(
            "Memory Exhausted while spilling (DiskManager is disabled)".into(),
        ));
        assert_eq!(other.code, SqlState::OUT_OF_MEMORY);
        assert!(
            other.message.starts_with("out of memory: Memory Exhausted"),
            "{}",
            other.message
        );
        let io = std::io::Error::other(
            "The used disk space during the spilling process has exceeded the allowable limit of 1024.0 KB. Please try increasing the config: `datafusion.runtime.max_temp_directory_size`.",
        );
        let spill = DataFusionError::ArrowError(
            Box::new(datafusion::arrow::error::ArrowError::IoError(
                io.to_string(),
                io,
            )),
            None,
        );
        let e = PgError::from(DataFusionError::Context("spilling".into(), Box::new(spill)));
        assert_eq!(e.code, SqlState::CONFIGURATION_LIMIT_EXCEEDED);
        assert_eq!(
            e.message,
            "temporary file size exceeds engine.spill_max_mb (1 MB)"
        );
    }
}
