//! Forwarding a session's statements to its Redshift upstream.
//!
//! A session forwards when its database has an upstream and its roles give it a
//! Redshift identity. Then every statement that does not name a lake table (and is not
//! a `sluice.*` command) goes upstream verbatim: the raw frames are relayed, so
//! Redshift dialect Sluice cannot parse still works (for roles that may write).
//!
//! The upstream session is opened at the first forwarded statement and kept until the
//! client leaves (session-pinned). Extended-protocol messages are forwarded as they
//! come and answered in order: before Sluice answers a message itself, it makes the
//! upstream answer everything forwarded so far (Flush), so replies never overtake
//! each other.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use datafusion::sql::sqlparser::ast::{CloseCursor, Reset, Set, Statement};

use super::{Session, Tx};
use crate::redshift::credentials::DbIdentity;
use crate::redshift::relay::{self, Outcome, RelayError, Until};
use crate::redshift::{self, Held, Upstream, wire};
use crate::route;
use crate::server::Shared;
use crate::server::connection::{Disconnect, FLUSH_THRESHOLD};
use crate::server::error::{PgError, SqlState};
use crate::server::frame::{self, Frame, Target as Named};
use pgwire::messages::startup::ParameterStatus;

pub(super) struct Forwarding {
    pub(super) upstream: Arc<Upstream>,
    pub(super) identity: DbIdentity,
    /// Startup parameters the upstream session is opened with.
    pub(super) params: Vec<(String, String)>,
    pub(super) held: Option<Held>,
    /// Lake schemas (lower case): statements naming them run locally. Re-read when
    /// the engine's `lake_generation` moves (a Glue refresh mounted or dropped one).
    pub(super) lake_schemas: HashSet<String>,
    lake_generation: u64,
    /// Upstream tables for cross-engine statements, under this session's identity.
    pub(super) remote: crate::redshift::table::RemoteCatalog,
    /// Prepared statements and portals that live upstream.
    // Looked up on every Bind and Execute: foldhash, not SipHash (a client can only
    // slow its own session with colliding names).
    pub(super) statements: foldhash::HashSet<String>,
    pub(super) portals: foldhash::HashSet<String>,
    /// Answers the upstream still owes for forwarded extended-protocol messages.
    pub(super) owed: usize,
    /// Extended-protocol messages were forwarded since the last Sync.
    pub(super) pending_sync: bool,
    /// A statement failed in Sluice inside the upstream's transaction block: the
    /// upstream transaction is rolled back before anything else is forwarded.
    pub(super) abort_tx: bool,
    /// A relay is under way (a statement may still be running upstream).
    in_flight: bool,
    /// The upstream session broke inside a transaction: until the client ends it,
    /// forwarded statements fail with 25P02 rather than silently autocommit.
    pub(super) lost_in_tx: bool,
    /// A statement Sluice answered failed after upstream statements of the same
    /// pipeline ran in the upstream's implicit transaction: the Sync must roll them
    /// back, as PostgreSQL does, instead of committing them.
    pub(super) void_pipeline: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Local,
    Upstream,
}

