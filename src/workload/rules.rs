//! Query monitoring rules and the queue limits they share their enforcement with.
//!
//! A rule is one predicate and one action. Before a lake statement starts, rules
//! on its planned scan size act (log, or refuse/cancel it before anything is
//! read). While a statement runs, the session enforces [`Limits`]: the earliest
//! time, row and byte limit from the queue (statement timeout, row cap) and the
//! `cancel` rules; a breached limit ends the statement with its own error. `log`
//! rules are checked at the statement's end.

use std::sync::Arc;
use std::time::Duration;

use super::Queue;
use crate::config::{RuleAction, RuleConfig};
use crate::error::{PgError, SqlState};

pub struct Rules {
    rules: Vec<Rule>,
}

struct Rule {
    name: Arc<str>,
    /// Queue indexes watched; empty: all.
    queues: Vec<usize>,
    predicate: Predicate,
    action: RuleAction,
}

#[derive(Clone, Copy)]
enum Predicate {
    ScanBytes(u64),
    Elapsed(Duration),
    Rows(u64),
    BytesSent(u64),
}

/// A rule that acted on a statement, for the audit trail, metrics and query groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fired {
    pub rule: Arc<str>,
    pub action: RuleAction,
}

/// A limit a running statement must stay under, and how it ends if it does not.
#[derive(Debug, Clone)]
pub struct Breach<T> {
    pub at: T,
    pub error: PgError,
    /// The rule that set the limit (`None`: the queue's own limit).
    pub rule: Option<Arc<str>>,
}

/// What a running statement must stay under.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    pub elapsed: Option<Breach<Duration>>,
    pub rows: Option<Breach<u64>>,
    pub bytes: Option<Breach<u64>>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        self.elapsed.is_none() && self.rows.is_none() && self.bytes.is_none()
    }
}

impl Rules {
    pub(super) fn new(config: &[RuleConfig], queues: &[Queue]) -> Rules {
        let rules = config
            .iter()
            .map(|r| Rule {
                name: Arc::from(r.name.as_str()),
                queues: r
                    .queues
                    .iter()
                    .filter_map(|name| {
                        queues
                            .iter()
                            .position(|q| q.name.eq_ignore_ascii_case(name))
                    })
                    .collect(),
                predicate: if let Some(b) = r.scan_bytes_over {
                    Predicate::ScanBytes(b)
                } else if let Some(s) = r.elapsed_secs_over {
                    Predicate::Elapsed(Duration::from_secs(s))
                } else if let Some(n) = r.rows_over {
                    Predicate::Rows(n)
                } else {
                    Predicate::BytesSent(r.bytes_sent_over.unwrap_or(u64::MAX))
                },
                action: r.action,
            })
            .collect();
        Rules { rules }
    }

    fn watching(&self, queue: usize) -> impl Iterator<Item = &Rule> {
        self.rules
            .iter()
            .filter(move |r| r.queues.is_empty() || r.queues.contains(&queue))
    }

    /// Whether a rule of this queue looks at scan sizes (so the lake estimates one).
    pub fn checks_scans(&self, queue: usize) -> bool {
        self.watching(queue)
            .any(|r| matches!(r.predicate, Predicate::ScanBytes(_)))
    }

    /// Scan-size rules, before a lake statement starts: `log` rules are noted in
    /// `fired`; the first `refuse` or `cancel` rule over its limit refuses it.
    pub fn before_start(
        &self,
        queue: usize,
        scan_bytes: u64,
        fired: &mut Vec<Fired>,
    ) -> Result<(), PgError> {
        for rule in self.watching(queue) {
            let Predicate::ScanBytes(limit) = rule.predicate else {
                continue;
            };
            if scan_bytes <= limit {
                continue;
            }
            fired.push(Fired {
                rule: rule.name.clone(),
                action: rule.action,
            });
            if rule.action != RuleAction::Log {
                return Err(scan_refusal(&rule.name, scan_bytes, limit));
            }
        }
        Ok(())
    }

