//! The one decision: where a query string's statements go.
//!
//! [`Router::decide`] is called once per query string (a simple query, or a Parse)
//! and returns a [`Decision`] every later stage consumes: the session runs its
//! [`Plan`], the result cache reads its [`Decision::cache_use`], the relay applies
//! its [`Effect`]s to the session's books. Nothing downstream asks "lake or
//! upstream?" again; [`runs_on_lake`] is the only place that question is answered.
//!
//! Adding a route means adding a [`Step`] (or [`Plan`]) variant here and its handler
//! in the session's run stage (`server::session::pipeline`).
//!
//! (Over 600 lines: the decision's types and the one function that makes them are
//! kept side by side, so a reader sees every route and how it is chosen in one
//! file; the statement facts it reads live in `route::facts`.)

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};

use datafusion::sql::sqlparser::ast::{CloseCursor, Reset, Set, Statement};

use super::facts::Analysis;
use super::label::Label;
use super::view_ddl::{self, MatViewStatement};
use super::{Command, classify, cursor_motion, is_read_only, scan, statement_kind};
use crate::engine::Engine;
use crate::error::{PgError, SqlState};

/// Texts longer than this are parsed each time rather than memoised.
const MEMO_MAX_TEXT: usize = 64 * 1024;
/// The memo's budget, weighed by text length plus an estimate of its syntax tree.
const MEMO_BYTES: u64 = 48 * 1024 * 1024;

/// One query text, parsed once: memoised per text, so a repeated statement (a
/// dashboard's, a prepared statement re-Parsed by a pool) is not parsed again.
pub struct Parsed {
    pub statements: Result<Vec<Statement>, PgError>,
    /// What the text reads and writes, for the result cache (computed on first use:
    /// it walks and prints the tree, which only the cache needs).
    analysis: OnceLock<Analysis>,
    /// Per statement, what routing needs (computed on first use): a memo hit
    /// decides without walking a syntax tree.
    facts: OnceLock<Vec<StatementFacts>>,
    /// Query groups and tables per statement, for the record stage (computed on
    /// first use, when something records statements).
    labels: OnceLock<Labels>,
}

struct Labels {
    each: Vec<Arc<Label>>,
    whole: Arc<Label>,
    /// The text as relayed: grouped by its tokens, like texts relayed unparsed.
    relayed: Arc<Label>,
}

/// What routing needs to know about one statement, independent of the session.
struct StatementFacts {
    /// The schema each table reference names (lower case; `None`: unqualified).
    relations: Vec<Option<String>>,
    read_only: bool,
    /// What the statement is to a session without an upstream.
    step: Result<Step, PgError>,
}

impl Parsed {
    pub fn analysis(&self) -> &Analysis {
        self.analysis.get_or_init(|| match &self.statements {
            Ok(statements) => Analysis::of(statements),
            Err(_) => Analysis::Unparsed,
        })
    }

    fn labels(&self, sql: &str) -> &Labels {
        self.labels.get_or_init(|| {
            let each: Vec<Arc<Label>> = match &self.statements {
                Ok(statements) => statements
                    .iter()
                    .map(|s| Arc::new(Label::of_statement(s)))
                    .collect(),
                Err(_) => Vec::new(),
            };
            let whole = if each.is_empty() {
                Arc::new(Label::of_text(sql))
            } else {
                Arc::new(Label::combined(&each))
            };
            let relayed = Arc::new(Label {
                fingerprint: super::fingerprint::of_text(sql),
                ..(*whole).clone()
            });
            Labels {
                each,
                whole,
                relayed,
            }
        })
    }

    fn facts(&self) -> &[StatementFacts] {
        self.facts.get_or_init(|| match &self.statements {
            Ok(statements) => statements
                .iter()
                .map(|s| StatementFacts {
                    relations: super::relation_schemas(s),
                    read_only: is_read_only(s),
                    step: classify(s.clone()),
                })
                .collect(),
            Err(_) => Vec::new(),
        })
    }
}

/// The gateway view names DDL is recognised for (implemented by `MatViews`).
pub trait ViewNames: Send + Sync {
    /// The gateway view schemas (lower case).
    fn schemas(&self) -> &[String];
    /// The schema of an unqualified view name, when exactly one view has it.
    fn resolve_unqualified(&self, name: &str) -> Option<String>;
}