impl Forwarding {
    /// Forwarding for a new session, if its database has an upstream and its roles
    /// grant a Redshift identity.
    pub(super) fn for_session(
        shared: &Shared,
        user: &str,
        roles: &[String],
        startup: &BTreeMap<String, String>,
    ) -> Option<Forwarding> {
        let database = startup
            .get("database")
            .filter(|d| !d.is_empty())
            .map(String::as_str)
            .unwrap_or(user);
        let upstream = shared.upstreams.for_database(database)?;
        let identity = redshift::identity_for(user, roles, &shared.access_rules().roles)?;
        let params: Vec<(String, String)> = startup
            .iter()
            .filter(|(k, _)| {
                !matches!(k.as_str(), "user" | "database" | "replication")
                    && !k.starts_with("_pq_.")
                    // The upstream session is opened with minted credentials: a
                    // driver's IdP parameters would ask it for a token exchange, and
                    // its client_protocol_version for Redshift's extended row
                    // descriptions, which Sluice told the client not to expect.
                    && !crate::server::settings::REDSHIFT_DRIVER_PARAMS.contains(&k.as_str())
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Some(Forwarding {
            remote: crate::redshift::table::RemoteCatalog::new(
                upstream.clone(),
                identity.clone(),
                &params,
            ),
            upstream,
            identity,
            params,
            held: None,
            lake_generation: shared.engine.lake_generation(),
            lake_schemas: shared.engine.lake_schemas(),
            statements: foldhash::HashSet::default(),
            portals: foldhash::HashSet::default(),
            owed: 0,
            pending_sync: false,
            in_flight: false,
            abort_tx: false,
            lost_in_tx: false,
            void_pipeline: false,
        })
    }
}

/// Leading keywords of the statements a forwarding session handles itself (or keeps
/// books on) even when they name no lake table.
const LOCAL_LEADING_WORDS: &[&str] = &[
    "set",
    "show",
    "reset",
    "fetch",
    "close",
    "declare",
    "call",
    "discard",
    "deallocate",
    "commit",
    "rollback",
    "end",
    "abort",
];

/// Whether a query string certainly goes upstream as it is: no statement starts with
/// one of `LOCAL_LEADING_WORDS` and no lake schema name is followed by `.`. The scan
/// errs towards `false` (then the text is parsed): text with comments, dollar quotes
/// or backslashes is never settled here, because those could hide a reference from a
/// scan that does not fully tokenize; inside string literals a match also says
/// `false`.
fn plainly_upstream(sql: &str, lake_schemas: &HashSet<String>) -> bool {
    // Non-ASCII text may hold Unicode whitespace the parser skips (`nyc\u{2003}.t`),
    // and \x0B is whitespace to the parser but not to `is_ascii_whitespace`.
    // One pass over the bytes (this runs for every simple query a writer sends).
    let b = sql.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'$' | b'\\' | 0x0B | 0x80..=0xFF => return false,
            b'-' | b'/' if b.get(i + 1) == Some(if c == b'-' { &b'-' } else { &b'*' }) => {
                return false;
            }
            _ => {}
        }
    }
    // A `;` inside a string starts a fake statement here: only ever more cautious.
    for statement in sql.split(';') {
        let start = statement.trim_start();
        let word_len = start
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
            .count();
        let word = &start[..word_len];
        if LOCAL_LEADING_WORDS
            .iter()
            .any(|w| w.eq_ignore_ascii_case(word))
        {
            return false;
        }
    }
    let is_ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80;
    let followed_by_dot = |mut i: usize| {
        while b.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        b.get(i) == Some(&b'.')
    };
    let names_lake = |name: &str| {
        !lake_schemas.is_empty()
            && (lake_schemas.contains(name) || lake_schemas.contains(&name.to_lowercase()))
    };
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'\'' || c == b'"' {
            // A literal or a quoted identifier, with doubled quotes inside.
            let start = i + 1;
            let mut j = start;
            loop {
                match b.get(j) {
                    None => return false, // unterminated: let the parser say so
                    Some(&q) if q == c => {
                        if b.get(j + 1) == Some(&c) {
                            j += 2;
                            continue;
                        }
                        break;
                    }
                    Some(_) => j += 1,
                }
            }
            if c == b'"'
                && followed_by_dot(j + 1)
                && names_lake(&sql[start..j].replace("\"\"", "\""))
            {
                return false;
            }
            i = j + 1;
        } else if is_ident(c) {
            let start = i;
            while i < b.len() && is_ident(b[i]) {
                i += 1;
            }
            if followed_by_dot(i) && names_lake(&sql[start..i]) {
                return false;
            }
        } else {
            i += 1;
        }
    }
    true
}

fn is_sluice_name(name: &str) -> bool {
    name.to_lowercase().starts_with("sluice.")
}

