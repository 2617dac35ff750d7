//! Workload management: the pipeline's admit stage asks here which queue a
//! statement belongs to, waits for one of its slots (`slots.rs`), and learns the
//! limits it runs under — the queue's statement timeout and row cap, and the
//! query monitoring rules (`rules.rs`) that log, cancel or refuse it.
//!
//! Only statements that do work queue: lake, upstream, cross-engine and view
//! statements. Session commands (SET, BEGIN, COMMIT…), cache hits and refusals
//! never wait, so a transaction can always end.
//!
//! Nothing here imports `server`: the session passes what a queue matches on.

pub mod rules;
pub mod slots;

use std::sync::Arc;
use std::time::Duration;

use crate::config::{Priority, QUEUE_ROUTES, QueueConfig, WorkloadConfig, values::glob};
use crate::error::{PgError, SqlState};

pub use rules::{Breach, Fired, Limits, Rules};
pub use slots::{Acquired, InLine, Slot};

pub struct Workload {
    queues: Vec<Queue>,
    /// The queue statements no other queue matches go to.
    default: usize,
    slots: Arc<slots::Slots>,
    pub rules: Rules,
    /// Each queue's limits (its own and its `cancel` rules'), by queue index.
    limits: Vec<Arc<Limits>>,
    needs_fingerprint: bool,
    needs_tags: bool,
}

/// One queue: what it matches and what it allows.
pub struct Queue {
    pub name: Arc<str>,
    pub priority: Priority,
    pub queue_timeout: Option<Duration>,
    pub statement_timeout: Option<Duration>,
    pub row_limit: Option<u64>,
    conditions: Option<QueueConfig>,
}

/// What a queue matches on, for one statement.
pub struct Statement<'a> {
    pub user: &'a str,
    pub roles: &'a [String],
    pub groups: &'a [String],
    pub application: &'a str,
    pub query_group: Option<&'a str>,
    /// sqlcommenter tags (read only when a queue matches on them).
    pub tags: &'a [(String, String)],
    pub route: &'static str,
    /// Query-group fingerprint (computed only when a queue matches on it).
    pub fingerprint: u64,
}

impl Workload {
    /// `None` when `[workload]` configures nothing: admission then costs nothing.
    pub fn new(config: &WorkloadConfig) -> Option<Arc<Workload>> {
        if !config.is_active() {
            return None;
        }
        let mut queues: Vec<Queue> = config
            .queues
            .iter()
            .map(|q| Queue {
                name: Arc::from(q.name.as_str()),
                priority: q.priority,
                queue_timeout: (q.queue_timeout_secs > 0)
                    .then(|| Duration::from_secs(q.queue_timeout_secs)),
                statement_timeout: q.statement_timeout_secs.map(Duration::from_secs),
                row_limit: q.row_limit,
                conditions: q.has_conditions().then(|| q.clone()),
            })
            .collect();
        let default = match queues
            .iter()
            .position(|q| q.name.eq_ignore_ascii_case("default"))
        {
            Some(i) => i,
            None => {
                queues.push(Queue {
                    name: Arc::from("default"),
                    priority: Priority::Normal,
                    queue_timeout: None,
                    statement_timeout: None,
                    row_limit: None,
                    conditions: None,
                });
                queues.len() - 1
            }
        };
        let slot_limits = queues
            .iter()
            .map(|q| {
                let slots = config
                    .queues
                    .iter()
                    .find(|c| *c.name == *q.name)
                    .map_or(usize::MAX, |c| c.slots);
                (slots, q.priority)
            })
            .collect();
        let needs_fingerprint = config.queues.iter().any(|q| !q.fingerprints.is_empty());
        let needs_tags = config
            .queues
            .iter()
            .any(|q| !q.tags.is_empty() || !q.applications.is_empty());
        let rules = Rules::new(&config.rules, &queues);
        let limits = queues
            .iter()
            .enumerate()
            .map(|(i, q)| Arc::new(rules.limits(i, q, None)))
            .collect();
        Some(Arc::new(Workload {
            rules,
            limits,
            slots: slots::Slots::new(slot_limits, config.max_concurrency),
            queues,
            default,
            needs_fingerprint,
            needs_tags,
        }))
    }

    /// Whether statements of this route queue (session commands, cache hits and
    /// refusals never do).
    pub fn queues_route(route: &str) -> bool {
        QUEUE_ROUTES.contains(&route)
    }