/// What the decision depends on besides the text: the session's situation now.
pub struct Context<'a> {
    /// Set when the session forwards to a Redshift upstream.
    pub forwarding: Option<Forwarding<'a>>,
    /// The session's roles may write (upstream).
    pub may_write: bool,
    /// Gateway views, when configured.
    pub views: Option<&'a dyn ViewNames>,
    /// Whether a cursor of this name is open in Sluice (else it may be upstream's).
    pub local_cursor: &'a dyn Fn(&str) -> bool,
    /// The result cache is on: the decision carries the text's analysis.
    pub want_analysis: bool,
}

/// A forwarding session's routing state.
pub struct Forwarding<'a> {
    /// Lake schemas (lower case) of the engine's current catalog generation.
    pub lake_schemas: &'a HashSet<String>,
    /// The upstream session broke inside a transaction the client has not ended.
    pub lost_in_tx: bool,
}

/// Where one query string goes, and what later stages need to know about it.
pub struct Decision {
    pub plan: Plan,
    /// The parsed text (with its analysis), whenever the decision parsed it or the
    /// context asked for it (`want_analysis`); `None` for gateway view DDL, which
    /// invalidates what it changes itself, and for texts settled without parsing.
    pub parsed: Option<Arc<Parsed>>,
    /// What relaying (or running) the text changes in the session's books.
    pub effects: Vec<Effect>,
}

pub enum Plan {
    /// An empty query string (EmptyQueryResponse).
    Empty,
    /// Answered by Sluice, statement by statement, in order.
    Local(Vec<Step>),
    /// Relayed verbatim to the session's upstream.
    Relay,
    /// Refused before anything runs.
    Refuse(PgError),
}

/// One statement Sluice answers itself.
#[derive(Debug, Clone)]
pub enum Step {
    /// A session command (SET, SHOW, BEGIN, FETCH, …).
    Session(Command),
    /// A read-only query on the lake engine.
    Lake(Arc<Statement>),
    /// A lake query that may also read upstream tables (forwarding sessions):
    /// planned with the session's Redshift tables laid over the lake catalog.
    CrossEngine(Arc<Statement>),
    /// `DECLARE name [BINARY] CURSOR [WITH HOLD] FOR query`: a named portal over a
    /// lake query.
    DeclareCursor {
        name: String,
        binary: bool,
        hold: bool,
        query: Arc<Statement>,
    },
    /// `CREATE / REFRESH / DROP MATERIALIZED VIEW` on a gateway view schema.
    ViewDdl(MatViewStatement),
    /// The statement fails when its turn comes (earlier ones still run).
    Refuse(PgError),
}

impl Step {
    /// The session command this step is, if it is one.
    pub fn command(&self) -> Option<&Command> {
        match self {
            Step::Session(c) => Some(c),
            _ => None,
        }
    }

    /// A short label for logs and (later) metrics: which route the statement took.
    pub fn route_name(&self) -> &'static str {
        match self {
            Step::Session(_) => "session",
            Step::Lake(_) | Step::DeclareCursor { .. } => "lake",
            Step::CrossEngine(_) => "cross-engine",
            Step::ViewDdl(_) => "view",
            Step::Refuse(_) => "refused",
        }
    }
}

/// Book-keeping the session does because of a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// A SET relayed upstream also applies to the session's copy of the settings
    /// (lake queries of the session see it).
    MirrorSet { name: String, value: Option<String> },
    /// A RESET relayed upstream (`None`: RESET ALL).
    MirrorReset(Option<String>),
    /// Another SET form relayed upstream (`SET ROLE`, …): not mirrored.
    UpstreamSetting,
    /// Cursors declared upstream: portals of the upstream session.
    UpstreamCursors(Vec<String>),
    /// DISCARD relayed: every prepared statement and portal is gone, both sides.
    DiscardAll,
    /// DEALLOCATE relayed (`None`: ALL).
    DeallocateUpstream(Option<String>),
    /// COMMIT/ROLLBACK after the upstream session was lost mid-transaction: the
    /// session ends the (already failed) transaction itself.
    EndLostTransaction,
}