impl Session {
    /// Where one parsed statement goes, or why the role may not send it.
    fn statement_target(&mut self, stmt: &Statement) -> Result<Target, PgError> {
        self.follow_lake_changes();
        let Some(fwd) = self.forward.as_mut() else {
            return Ok(Target::Local);
        };
        let local = match stmt {
            Statement::ShowVariable { variable } => variable
                .first()
                .is_some_and(|i| i.value.eq_ignore_ascii_case("sluice")),
            Statement::Set(Set::SingleAssignment { variable, .. }) => {
                is_sluice_name(&variable.to_string())
            }
            Statement::Reset(r) => match &r.reset {
                Reset::ConfigurationParameter(name) => is_sluice_name(&name.to_string()),
                Reset::ALL => false,
            },
            Statement::Call(f) => is_sluice_name(&f.name.to_string()),
            Statement::Fetch { name, .. } => self.portals.contains_key(&name.value),
            Statement::Close {
                cursor: CloseCursor::Specific { name },
            } => self.portals.contains_key(&name.value),
            // After the upstream session was lost mid-transaction, the client's
            // COMMIT/ROLLBACK ends the (already failed) transaction here.
            Statement::Commit { .. } | Statement::Rollback { .. } if fwd.lost_in_tx => {
                fwd.lost_in_tx = false;
                true
            }
            _ => route::references_lake(stmt, |s| fwd.lake_schemas.contains(&s.to_lowercase())),
        };
        if local {
            return Ok(Target::Local);
        }
        if !self.policy.write && !route::is_read_only(stmt) {
            return Err(redshift::refuse_write(&route::statement_kind(stmt)));
        }
        match stmt {
            // Upstream settings also apply to lake queries where Sluice knows them.
            Statement::Set(set) => {
                if let Ok(route::Route::Session(route::Command::Set { name, value })) =
                    route::classify(Statement::Set(set.clone()))
                {
                    let _ = self.settings.set(&name, value.as_deref());
                }
                // A ROLLBACK may undo it upstream without Sluice's copy following:
                // from now on the session's settings cannot key cached answers.
                if self.tx != Tx::Idle {
                    self.cache_loses_track_of_settings();
                }
            }
            Statement::Reset(_) => {
                if let Ok(route::Route::Session(route::Command::Reset(name))) =
                    route::classify(stmt.clone())
                {
                    let _ = self.settings.reset(name.as_deref());
                }
                if self.tx != Tx::Idle {
                    self.cache_loses_track_of_settings();
                }
            }
            // A cursor declared upstream is a portal there: clients (psycopg's named
            // cursors) Describe it by name.
            Statement::Declare { stmts } => {
                for d in stmts {
                    fwd.portals.extend(d.names.iter().map(|n| n.value.clone()));
                }
            }
            Statement::Discard { .. } | Statement::Deallocate { .. } => {
                // DISCARD ALL / DEALLOCATE ALL drop upstream statements; the client
                // re-prepares, so forget the names (and local ones, for DISCARD).
                match stmt {
                    Statement::Discard { .. } => {
                        self.statements.clear();
                        self.portals.clear();
                        fwd.portals.clear();
                        fwd.statements.clear();
                    }
                    Statement::Deallocate { name, .. }
                        if !(name.value.eq_ignore_ascii_case("all")
                            && name.quote_style.is_none()) =>
                    {
                        fwd.statements.remove(&name.value);
                    }
                    _ => fwd.statements.clear(),
                }
            }
            _ => {}
        }
        Ok(Target::Upstream)
    }

    /// Re-reads the lake schemas after a Glue refresh changed them (one atomic load
    /// when nothing changed).
    pub(super) fn follow_lake_changes(&mut self) {
        let generation = self.shared.engine.lake_generation();
        if let Some(fwd) = self.forward.as_mut()
            && fwd.lake_generation != generation
        {
            fwd.lake_generation = generation;
            fwd.lake_schemas = self.shared.engine.lake_schemas();
        }
    }

    /// Where a query string goes without parsing it, when a scan settles it: a role
    /// that may write sends upstream every statement that names no lake schema and
    /// is not one of the commands Sluice keeps books on. `None`: parse it.
    /// (Parsing costs tens of microseconds per statement, tokenizing several; the
    /// scan a few hundred nanoseconds, which matters at pgbench rates.)
    fn quick_target(&self, sql: &str) -> Option<Target> {
        let fwd = self.forward.as_ref()?;
        if !self.policy.write || fwd.lost_in_tx {
            return None;
        }
        plainly_upstream(sql, &fwd.lake_schemas).then_some(Target::Upstream)
    }

