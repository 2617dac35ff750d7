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

use super::pipeline::{Executing, StatementText, with_parameters};
use super::{Session, Tx};
use crate::error::{PgError, SqlState};
use crate::observe::sessions::ServerLink;
use crate::redshift::credentials::DbIdentity;
use crate::redshift::relay::{self, Outcome, RelayError, Until};
use crate::redshift::{self, Held, Upstream};
use crate::server::Shared;
use crate::wire::frame::{self, Frame, Target as Named};
use crate::wire::messages::ParameterStatus;
use crate::wire::{Disconnect, FLUSH_THRESHOLD};

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
    pub(super) remote: Arc<dyn crate::engine::RemoteTables>,
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
    pub(super) in_flight: bool,
    /// The upstream session broke inside a transaction: until the client ends it,
    /// forwarded statements fail with 25P02 rather than silently autocommit.
    pub(super) lost_in_tx: bool,
    /// When each Execute forwarded since the last Sync was sent (for the record
    /// stage; emptied when the upstream's ReadyForQuery ends the pipeline).
    pub(super) executing: Vec<Executing>,
    /// Texts of upstream prepared statements and bound portals, for the record
    /// stage (kept only while something records texts).
    pub(super) texts: foldhash::HashMap<String, Arc<StatementText>>,
    /// The query group the upstream session was last labelled with, and whether
    /// the upstream refused the label statement (`label_upstream`).
    pub(super) last_label: Option<u64>,
    pub(super) label_refused: bool,
    pub(super) portal_texts: foldhash::HashMap<String, Arc<StatementText>>,
    /// A statement Sluice answered failed after upstream statements of the same
    /// pipeline ran in the upstream's implicit transaction: the Sync must roll them
    /// back, as PostgreSQL does, instead of committing them.
    pub(super) void_pipeline: bool,
    /// The workload limits of the admitted upstream statement(s), checked by the
    /// relay as answers pass (`None`: no limits).
    pub(super) watch: Option<Box<relay::Watch>>,
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
                    // The gateway's own settings (idle timeouts, the lake engine's).
                    && !crate::route::decide::gateway_setting(k)
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Some(Forwarding {
            remote: Arc::new(crate::redshift::table::RemoteCatalog::new(
                upstream.clone(),
                identity.clone(),
                &params,
            )),
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
            watch: None,
            executing: Vec::new(),
            texts: foldhash::HashMap::default(),
            last_label: None,
            label_refused: false,
            portal_texts: foldhash::HashMap::default(),
        })
    }
}

impl Session {
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

    /// A statement failed in Sluice inside the upstream's transaction block: once
    /// the upstream has answered everything, its transaction is rolled back before
    /// anything else is forwarded.
    pub(super) async fn settle_upstream_abort(&mut self) {
        if self
            .forward
            .as_ref()
            .is_some_and(|f| f.abort_tx && !f.pending_sync && f.owed == 0)
        {
            Box::pin(self.roll_back_upstream()).await;
        }
    }