/// What the result cache does with a decided text.
pub enum CacheUse<'a> {
    /// One cacheable read: its normalised text and tables; `on_lake` says where it
    /// runs (its answer is keyed by role policy there, by upstream identity else).
    Read {
        text: &'a str,
        tables: &'a [String],
        on_lake: bool,
    },
    /// Writes these tables (`None`: unknown ones).
    Write(Option<Vec<String>>),
    Nothing,
}

impl Decision {
    fn new(plan: Plan, parsed: Option<Arc<Parsed>>) -> Decision {
        Decision {
            plan,
            parsed,
            effects: Vec::new(),
        }
    }

    /// The text's meaning for the result cache (`Nothing` unless the context asked
    /// for the analysis). `forwards_writes`: the session may send writes upstream.
    pub fn cache_use(&self, forwards_writes: bool) -> CacheUse<'_> {
        let Some(parsed) = &self.parsed else {
            return CacheUse::Nothing;
        };
        match parsed.analysis() {
            Analysis::Writes { tables, .. } => CacheUse::Write(tables.clone()),
            // Unparsed text only reaches an upstream from a role that may write.
            Analysis::Unparsed if forwards_writes => CacheUse::Write(None),
            Analysis::Read { text, tables, .. } => CacheUse::Read {
                text,
                tables,
                on_lake: !matches!(self.plan, Plan::Relay),
            },
            _ => CacheUse::Nothing,
        }
    }

    /// The record stage's label for the whole text `sql` (what a relay runs as one).
    ///
    /// Relayed text is grouped by its tokens (`fingerprint::of_text`) whether or not
    /// Sluice parsed it: the relay's fast path settles most texts without parsing,
    /// and one statement must land in one group either way.
    pub fn label(&self, sql: &str) -> Arc<Label> {
        match &self.parsed {
            Some(p) if matches!(self.plan, Plan::Relay) => p.labels(sql).relayed.clone(),
            Some(p) => p.labels(sql).whole.clone(),
            None => Arc::new(Label::of_text(sql)),
        }
    }

    /// The label of the `index`th statement of `sql` (a local step).
    pub fn step_label(&self, sql: &str, index: usize) -> Arc<Label> {
        // View DDL is recognised without parsing the whole text: its label comes
        // from the statement (the view written; what its query reads).
        if let Plan::Local(steps) = &self.plan
            && let Some(Step::ViewDdl(v)) = steps.get(index)
        {
            return Arc::new(Label::of_view_ddl(sql, v));
        }
        match &self.parsed {
            Some(p) => {
                let labels = p.labels(sql);
                labels.each.get(index).unwrap_or(&labels.whole).clone()
            }
            None => Arc::new(Label::of_text(sql)),
        }
    }

    /// Whether every statement only reads (`None`: not parsed).
    pub fn read_only(&self) -> Option<bool> {
        let parsed = self.parsed.as_ref()?;
        parsed.statements.as_ref().ok()?;
        Some(parsed.facts().iter().all(|f| f.read_only))
    }

    /// The text gives the session state no cache key can hold (temporary tables,
    /// `SET ROLE`, `set_config`, or text relayed unparsed).
    pub fn private_state(&self, forwards_writes: bool) -> bool {
        let Some(parsed) = &self.parsed else {
            return false;
        };
        let a = parsed.analysis();
        a.creates_temp() || (matches!(a, Analysis::Unparsed) && forwards_writes)
    }
}

/// Parses (through the engine's parser, with its compatibility rewrites) and
/// decides; owns the per-text memo.
pub struct Router {
    engine: Arc<Engine>,
    memo: moka::sync::Cache<Arc<str>, Arc<Parsed>>,
}

impl Router {
    pub fn new(engine: Arc<Engine>) -> Router {
        Router {
            engine,
            memo: moka::sync::Cache::builder()
                .max_capacity(MEMO_BYTES)
                .weigher(|k: &Arc<str>, _| u32::try_from(k.len() * 8 + 512).unwrap_or(u32::MAX))
                .build(),
        }
    }

    /// The parsed text, from the memo when it was seen before.
    pub fn parsed(&self, sql: &str) -> Arc<Parsed> {
        if let Some(p) = self.memo.get(sql) {
            return p;
        }
        let parsed = Arc::new(Parsed {
            statements: self.engine.parse(sql),
            analysis: OnceLock::new(),
            facts: OnceLock::new(),
            labels: OnceLock::new(),
        });
        if sql.len() <= MEMO_MAX_TEXT {
            self.memo.insert(Arc::from(sql), parsed.clone());
        }
        parsed
    }