    /// Where a query string goes. Text Sluice cannot parse is forwarded (Redshift
    /// understands dialect DataFusion's parser does not), but only for roles that
    /// may write: its effect cannot be checked.
    fn text_target(&mut self, sql: &str) -> Result<Target, PgError> {
        self.follow_lake_changes();
        // Gateway view DDL is recognised before parsing (sqlparser has no REFRESH).
        if self.matview_statement(sql).is_some() {
            return Ok(Target::Local);
        }
        // FETCH/MOVE forms the parser lacks: to whichever side holds the cursor.
        if let Some(Ok(route::Command::Fetch { cursor, .. })) = route::cursor_motion::parse(sql) {
            let local = self.portals.contains_key(&cursor);
            return Ok(if local {
                Target::Local
            } else {
                Target::Upstream
            });
        }
        if let Some(t) = self.quick_target(sql) {
            return Ok(t);
        }
        let statements = match self.shared.engine.parse(sql) {
            Ok(s) => s,
            Err(e) => {
                if self.policy.write {
                    return Ok(Target::Upstream);
                }
                return Err(PgError::new(
                    SqlState::INSUFFICIENT_PRIVILEGE,
                    format!(
                        "Sluice cannot parse this statement, so it cannot check that it only reads, \
                         and your roles are read-only ({})",
                        e.message
                    ),
                )
                .with_hint("rewrite it in PostgreSQL syntax, or ask for a role with write = true"));
            }
        };
        if statements.is_empty() {
            return Ok(Target::Upstream);
        }
        let mut target = None;
        for stmt in &statements {
            let t = self.statement_target(stmt)?;
            if target.is_some_and(|prev| prev != t) {
                return Err(PgError::new(
                    SqlState::FEATURE_NOT_SUPPORTED,
                    "this query string mixes lake statements with statements for Redshift",
                )
                .with_hint("send lake and Redshift statements as separate queries"));
            }
            target = Some(t);
        }
        Ok(target.unwrap_or(Target::Upstream))
    }

    /// Routes one frame of a forwarding session. `Ok(true)`: handled (forwarded);
    /// `Ok(false)`: the session answers it itself (after the upstream has answered
    /// everything forwarded before it).
    pub(super) async fn forward_dispatch(&mut self, frame: &Frame) -> Result<bool, Disconnect> {
        if self
            .forward
            .as_ref()
            .is_some_and(|f| f.abort_tx && !f.pending_sync && f.owed == 0)
        {
            Box::pin(self.roll_back_upstream()).await;
        }
        let Some(fwd) = self.forward.as_mut() else {
            return Ok(false);
        };
        let upstream = match frame.tag {
            b'Q' => {
                let Ok(sql) = frame::decode_query(&frame.body) else {
                    // Text in a non-UTF-8 client_encoding (set upstream): Sluice cannot
                    // read it, so, like a statement it cannot parse, it goes upstream
                    // only for a role that may write.
                    if !(self.policy.write && frame.body.last() == Some(&0)) {
                        return Ok(false);
                    }
                    self.forward_simple(frame).await?;
                    return Ok(true);
                };
                match self.text_target(sql) {
                    Ok(t) => t == Target::Upstream,
                    Err(e) => {
                        self.fail(&e);
                        self.ready();
                        self.conn.flush().await?;
                        return Ok(true);
                    }
                }
            }
            b'P' => {
                let Ok(msg) = frame::decode_parse(&frame.body) else {
                    // Non-UTF-8 text, as for a simple query above.
                    match frame::parse_name_of_foreign_text(&frame.body) {
                        Some(name) if self.policy.write => {
                            let name = name.to_owned();
                            fwd.statements.insert(name.clone());
                            self.statements.remove(&name);
                            return self.forward_message(frame).await;
                        }
                        _ => return Ok(false),
                    }
                };
                match self.text_target(&msg.query) {
                    Ok(Target::Upstream) => {
                        let fwd = self.forward.as_mut().expect("forwarding session");
                        fwd.statements.insert(msg.name.clone());
                        self.statements.remove(&msg.name);
                        true
                    }
                    Ok(Target::Local) => {
                        let fwd = self.forward.as_mut().expect("forwarding session");
                        fwd.statements.remove(&msg.name);
                        false
                    }
                    Err(e) => {
                        self.drain_upstream().await?;
                        // An upstream error already voids the pipeline up to Sync.
                        if !self.skip_until_sync {
                            self.fail_pipeline(&e).await?;
                        }
                        return Ok(true);
                    }
                }
            }
            b'B' => match frame::bind_names(&frame.body) {
                Ok((portal, statement)) => {
                    if fwd.statements.contains(statement) {
                        if !fwd.portals.contains(portal) {
                            fwd.portals.insert(portal.to_owned());
                        }
                        if !self.portals.is_empty() {
                            self.portals.remove(portal);
                        }
                        true
                    } else {
                        fwd.portals.remove(portal);
                        false
                    }
                }
                Err(_) => false,
            },
            b'D' => match frame::decode_describe(&frame.body) {
                Ok(d) => match d.target {
                    Named::Statement => fwd.statements.contains(&d.name),
                    Named::Portal => fwd.portals.contains(&d.name),
                },
                Err(_) => false,
            },
            b'C' => match frame::decode_close(&frame.body) {
                Ok(c) => match c.target {
                    Named::Statement => fwd.statements.remove(&c.name),
                    Named::Portal => fwd.portals.remove(&c.name),
                },
                Err(_) => false,
            },
            b'E' => match frame::execute_portal(&frame.body) {
                Ok(portal) => fwd.portals.contains(portal),
                Err(_) => false,
            },
            b'S' | b'H' => fwd.pending_sync,
            _ => false,
        };
        tracing::trace!(tag = %(frame.tag as char), upstream, "forwarding decision");
        if !upstream {
            if self.forward.as_ref().is_some_and(|f| f.owed > 0) {
                self.drain_upstream().await?;
                // The upstream failed an earlier message of this pipeline: like
                // PostgreSQL, skip this one too (until Sync).
                if self.skip_until_sync && !matches!(frame.tag, b'S' | b'X') {
                    return Ok(true);
                }
            }
            return Ok(false);
        }

        match frame.tag {
            b'Q' => self.forward_simple(frame).await?,
            b'S' => {
                self.skip_until_sync = false;
                self.fail_upstream_pipeline();
                self.put_upstream(frame);
                if let Some(Outcome::Ready(_)) = self.relay_upstream(Until::Ready, true).await? {
                    // The upstream's ReadyForQuery is already relayed.
                } else if self.forward.as_ref().is_some_and(|f| f.held.is_none()) {
                    // Lost: the session answers the Sync itself.
                    self.ready();
                }
                self.conn.flush().await?;
                self.conn.shrink_idle();
            }
            b'H' => {
                self.put_upstream(frame);
                if let Some(Outcome::Failed) = self.relay_upstream(Until::Answered, true).await? {
                    self.skip_until_sync = true;
                }
                self.conn.flush().await?;
            }
            _ => return self.forward_message(frame).await,
        }
        Ok(true)
    }