    pub fn needs_fingerprint(&self) -> bool {
        self.needs_fingerprint
    }

    /// Whether queues match on the statement's sqlcommenter tags.
    pub fn needs_tags(&self) -> bool {
        self.needs_tags
    }

    /// The first queue, in configured order, whose conditions all hold.
    pub fn classify(&self, s: &Statement<'_>) -> usize {
        self.queues
            .iter()
            .position(|q| q.conditions.as_ref().is_some_and(|c| matches(c, s)))
            .unwrap_or(self.default)
    }

    /// What a statement of the queue runs under.
    pub fn limits(&self, queue: usize) -> &Arc<Limits> {
        &self.limits[queue]
    }

    pub fn queue(&self, index: usize) -> &Queue {
        &self.queues[index]
    }

    pub fn queues(&self) -> impl Iterator<Item = (usize, &Queue)> {
        self.queues.iter().enumerate()
    }

    /// A slot of the queue now, or a place in its line.
    pub fn acquire(&self, queue: usize) -> Acquired {
        self.slots.acquire(queue)
    }

    /// (running, waiting, slots) of a queue; `slots` is `usize::MAX` when unlimited.
    pub fn usage(&self, queue: usize) -> (usize, usize, usize) {
        let (running, waiting) = self.slots.usage(queue);
        (running, waiting, self.slots.limit(queue))
    }

    /// The NOTICE a statement gets when it has to wait.
    pub fn waiting_notice(&self, queue: usize, ahead: usize) -> String {
        let q = &self.queues[queue];
        let (running, _, slots) = self.usage(queue);
        let why = if running < slots {
            "the gateway's max_concurrency is reached".to_owned()
        } else {
            format!("all {slots} of its slots are busy")
        };
        let limit = match q.queue_timeout {
            Some(t) => format!("; it gives up after {} s", t.as_secs()),
            None => String::new(),
        };
        format!(
            "statement waits in workload queue \"{}\": {why}, {ahead} statement(s) ahead{limit}",
            q.name
        )
    }

    /// 53300, naming the queue: the statement waited its queue timeout.
    pub fn queue_timeout_error(&self, queue: usize) -> PgError {
        let q = &self.queues[queue];
        let secs = q.queue_timeout.map_or(0, |t| t.as_secs());
        PgError::new(
            SqlState::TOO_MANY_CONNECTIONS,
            format!(
                "statement waited {secs} s in workload queue \"{}\" without getting a slot",
                q.name
            ),
        )
        .with_hint(
            "try again later; the queue's slots and queue_timeout_secs are in [[workload.queues]]",
        )
    }
}

/// Whether every condition of a queue holds for the statement.
fn matches(q: &QueueConfig, s: &Statement<'_>) -> bool {
    let any = |patterns: &[String], value: &str| {
        patterns.is_empty() || patterns.iter().any(|p| glob_ci(p, value))
    };
    let any_of = |patterns: &[String], values: &[String]| {
        patterns.is_empty()
            || values
                .iter()
                .any(|v| patterns.iter().any(|p| glob_ci(p, v)))
    };
    any_of(&q.roles, s.roles)
        && any_of(&q.groups, s.groups)
        && any(&q.users, s.user)
        && any(&q.applications, s.application)
        && (q.query_groups.is_empty() || s.query_group.is_some_and(|g| any(&q.query_groups, g)))
        && (q.routes.is_empty() || q.routes.iter().any(|r| r == s.route))
        && (q.fingerprints.is_empty()
            || q.fingerprints
                .iter()
                .any(|f| u64::from_str_radix(f, 16).is_ok_and(|f| f == s.fingerprint)))
        && q.tags.iter().all(|(name, pattern)| {
            s.tags
                .iter()
                .any(|(k, v)| k.eq_ignore_ascii_case(name) && glob_ci(pattern, v))
        })
}

fn glob_ci(pattern: &str, value: &str) -> bool {
    if pattern.bytes().any(|b| b.is_ascii_uppercase())
        || value.bytes().any(|b| b.is_ascii_uppercase())
    {
        glob(&pattern.to_ascii_lowercase(), &value.to_ascii_lowercase())
    } else {
        glob(pattern, value)
    }
}

#[cfg(test)]
mod tests;