    /// Decides where the statements of `sql` go.
    pub fn decide(&self, sql: &str, cx: &Context<'_>) -> Decision {
        // Gateway view DDL is recognised before parsing (sqlparser has no REFRESH).
        if let Some(views) = cx.views
            && let Some(recognized) =
                view_ddl::recognize(sql, views.schemas(), |n| views.resolve_unqualified(n))
        {
            let step = match recognized {
                Ok(statement) => Step::ViewDdl(statement),
                Err(e) => Step::Refuse(e),
            };
            return Decision::new(Plan::Local(vec![step]), None);
        }
        // `sluice.terminate(pid)`, and `pg_terminate_backend(pid)` unless it names
        // one of a forwarding session's upstream backends (pids below the gateway's).
        match super::terminate_command(sql) {
            Some(Ok(Command::Terminate { pid, function }))
                if cx.forwarding.is_none()
                    || function == "terminate"
                    || pid >= i64::from(super::FIRST_SESSION_PID) =>
            {
                let step = Step::Session(Command::Terminate { pid, function });
                return Decision::new(Plan::Local(vec![step]), None);
            }
            Some(Err(e)) => return Decision::new(Plan::Local(vec![Step::Refuse(e)]), None),
            _ => {}
        }
        let analysed = cx.want_analysis.then(|| self.parsed(sql));
        // FETCH/MOVE forms the parser lacks: to whichever side holds the cursor.
        if let Some(motion) = cursor_motion::parse(sql) {
            let local = |cmd: Command| Plan::Local(vec![Step::Session(cmd)]);
            match (cx.forwarding.is_some(), motion) {
                (true, Ok(Command::Fetch { cursor, .. })) if !(cx.local_cursor)(&cursor) => {
                    return Decision::new(Plan::Relay, analysed);
                }
                (_, Ok(cmd)) => return Decision::new(local(cmd), analysed),
                (false, Err(e)) => {
                    return Decision::new(Plan::Local(vec![Step::Refuse(e)]), analysed);
                }
                // Upstream may know the form: decided like any other text below.
                (true, Err(_)) => {}
            }
        }
        match &cx.forwarding {
            None => self.decide_local(sql, analysed),
            Some(f) => self.decide_forwarding(sql, f, cx, analysed),
        }
    }

    /// A session without an upstream: everything runs here.
    fn decide_local(&self, sql: &str, analysed: Option<Arc<Parsed>>) -> Decision {
        let parsed = analysed.unwrap_or_else(|| self.parsed(sql));
        let known = Some(parsed.clone());
        let plan = match &parsed.statements {
            Err(e) => Plan::Refuse(e.clone()),
            Ok(statements) if statements.is_empty() => Plan::Empty,
            Ok(_) => Plan::Local(
                parsed
                    .facts()
                    .iter()
                    .map(|f| f.step.clone().unwrap_or_else(Step::Refuse))
                    .collect(),
            ),
        };
        Decision::new(plan, known)
    }