    /// Forwards one extended-protocol message (Parse, Bind, Describe, Execute, Close).
    async fn forward_message(&mut self, frame: &Frame) -> Result<bool, Disconnect> {
        if let Err(e) = self.ensure_upstream().await {
            self.fail_pipeline(&e).await?;
            return Ok(true);
        }
        self.put_upstream(frame);
        let fwd = self.forward.as_mut().expect("forwarding session");
        fwd.owed += relay::answers_owed(frame.tag);
        fwd.pending_sync = true;
        let big = fwd
            .held
            .as_ref()
            .is_some_and(|h| h.conn.out.len() >= FLUSH_THRESHOLD);
        // A client that waits after Execute (or a pipeline too big to hold)
        // needs the answers now; otherwise they come with the Sync.
        if big || (frame.tag == b'E' && !self.conn.has_buffered_frame()) {
            self.drain_upstream().await?;
        }
        Ok(true)
    }

    /// Forwards an Execute and relays its answer now (the result cache records it).
    pub(super) async fn forward_execute_now(&mut self, frame: &Frame) -> Result<(), Disconnect> {
        if let Err(e) = self.ensure_upstream().await {
            return self.fail_pipeline(&e).await;
        }
        self.put_upstream(frame);
        if let Some(fwd) = self.forward.as_mut() {
            fwd.owed += relay::answers_owed(frame.tag);
            fwd.pending_sync = true;
        }
        self.drain_upstream().await
    }

    /// Makes the upstream answer everything forwarded so far (a Flush), relaying it.
    pub(super) async fn drain_upstream(&mut self) -> Result<(), Disconnect> {
        let Some(fwd) = self.forward.as_mut() else {
            return Ok(());
        };
        if fwd.owed == 0 && fwd.held.as_ref().is_none_or(|h| h.conn.out.is_empty()) {
            return Ok(());
        }
        if let Some(h) = fwd.held.as_mut() {
            postgres_protocol::message::frontend::flush(&mut h.conn.out);
        }
        if let Some(Outcome::Failed) = self.relay_upstream(Until::Answered, true).await? {
            self.skip_until_sync = true;
        }
        Ok(())
    }