    /// Routes one frame of a forwarding session other than Query and Parse (the
    /// per-message fast path: by statement and portal name). `Ok(true)`: handled (forwarded);
    /// `Ok(false)`: the session answers it itself (after the upstream has answered
    /// everything forwarded before it).
    pub(super) async fn forward_dispatch(&mut self, frame: &Frame) -> Result<bool, Disconnect> {
        self.settle_upstream_abort().await;
        let Some(fwd) = self.forward.as_mut() else {
            return Ok(false);
        };
        // Query and Parse were decided in the pipeline; the rest follow the names.
        let upstream = match frame.tag {
            b'B' => match frame::bind_names(&frame.body) {
                Ok((portal, statement)) => {
                    if fwd.statements.contains(statement) {
                        if !fwd.portals.contains(portal) {
                            fwd.portals.insert(portal.to_owned());
                        }
                        match fwd.texts.get(statement) {
                            Some(text) => {
                                let text = with_parameters(
                                    text,
                                    frame,
                                    self.shared.observer.logs_parameters(),
                                );
                                fwd.portal_texts.insert(portal.to_owned(), text);
                            }
                            // No stale text may stand for this portal's statement.
                            None if !fwd.portal_texts.is_empty() => {
                                fwd.portal_texts.remove(portal);
                            }
                            None => {}
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
                    Named::Statement => {
                        fwd.texts.remove(&c.name);
                        fwd.statements.remove(&c.name)
                    }
                    Named::Portal => {
                        fwd.portal_texts.remove(&c.name);
                        fwd.portals.remove(&c.name)
                    }
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
            b'E' => {
                // Admitted as it is forwarded; recorded when the pipeline's Sync
                // is answered (the relay copies answers, it does not read them).
                if let Err(e) = self.admit_upstream_execute(frame).await {
                    self.drain_upstream().await?;
                    self.fail_pipeline(&e).await?;
                    return Ok(true);
                }
                self.note_upstream_execute(frame);
                return self.forward_message(frame).await;
            }
            _ => return self.forward_message(frame).await,
        }
        Ok(true)
    }

    /// Forwards one extended-protocol message (Parse, Bind, Describe, Execute, Close).
    pub(super) async fn forward_message(&mut self, frame: &Frame) -> Result<bool, Disconnect> {
        if let Err(e) = self.ensure_upstream().await {
            // An Execute that never reached an upstream is not waiting for an answer.
            if frame.tag == b'E'
                && let Some(f) = self.forward.as_mut()
            {
                f.executing.pop();
            }
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
        if let Err(e) = self.admit_upstream_execute(frame).await {
            self.drain_upstream().await?;
            return self.fail_pipeline(&e).await;
        }
        if let Err(e) = self.ensure_upstream().await {
            return self.fail_pipeline(&e).await;
        }
        self.note_upstream_execute(frame);
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
            if let (Some(target), Some(f)) = (&held.conn.cancel, self.forward.as_ref()) {
                self.board.status.set_server(Some(ServerLink {
                    upstream: f.upstream.name().to_owned(),
                    db_user: f.identity.user.clone(),
                    addr: format!("{}:{}", target.endpoint.host, target.endpoint.port),
                    connect_time: std::time::SystemTime::now(),
                    remote_pid: target.pid,
                    tls: target.endpoint.tls.is_some(),
                }));
            }
            self.report_upstream_parameters(&held.conn.parameters);
            self.forward.as_mut().expect("forwarding session").held = Some(held);
        }
        Ok(())
    }

    /// Relays a simple query through ReadyForQuery. `group`: its query-group
    /// fingerprint, to label the upstream session with first (`label_upstream`).
    pub(super) async fn forward_simple(
        &mut self,
        frame: &Frame,
        group: Option<u64>,
    ) -> Result<(), Disconnect> {
        if let Err(e) = self.ensure_upstream().await {
            self.fail(&e);
            self.relay_failure = Some(e.clone());
            self.ready();
            return Ok(self.conn.flush().await?);
        }
        if let Some(group) = group {
            self.label_upstream(group).await;
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
                    fwd.watch.as_deref_mut(),
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
                    let mut executed = std::mem::take(&mut fwd.executing);
                    self.tx = match status {
                        b'T' => Tx::Block,
                        b'E' => Tx::Failed,
                        _ => Tx::Idle,
                    };
                    self.at_rest_since = Some(tokio::time::Instant::now());
                    if self.tx == Tx::Idle {
                        self.portals.retain(|_, p| p.hold);
                        // Before the client sees this ReadyForQuery: once it knows
                        // the transaction committed, no session may still be served
                        // what the transaction changed.
                        self.invalidate_at_transaction_end();
                    }
                    self.record_relayed_executes(&mut executed, extended);
                    // The buffer is kept for the next pipeline.
                    if let Some(f) = self.forward.as_mut() {
                        f.executing = executed;
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
}