    fn decide_forwarding(
        &self,
        sql: &str,
        f: &Forwarding<'_>,
        cx: &Context<'_>,
        analysed: Option<Arc<Parsed>>,
    ) -> Decision {
        // The fast path: a writer's text that plainly goes upstream is not parsed.
        if cx.may_write && !f.lost_in_tx && scan::plainly_upstream(sql, f.lake_schemas) {
            return Decision::new(Plan::Relay, analysed);
        }
        let parsed = analysed.unwrap_or_else(|| self.parsed(sql));
        let known = Some(parsed.clone());
        let statements = match &parsed.statements {
            Ok(s) => s,
            // Redshift understands dialect DataFusion's parser does not, but only a
            // role that may write may send what Sluice cannot check.
            Err(_) if cx.may_write => return Decision::new(Plan::Relay, known),
            Err(e) => {
                let refusal = PgError::new(
                    SqlState::INSUFFICIENT_PRIVILEGE,
                    format!(
                        "Sluice cannot parse this statement, so it cannot check that it only reads, \
                         and your roles are read-only ({})",
                        e.message
                    ),
                )
                .with_hint("rewrite it in PostgreSQL syntax, or ask for a role with write = true");
                return Decision::new(Plan::Refuse(refusal), known);
            }
        };
        if statements.is_empty() {
            return Decision::new(Plan::Relay, known);
        }
        let mut upstream = None;
        let mut effects = Vec::new();
        let facts = parsed.facts();
        for (stmt, facts) in statements.iter().zip(facts) {
            let side = match statement_side(stmt, facts, f, cx) {
                Ok(side) => side,
                Err(e) => return Decision::new(Plan::Refuse(e), known),
            };
            let is_upstream = matches!(side, Side::Upstream);
            if upstream.is_some_and(|prev| prev != is_upstream) {
                let mixed = PgError::new(
                    SqlState::FEATURE_NOT_SUPPORTED,
                    "this query string mixes lake statements with statements for Redshift",
                )
                .with_hint("send lake and Redshift statements as separate queries");
                return Decision::new(Plan::Refuse(mixed), known);
            }
            upstream = Some(is_upstream);
            match side {
                Side::Upstream => effects.extend(relay_effect(stmt, facts)),
                Side::Local {
                    ends_lost_transaction: true,
                } => effects.push(Effect::EndLostTransaction),
                Side::Local { .. } => {}
            }
        }
        let plan = if upstream == Some(true) {
            Plan::Relay
        } else {
            Plan::Local(
                facts
                    .iter()
                    .map(|facts| match &facts.step {
                        Ok(Step::Lake(q))
                            if !only_lake_tables(&facts.relations, f.lake_schemas) =>
                        {
                            Step::CrossEngine(q.clone())
                        }
                        Ok(step) => step.clone(),
                        Err(e) => Step::Refuse(e.clone()),
                    })
                    .collect(),
            )
        };
        Decision {
            plan,
            parsed: known,
            effects,
        }
    }
}

enum Side {
    Local { ends_lost_transaction: bool },
    Upstream,
}

fn is_sluice_name(name: &str) -> bool {
    name.to_lowercase().starts_with("sluice.")
}

/// Settings that belong to the gateway, not the upstream: its session hygiene
/// timeouts (Redshift has no such GUCs; the gateway enforces them between client
/// and gateway) and the lake engine's `datafusion.*` options. A forwarding session
/// answers SET/RESET of them itself and never sends them upstream.
pub fn gateway_setting(name: &str) -> bool {
    let name = name.to_lowercase();
    is_sluice_name(&name)
        || name.starts_with("datafusion.")
        || name == "idle_session_timeout"
        || name == "idle_in_transaction_session_timeout"
}

/// Where one parsed statement of a forwarding session goes, or why the role may not
/// send it.
fn statement_side(
    stmt: &Statement,
    facts: &StatementFacts,
    f: &Forwarding<'_>,
    cx: &Context<'_>,
) -> Result<Side, PgError> {
    let local = Side::Local {
        ends_lost_transaction: false,
    };
    let here = match stmt {
        Statement::ShowVariable { variable } => {
            let name: Vec<&str> = variable.iter().map(|i| i.value.as_str()).collect();
            gateway_setting(&name.join("."))
                || (variable.len() == 1 && super::is_console_view(&variable[0].value))
        }
        Statement::Set(Set::SingleAssignment { variable, .. }) => {
            gateway_setting(&variable.to_string())
        }
        Statement::Reset(r) => match &r.reset {
            Reset::ConfigurationParameter(name) => gateway_setting(&name.to_string()),
            Reset::ALL => false,
        },
        Statement::Call(func) => is_sluice_name(&func.name.to_string()),
        Statement::Fetch { name, .. } => (cx.local_cursor)(&name.value),
        Statement::Close {
            cursor: CloseCursor::Specific { name },
        } => (cx.local_cursor)(&name.value),
        // After the upstream session was lost mid-transaction, the client's
        // COMMIT/ROLLBACK ends the (already failed) transaction here.
        Statement::Commit { .. } | Statement::Rollback { .. } if f.lost_in_tx => {
            return Ok(Side::Local {
                ends_lost_transaction: true,
            });
        }
        _ => runs_on_lake(&facts.relations, f.lake_schemas),
    };
    if here {
        return Ok(local);
    }
    if !cx.may_write && !facts.read_only {
        return Err(refuse_write(&statement_kind(stmt)));
    }
    Ok(Side::Upstream)
}