    fn put_upstream(&mut self, frame: &Frame) {
        if let Some(h) = self.forward.as_mut().and_then(|f| f.held.as_mut()) {
            frame::put_message(&mut h.conn.out, frame.tag, |b| {
                b.extend_from_slice(&frame.body)
            });
        }
    }

    /// The session reported its own parameter values at login, before any upstream
    /// was open; once one is, a PostgreSQL client learns the values that differ
    /// (TimeZone's spelling, is_superuser, the exact server_version), as it would
    /// from the server itself. Redshift drivers keep the Redshift-shaped values.
    fn report_upstream_parameters(&mut self, upstream: &[(String, String)]) {
        if self.client.is_redshift() {
            return;
        }
        for (name, value) in upstream {
            // Sluice, not the upstream, keeps a read-only role's session read-only.
            if !self.policy.write && name.ends_with("transaction_read_only") {
                continue;
            }
            let differs = self
                .settings
                .reported()
                .any(|(n, ours)| n == name && ours != value);
            if differs {
                self.conn
                    .send_unrecorded(&ParameterStatus::new(name.clone(), value.clone()));
            }
        }
    }

    /// Opens the upstream session on first use.
    async fn ensure_upstream(&mut self) -> Result<(), PgError> {
        let fwd = self.forward.as_mut().expect("forwarding session");
        if fwd.lost_in_tx {
            return Err(PgError::new(
                SqlState::IN_FAILED_SQL_TRANSACTION,
                "current transaction is aborted: the Redshift session running it was lost",
            )
            .with_hint("end the transaction with ROLLBACK"));
        }
        if fwd.held.is_none() {
            let upstream = fwd.upstream.clone();
            let identity = fwd.identity.clone();
            let params = fwd.params.clone();
            let cancel = self.cancel.signal.clone();
            let write = self.policy.write;
            // Waiting for a pool slot or a mint is interruptible by a cancel request.
            // Boxed: opening (minting, TLS, login) is a large future that would
            // otherwise be part of every forwarded message's future.
            let held = Box::pin(super::cancellable(cancel, async move {
                upstream.open(&identity, &params, write).await
            }))
            .await?;
            // From now on a cancel for this session goes to this upstream backend.
            self.cancel.set_upstream(held.conn.cancel.clone());
            self.report_upstream_parameters(&held.conn.parameters);
            self.forward.as_mut().expect("forwarding session").held = Some(held);
        }
        Ok(())
    }

    async fn forward_simple(&mut self, frame: &Frame) -> Result<(), Disconnect> {
        if let Err(e) = self.ensure_upstream().await {
            self.fail(&e);
            self.ready();
            return Ok(self.conn.flush().await?);
        }
        self.put_upstream(frame);
        if self.relay_upstream(Until::Ready, false).await?.is_none() {
            self.ready();
        }
        self.conn.flush().await?;
        self.conn.shrink_idle();
        Ok(())
    }

    /// Sends what is queued for the upstream and relays its answers. `None` when the
    /// upstream session was lost (the client has been told).
    async fn relay_upstream(
        &mut self,
        until: Until,
        extended_protocol: bool,
    ) -> Result<Option<Outcome>, Disconnect> {
        let Some(fwd) = self.forward.as_mut() else {
            return Ok(None);
        };
        let Some(held) = fwd.held.as_mut() else {
            return Ok(None);
        };
        let extended = extended_protocol;
        fwd.in_flight = true;
        let result = match held.conn.flush().await {
            Ok(()) => {
                relay::relay(
                    &mut self.conn,
                    &mut held.conn,
                    until,
                    &mut fwd.owed,
                    extended,
                )
                .await
            }
            Err(error) => Err(RelayError::Upstream {
                error,
                reported: false,
            }),
        };
        match result {
            Ok(outcome) => {
                fwd.in_flight = false;
                if let Outcome::Ready(status) = outcome {
                    fwd.pending_sync = false;
                    fwd.owed = 0;
                    self.tx = match status {
                        b'T' => Tx::Block,
                        b'E' => Tx::Failed,
                        _ => Tx::Idle,
                    };
                    if self.tx == Tx::Idle {
                        self.portals.retain(|_, p| p.hold);
                        // Before the client sees this ReadyForQuery: once it knows
                        // the transaction committed, no session may still be served
                        // what the transaction changed.
                        self.invalidate_at_transaction_end();
                    }
                }
                Ok(Some(outcome))
            }
            Err(RelayError::Client(d)) => Err(d),
            Err(RelayError::Upstream { error, reported }) => {
                self.upstream_lost(error, reported);
                if until == Until::Answered {
                    // The client's pipeline is void until its Sync, as after any
                    // error, and it hears so now.
                    self.skip_until_sync = true;
                    self.conn.flush().await?;
                }
                Ok(None)
            }
        }
    }

