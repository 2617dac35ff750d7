//! `[workload]`: queues statements wait in for a slot, and the monitoring rules
//! that log, cancel or refuse them (Redshift's WLM queues and query monitoring
//! rules, PgBouncer's limits).

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadConfig {
    /// Most statements running at once across every queue. When a slot frees up,
    /// the waiting statement of the highest-priority queue gets it first. Absent:
    /// only the queues' own slots limit.
    pub max_concurrency: Option<usize>,
    /// Matched in order; a statement no queue matches goes to the queue named
    /// `default` (unlimited when none is configured).
    #[serde(default)]
    pub queues: Vec<QueueConfig>,
    /// Query monitoring rules, checked for every queued statement.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
}

/// One `[[workload.queues]]`. Every condition given must hold; a list holds when
/// any of its entries matches (`*` wildcards; names compare case-insensitively).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    pub name: String,
    /// Sluice roles of the session.
    #[serde(default)]
    pub roles: Vec<String>,
    /// IdP group ids of the session's token.
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub users: Vec<String>,
    /// The statement's application: its sqlcommenter `application` tag, else the
    /// session's `application_name`.
    #[serde(default)]
    pub applications: Vec<String>,
    /// The session's `SET query_group` (Redshift's WLM label).
    #[serde(default)]
    pub query_groups: Vec<String>,
    /// sqlcommenter tags of the statement: tag name → pattern.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Where the statement runs: `lake`, `upstream`, `cross-engine`, `view`.
    #[serde(default)]
    pub routes: Vec<String>,
    /// Query-group fingerprints (16 hex digits, as `sluice.query_groups` shows them).
    #[serde(default)]
    pub fingerprints: Vec<String>,
    /// Statements of this queue that run at once.
    pub slots: usize,
    /// How long a statement may wait for a slot before it fails with 53300
    /// (0: as long as it takes). PgBouncer's `query_wait_timeout` default.
    #[serde(default = "default_queue_timeout")]
    pub queue_timeout_secs: u64,
    /// Longest a statement of this queue may run; the session's own
    /// `statement_timeout` can only make it shorter.
    pub statement_timeout_secs: Option<u64>,
    /// Most rows a statement of this queue may return (54000 past it).
    pub row_limit: Option<u64>,
    /// Which queue's waiting statement gets a gateway-wide slot first
    /// (`max_concurrency`): highest, high, normal, low, lowest.
    #[serde(default)]
    pub priority: Priority,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Lowest,
    Low,
    #[default]
    Normal,
    High,
    Highest,
}

/// One `[[workload.rules]]`: one predicate and one action, like one of a Redshift
/// query monitoring rule's predicates. Several rules may watch one statement; the
/// first to fire with `cancel` or `refuse` ends it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub name: String,
    /// Queues the rule watches; empty: every queue.
    #[serde(default)]
    pub queues: Vec<String>,
    /// Lake statements whose planned scan (the files left after partition pruning)
    /// is larger than this many bytes. Known before the statement starts.
    pub scan_bytes_over: Option<u64>,
    /// Statements running longer than this many seconds.
    pub elapsed_secs_over: Option<u64>,
    /// Statements that return more rows than this.
    pub rows_over: Option<u64>,
    /// Statements that send the client more bytes than this.
    pub bytes_sent_over: Option<u64>,
    pub action: RuleAction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleAction {
    /// Record that the rule fired (a WARNING to the client, the audit trail,
    /// metrics, query groups); the statement carries on.
    Log,
    /// End the statement with 57014, naming the rule.
    Cancel,
    /// Refuse the statement before it starts (scan size only: nothing else is
    /// known then).
    Refuse,
}

impl RuleAction {
    pub fn name(self) -> &'static str {
        match self {
            RuleAction::Log => "log",
            RuleAction::Cancel => "cancel",
            RuleAction::Refuse => "refuse",
        }
    }
}

pub const QUEUE_ROUTES: [&str; 4] = ["lake", "upstream", "cross-engine", "view"];

fn default_queue_timeout() -> u64 {
    120
}

impl WorkloadConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.max_concurrency == Some(0) {
            return Err((
                "workload.max_concurrency".into(),
                "must be at least 1 (leave it out for no gateway-wide cap)".into(),
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, q) in self.queues.iter().enumerate() {
            let key = |k: &str| format!("workload.queues[{i}].{k}");
            if q.name.trim().is_empty() {
                return Err((key("name"), "must not be empty".into()));
            }
            if !names.insert(q.name.to_ascii_lowercase()) {
                return Err((
                    key("name"),
                    format!("queue \"{}\" is defined twice", q.name),
                ));
            }
            if q.slots == 0 {
                return Err((key("slots"), "must be at least 1".into()));
            }
            if q.name.eq_ignore_ascii_case("default") && q.has_conditions() {
                return Err((
                    key("name"),
                    "the default queue takes what no other queue matches: it has no conditions"
                        .into(),
                ));
            }
            for r in &q.routes {
                if !QUEUE_ROUTES.contains(&r.as_str()) {
                    return Err((
                        key("routes"),
                        format!("unknown route \"{r}\" (one of {})", QUEUE_ROUTES.join(", ")),
                    ));
                }
            }
            for f in &q.fingerprints {
                if f.len() != 16 || !f.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err((
                        key("fingerprints"),
                        format!("\"{f}\" is not a fingerprint (16 hex digits)"),
                    ));
                }
            }
            if q.statement_timeout_secs == Some(0) {
                return Err((
                    key("statement_timeout_secs"),
                    "must be at least 1 (leave it out for none)".into(),
                ));
            }
        }
        let mut rule_names = std::collections::BTreeSet::new();
        for (i, r) in self.rules.iter().enumerate() {
            let key = |k: &str| format!("workload.rules[{i}].{k}");
            if r.name.trim().is_empty() {
                return Err((key("name"), "must not be empty".into()));
            }
            if !rule_names.insert(r.name.to_ascii_lowercase()) {
                return Err((key("name"), format!("rule \"{}\" is defined twice", r.name)));
            }
            let predicates = [
                r.scan_bytes_over.is_some(),
                r.elapsed_secs_over.is_some(),
                r.rows_over.is_some(),
                r.bytes_sent_over.is_some(),
            ];
            if predicates.iter().filter(|p| **p).count() != 1 {
                return Err((
                    key("action"),
                    "a rule has exactly one predicate: scan_bytes_over, elapsed_secs_over, rows_over or bytes_sent_over (write several rules for several)".into(),
                ));
            }
            if r.action == RuleAction::Refuse && r.scan_bytes_over.is_none() {
                return Err((
                    key("action"),
                    "\"refuse\" acts before the statement starts, when only scan_bytes_over is known; use \"cancel\"".into(),
                ));
            }
            for q in &r.queues {
                let known = q.eq_ignore_ascii_case("default")
                    || self.queues.iter().any(|c| c.name.eq_ignore_ascii_case(q));
                if !known {
                    return Err((key("queues"), format!("no queue is named \"{q}\"")));
                }
            }
        }
        Ok(())
    }

    /// Whether anything is configured (else admission costs nothing).
    pub fn is_active(&self) -> bool {
        !self.queues.is_empty() || !self.rules.is_empty() || self.max_concurrency.is_some()
    }
}

impl QueueConfig {
    pub fn has_conditions(&self) -> bool {
        !(self.roles.is_empty()
            && self.groups.is_empty()
            && self.users.is_empty()
            && self.applications.is_empty()
            && self.query_groups.is_empty()
            && self.tags.is_empty()
            && self.routes.is_empty()
            && self.fingerprints.is_empty())
    }
}