/// The book-keeping relaying `stmt` upstream implies.
fn relay_effect(stmt: &Statement, facts: &StatementFacts) -> Option<Effect> {
    match stmt {
        Statement::Set(_) => match &facts.step {
            Ok(Step::Session(Command::Set { name, value })) => Some(Effect::MirrorSet {
                name: name.clone(),
                value: value.clone(),
            }),
            _ => Some(Effect::UpstreamSetting),
        },
        Statement::Reset(_) => match &facts.step {
            Ok(Step::Session(Command::Reset(name))) => Some(Effect::MirrorReset(name.clone())),
            _ => Some(Effect::UpstreamSetting),
        },
        // A cursor declared upstream is a portal there: clients (psycopg's named
        // cursors) Describe it by name.
        Statement::Declare { stmts } => Some(Effect::UpstreamCursors(
            stmts
                .iter()
                .flat_map(|d| d.names.iter().map(|n| n.value.clone()))
                .collect(),
        )),
        // DISCARD ALL / DEALLOCATE ALL drop upstream statements; the client
        // re-prepares, so the names are forgotten (local ones too, for DISCARD).
        Statement::Discard { .. } => Some(Effect::DiscardAll),
        Statement::Deallocate { name, .. } => Some(Effect::DeallocateUpstream(
            (!(name.value.eq_ignore_ascii_case("all") && name.quote_style.is_none()))
                .then(|| name.value.clone()),
        )),
        _ => None,
    }
}

/// The lake-or-upstream question, answered in one place: a statement runs on the
/// lake (DataFusion) when it names a table in a lake schema; else it goes to the
/// upstream. Gateway view schemas are lake schemas. `relations`: the schema each
/// table reference names ([`super::relation_schemas`]).
pub fn runs_on_lake(relations: &[Option<String>], lake_schemas: &HashSet<String>) -> bool {
    relations
        .iter()
        .any(|s| s.as_ref().is_some_and(|s| lake_schemas.contains(s)))
}

/// Whether every table a lake statement names is qualified with a lake schema (no
/// upstream table can be involved).
fn only_lake_tables(relations: &[Option<String>], lake_schemas: &HashSet<String>) -> bool {
    relations
        .iter()
        .all(|s| s.as_ref().is_some_and(|s| lake_schemas.contains(s)))
}

/// The refusal a read-only role gets for a statement that would write upstream.
pub fn refuse_write(kind: &str) -> PgError {
    PgError::new(
        SqlState::INSUFFICIENT_PRIVILEGE,
        format!(
            "permission denied: your Sluice roles are read-only, so {kind} is not sent to Redshift"
        ),
    )
    .with_hint("ask for a role with write = true")
}

/// Where a gateway view's defining query runs.
pub enum ViewSource {
    Lake(Box<Statement>),
    Upstream,
}

/// Decides a view query's source: `lake_schemas` is `None` without an upstream
/// (then everything is a lake query). Text Sluice cannot parse is Redshift's.
pub fn view_source(
    statements: Result<Vec<Statement>, PgError>,
    lake_schemas: Option<&HashSet<String>>,
) -> Result<ViewSource, PgError> {
    let mut statements = match (statements, lake_schemas) {
        (Ok(s), _) => s,
        (Err(e), None) => return Err(e),
        (Err(_), Some(_)) => return Ok(ViewSource::Upstream),
    };
    if statements.len() != 1 || !matches!(statements[0], Statement::Query(_)) {
        return Err(PgError::new(
            SqlState::FEATURE_NOT_SUPPORTED,
            "a materialized view is defined by one SELECT",
        ));
    }
    let stmt = statements.remove(0);
    match lake_schemas {
        // Naming the lake at all makes it a lake (or cross-engine) query; upstream
        // tables in it are read through the refresh identity.
        Some(lake) if !runs_on_lake(&super::relation_schemas(&stmt), lake) => {
            Ok(ViewSource::Upstream)
        }
        _ => Ok(ViewSource::Lake(Box::new(stmt))),
    }
}

#[cfg(test)]
mod tests;