    /// The upstream connection broke: tell the client (08006 unless the upstream's
    /// own FATAL error already did), drop the session, keep the client's session.
    fn upstream_lost(&mut self, error: std::io::Error, reported: bool) {
        let Some(fwd) = self.forward.as_mut() else {
            return;
        };
        tracing::warn!(upstream = %fwd.upstream.name(), error = %error, "upstream session lost");
        let in_tx = fwd.held.as_ref().is_some_and(|h| h.conn.status != b'I');
        // Withdrawn before the session can go back to the pool: a late cancel must
        // not reach the next client's statements.
        self.cancel.set_upstream(None);
        if let Some(held) = fwd.held.take() {
            let upstream = fwd.upstream.clone();
            tokio::spawn(async move { upstream.release(held, false).await });
        }
        fwd.statements.clear();
        fwd.portals.clear();
        fwd.owed = 0;
        fwd.pending_sync = false;
        fwd.void_pipeline = false;
        if in_tx {
            fwd.lost_in_tx = true;
        }
        if !reported {
            self.conn.send_error(&wire::lost(error));
        }
        if in_tx {
            self.tx = Tx::Failed;
        }
    }

    /// Called when a statement fails inside a transaction block: if the upstream
    /// holds that transaction, it must not commit what came before.
    pub(super) fn abort_upstream_transaction(&mut self) {
        if let Some(fwd) = self.forward.as_mut()
            && fwd.held.as_ref().is_some_and(|h| h.conn.status == b'T')
        {
            fwd.abort_tx = true;
        }
    }

    /// Called when a statement Sluice answers fails outside a transaction block: if
    /// upstream statements of this pipeline ran since the last Sync, they are in the
    /// upstream's implicit transaction, which must not commit.
    pub(super) fn void_upstream_pipeline(&mut self) {
        if let Some(fwd) = self.forward.as_mut()
            && fwd.pending_sync
        {
            fwd.void_pipeline = true;
        }
    }

    /// Before forwarding a Sync for a voided pipeline: an Execute of a portal that
    /// does not exist makes the upstream fail (34000, swallowed by the relay), so the
    /// Sync rolls the implicit transaction back. The portal name is checked against
    /// the client's upstream portals, so no real portal can run.
    fn fail_upstream_pipeline(&mut self) {
        let Some(fwd) = self.forward.as_mut() else {
            return;
        };
        if !std::mem::take(&mut fwd.void_pipeline) {
            return;
        }
        let Some(held) = fwd.held.as_mut() else {
            return;
        };
        let mut portal = String::from("sluice: roll back this pipeline");
        while fwd.portals.contains(&portal) {
            portal.push('_');
        }
        if postgres_protocol::message::frontend::execute(&portal, 0, &mut held.conn.out).is_ok() {
            held.conn.provoked_errors += 1;
        }
    }

    /// Rolls the upstream transaction back; the client's block stays failed (25P02)
    /// until it ends it, and its COMMIT then reports ROLLBACK, as PostgreSQL's does.
    async fn roll_back_upstream(&mut self) {
        let Some(fwd) = self.forward.as_mut() else {
            return;
        };
        fwd.abort_tx = false;
        if let Some(held) = fwd.held.as_mut()
            && held.conn.run_quietly("ROLLBACK").await.is_err()
        {
            tracing::warn!(upstream = %fwd.upstream.name(), "rolling back the upstream transaction failed; closing its session");
            self.cancel.set_upstream(None);
            if let Some(held) = fwd.held.take() {
                let upstream = fwd.upstream.clone();
                tokio::spawn(async move { upstream.release(held, false).await });
            }
        }
        fwd.lost_in_tx = true;
        self.tx = Tx::Failed;
    }

