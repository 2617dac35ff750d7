//! The upstream session's life beyond relaying (`forward.rs`): labelling it with
//! the query group of what it is about to run, losing it, and handing it back to
//! the pool when the client leaves.

use super::{Session, Tx};
use crate::redshift::wire;

impl Session {
    /// `[query_groups] label_upstream`: before a relayed statement of another group
    /// than the last, the upstream session is told its group (Redshift: `SET
    /// query_group`, shown in STL_QUERY.label and SYS_QUERY_HISTORY), so the
    /// warehouse's own views show Sluice's groups. Only between pipelines (nothing
    /// queued or owed upstream), never in a failed transaction, and never over the
    /// user's own `SET query_group`. A refused label statement turns labelling off
    /// for the session (once, with a warning).
    pub(super) async fn label_upstream(&mut self, group: u64) {
        let config = &self.shared.config.query_groups;
        if !config.label_upstream
            || self
                .settings
                .get("query_group")
                .is_some_and(|g| !g.is_empty() && g != "default")
        {
            return;
        }
        let Some(f) = self.forward.as_mut() else {
            return;
        };
        let Some(h) = f.held.as_mut() else { return };
        if f.label_refused
            || f.last_label == Some(group)
            || f.owed > 0
            || f.pending_sync
            || !h.conn.out.is_empty()
            || h.conn.status == b'E'
        {
            return;
        }
        let label = format!("sluice_{}", crate::route::fingerprint::hex(group));
        let sql = config.label_statement.replace("{label}", &label);
        match h.conn.run_quietly(&sql).await {
            Ok(()) => f.last_label = Some(group),
            Err(e) => {
                f.label_refused = true;
                tracing::warn!(upstream = %f.upstream.name(), error = %e.message, "the upstream refused the query-group label statement; not labelling this session");
            }
        }
    }

    /// The upstream connection broke: tell the client (08006 unless the upstream's
    /// own FATAL error already did), drop the session, keep the client's session.
    pub(super) fn upstream_lost(&mut self, error: std::io::Error, reported: bool) {
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
        fwd.texts.clear();
        fwd.portal_texts.clear();
        fwd.last_label = None;
        fwd.owed = 0;
        fwd.pending_sync = false;
        fwd.void_pipeline = false;
        let lost = std::mem::take(&mut fwd.executing);
        if in_tx {
            fwd.lost_in_tx = true;
        }
        let e = wire::lost(error);
        if !reported {
            self.conn.send_error(&e);
        }
        if in_tx {
            self.tx = Tx::Failed;
        }
        // Forwarded Executes whose answers will never come ended here.
        for exec in lost {
            self.record(super::pipeline::Outcome {
                route: "upstream",
                started: exec.started,
                error: Some(&e),
                text: super::pipeline::Text::Prepared(exec.text),
                sent_before: exec.sent_before,
                relayed: None,
            });
        }
        self.relay_failure = Some(e);
    }

    /// Gives the upstream session back when the client leaves: parked for the next
    /// client of the same identity if it ended cleanly, closed otherwise.
    pub(super) fn end_forwarding(&mut self) {
        let Some(mut fwd) = self.forward.take() else {
            return;
        };
        self.cancel.set_upstream(None);
        self.board.status.set_server(None);
        if let Some(held) = fwd.held.take() {
            // Mid-statement or mid-transaction sessions are closed, never reused.
            let clean =
                held.conn.status == b'I' && fwd.owed == 0 && !fwd.pending_sync && !fwd.in_flight;
            let upstream = fwd.upstream.clone();
            tokio::spawn(async move { upstream.release(held, clean).await });
        }
    }
}
