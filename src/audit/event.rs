//! What the audit trail records: one event per login attempt, per logoff and per
//! statement. Events are plain data, written as one JSON object per line (by hand,
//! `json.rs`, as serde_json would serialise these types; `file.rs` adds the chain);
//! the OCSF variant maps the same fields (`ocsf.rs`).
//!
//! Nothing secret is ever put in an event: statement text is redacted of passwords
//! and credentials before it gets here (`route::redact`), bound parameters are
//! only present when `audit.log_parameters = true`, and tokens are never copied.

use serde::Serialize;

/// Who is connected, as far as the audit trail is concerned. Shared by every event
/// of a session (cheap to clone behind an `Arc`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Who {
    /// Session number (the BackendKeyData process id the client saw).
    pub session: i32,
    /// The login name (`current_user`); for a failed login, the name the client gave.
    pub user: String,
    /// Entra ID / OIDC tenant (`tid`) and object id (`oid`), for token logins.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object_id: Option<String>,
    /// `password` (local SCRAM), `token` (OIDC), `ldap`; empty before authentication.
    pub auth: &'static str,
    pub roles: Vec<String>,
    /// How many IdP groups the token carried (not the ids: they can be many).
    pub groups: usize,
    /// The client's address and port.
    pub client: String,
    /// The TLS version, or `None` for plaintext.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<&'static str>,
    pub database: String,
    /// `application_name` as the client sent it at startup (written as
    /// `application_name`; a statement's `application` is the one it ran under).
    #[serde(rename = "application_name")]
    pub application: String,
}

/// One audit event.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AuditEvent {
    /// A login that succeeded.
    Login {
        #[serde(flatten)]
        who: std::sync::Arc<Who>,
    },
    /// A login that failed: `reason` is what the server log says (never the
    /// password or token), `sqlstate` what the client was told.
    LoginFailed {
        #[serde(flatten)]
        who: std::sync::Arc<Who>,
        reason: String,
        sqlstate: &'static str,
    },
    /// The end of a session that logged in.
    Logoff {
        #[serde(flatten)]
        who: std::sync::Arc<Who>,
        duration_us: u64,
        /// Why the gateway ended the session, when it did: `idle_session_timeout`,
        /// `idle_in_transaction_session_timeout`, `max_session_age`, `terminated`.
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'static str>,
    },
    /// An admin session (`who`) terminated another (`target`: its session number,
    /// user, roles, client, …) with `sluice.terminate` / `pg_terminate_backend`.
    Terminate {
        #[serde(flatten)]
        who: std::sync::Arc<Who>,
        target: std::sync::Arc<Who>,
    },
    Statement(Box<StatementEvent>),
}

/// One statement, recorded once at its end whatever route it took.
#[derive(Debug, Clone, Serialize)]
pub struct StatementEvent {
    #[serde(flatten)]
    pub who: std::sync::Arc<Who>,
    /// `application_name` when the statement ran (it may have been SET since login).
    pub application: String,
    /// `SET query_group` or a sqlcommenter `route` tag, when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query_group: Option<String>,
    /// lake, upstream, cache, cross_engine, view, session, cursor, refused.
    pub route: &'static str,
    /// The query group fingerprint, written as 16 hex digits.
    #[serde(serialize_with = "fingerprint_hex")]
    pub fingerprint: u64,
    /// The statement text, passwords and credentials redacted.
    pub statement: String,
    /// Bound parameters as text (`None` → not logged, or none bound).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Vec<Option<String>>>,
    pub tables_read: Vec<String>,
    pub tables_written: Vec<String>,
    pub duration_us: u64,
    /// Rows returned or affected (from the CommandComplete tag), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    /// Bytes of result data sent to the client.
    pub bytes: u64,
    /// `00000` on success; an upstream's own code for a relayed statement.
    pub sqlstate: std::borrow::Cow<'static, str>,
    /// The error message, when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The workload queue it ran (or waited) in, when `[workload]` is configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Microseconds it waited for a slot.
    #[serde(skip_serializing_if = "is_zero")]
    pub queue_wait_us: u64,
    /// Workload rules that acted on it, as `rule:action`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn fingerprint_hex<S: serde::Serializer>(fp: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{fp:016x}"))
}

impl AuditEvent {
    /// The event's name as written in the `event` field.
    pub fn kind(&self) -> &'static str {
        match self {
            AuditEvent::Login { .. } => "login",
            AuditEvent::LoginFailed { .. } => "login_failed",
            AuditEvent::Logoff { .. } => "logoff",
            AuditEvent::Terminate { .. } => "terminate",
            AuditEvent::Statement(_) => "statement",
        }
    }
}