    /// Gives the upstream session back when the client leaves: parked for the next
    /// client of the same identity if it ended cleanly, closed otherwise.
    pub(super) fn end_forwarding(&mut self) {
        let Some(mut fwd) = self.forward.take() else {
            return;
        };
        self.cancel.set_upstream(None);
        if let Some(held) = fwd.held.take() {
            // Mid-statement or mid-transaction sessions are closed, never reused.
            let clean =
                held.conn.status == b'I' && fwd.owed == 0 && !fwd.pending_sync && !fwd.in_flight;
            let upstream = fwd.upstream.clone();
            tokio::spawn(async move { upstream.release(held, clean).await });
        }
    }
}

/// Columns of the admin views, or `None` for other names.
pub(super) fn admin_columns(name: &str) -> Option<&'static [&'static str]> {
    match name {
        "sluice.pools" => Some(&[
            "upstream",
            "endpoint",
            "credentials",
            "sessions_open",
            "sessions_idle",
            "clients_waiting",
            "max_sessions",
            "credentials_minted",
            "mint_failures",
        ]),
        "sluice.credentials" => Some(&[
            "upstream",
            "database",
            "requested_user",
            "groups",
            "db_user",
            "expires_in_secs",
        ]),
        _ => None,
    }
}

/// Rows of the admin views: counts and names only, never a password.
pub(super) fn admin_rows(shared: &Shared, name: &str) -> Vec<Vec<String>> {
    let upstreams = shared.upstreams.all();
    if name == "sluice.pools" {
        return upstreams
            .iter()
            .map(|u| {
                let stats = u.pool.stats();
                vec![
                    u.name().to_owned(),
                    u.known_endpoint()
                        .unwrap_or_else(|| "(not yet looked up)".into()),
                    u.config.credentials.as_str().to_owned(),
                    stats.open.to_string(),
                    stats.idle.to_string(),
                    stats.waiting.to_string(),
                    u.pool.max_sessions().to_string(),
                    u.credentials.mint_count().to_string(),
                    u.credentials.failure_count().to_string(),
                ]
            })
            .collect();
    }
    upstreams
        .iter()
        .flat_map(|u| {
            u.credentials.cached().into_iter().map(move |c| {
                vec![
                    u.name().to_owned(),
                    c.database,
                    c.requested_user,
                    c.groups.join(","),
                    c.db_user,
                    c.expires_in
                        .map(|d| d.as_secs().to_string())
                        .unwrap_or_else(|| "never".into()),
                ]
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lake() -> HashSet<String> {
        ["nyc", "blog-db"].iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn plain_upstream_text_is_settled_without_parsing() {
        let l = lake();
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 42",
            "UPDATE t SET x = 1 WHERE note = 'nyc trips'",
            "SELECT 1.5, public.f(x), \"Other\".t FROM s.nycx, xnyc.y",
            "BEGIN; INSERT INTO a VALUES ('it''s'); COMMIT_LIKE_TABLE",
            "select * from \"nyc2\".t",
        ] {
            assert!(plainly_upstream(sql, &l), "{sql}");
        }
    }

    #[test]
    fn anything_that_may_be_local_is_parsed() {
        let l = lake();
        for sql in [
            "SELECT * FROM nyc.trips",
            "select * from NYC . trips",
            "SELECT * FROM \"blog-db\".taxi",
            "SELECT * FROM \"blog-db\"\n  .taxi",
            "SET search_path = x",
            "  show sluice.pools",
            "SELECT 1; set x = 1",
            "commit",
            "CALL sluice.refresh_lake()",
            "SELECT 1 -- nyc.trips",
            "SELECT /* */ 1",
            "SELECT $$nyc.trips$$",
            "SELECT E'\\' \"nyc\".x'",
            "SELECT 'unterminated",
            "SELECT 'a;show x'",
            "SELECT * FROM nyc\x0B.trips",
            "SELECT * FROM nyc\u{2003}.trips",
        ] {
            assert!(!plainly_upstream(sql, &l), "{sql}");
        }
        // A double quote inside a literal cannot hide the reference after it.
        assert!(!plainly_upstream("SELECT 'a\"b' || \"nyc\".x", &l));
    }
}