    /// The tightest scan size a `refuse` or `cancel` rule of the queue allows, and
    /// that rule's name (table providers check it as they list files).
    pub fn scan_limit(&self, queue: usize) -> Option<(u64, Arc<str>)> {
        self.watching(queue)
            .filter(|r| r.action != RuleAction::Log)
            .filter_map(|r| match r.predicate {
                Predicate::ScanBytes(limit) => Some((limit, r.name.clone())),
                _ => None,
            })
            .min_by_key(|(limit, _)| *limit)
    }

    /// The limits a statement of `queue` runs under: the queue's statement timeout
    /// (shortened by the session's own) and row cap, and the `cancel` rules.
    pub fn limits(&self, queue: usize, q: &Queue, session_timeout: Option<Duration>) -> Limits {
        let mut limits = Limits::default();
        match (q.statement_timeout, session_timeout) {
            (Some(t), s) if s.is_none_or(|s| t < s) => {
                limits.elapsed = Some(Breach {
                    at: t,
                    error: PgError::new(
                        SqlState::QUERY_CANCELED,
                        format!(
                            "canceling statement due to the statement timeout of workload queue \"{}\" ({} s)",
                            q.name,
                            t.as_secs()
                        ),
                    ),
                    rule: None,
                });
            }
            _ => {}
        }
        if let Some(n) = q.row_limit {
            limits.rows = Some(Breach {
                at: n,
                error: PgError::new(
                    SqlState::PROGRAM_LIMIT_EXCEEDED,
                    format!(
                        "the result has more than {n} rows, the row limit of workload queue \"{}\"",
                        q.name
                    ),
                )
                .with_hint("add a filter or LIMIT"),
                rule: None,
            });
        }
        for rule in self.watching(queue) {
            if rule.action != RuleAction::Cancel {
                continue;
            }
            let canceled = |what: String| {
                PgError::new(
                    SqlState::QUERY_CANCELED,
                    format!(
                        "canceling statement due to workload rule \"{}\" ({what})",
                        rule.name
                    ),
                )
            };
            let name = Some(rule.name.clone());
            match rule.predicate {
                Predicate::ScanBytes(_) => {}
                Predicate::Elapsed(t) => {
                    if limits.elapsed.as_ref().is_none_or(|b| t < b.at) {
                        limits.elapsed = Some(Breach {
                            at: t,
                            error: canceled(format!("ran longer than {} s", t.as_secs())),
                            rule: name,
                        });
                    }
                }
                Predicate::Rows(n) => {
                    if limits.rows.as_ref().is_none_or(|b| n < b.at) {
                        limits.rows = Some(Breach {
                            at: n,
                            error: canceled(format!("returned more than {n} rows")),
                            rule: name,
                        });
                    }
                }
                Predicate::BytesSent(n) => {
                    if limits.bytes.as_ref().is_none_or(|b| n < b.at) {
                        limits.bytes = Some(Breach {
                            at: n,
                            error: canceled(format!("sent more than {}", human_bytes(n))),
                            rule: name,
                        });
                    }
                }
            }
        }
        limits
    }

    /// `log` rules over their limit at the statement's end.
    pub fn at_end(
        &self,
        queue: usize,
        elapsed: Duration,
        rows: u64,
        bytes: u64,
        fired: &mut Vec<Fired>,
    ) {
        for rule in self.watching(queue) {
            if rule.action != RuleAction::Log {
                continue;
            }
            let over = match rule.predicate {
                Predicate::ScanBytes(_) => false, // checked before the start
                Predicate::Elapsed(t) => elapsed > t,
                Predicate::Rows(n) => rows > n,
                Predicate::BytesSent(n) => bytes > n,
            };
            if over {
                fired.push(Fired {
                    rule: rule.name.clone(),
                    action: RuleAction::Log,
                });
            }
        }
    }
}

/// 54000: the statement would scan more than a rule allows.
pub fn scan_refusal(rule: &str, scan_bytes: u64, limit: u64) -> PgError {
    PgError::new(
        SqlState::PROGRAM_LIMIT_EXCEEDED,
        format!(
            "statement refused by workload rule \"{rule}\": it would scan {}, over the rule's {}",
            human_bytes(scan_bytes),
            human_bytes(limit)
        ),
    )
    .with_hint("add a filter on the partition columns, or ask for a queue the rule does not watch")
}

/// `1.5 GB`, `300 MB`, `12 bytes`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "kB", "MB", "GB", "TB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} bytes")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
