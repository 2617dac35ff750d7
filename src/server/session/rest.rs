//! The session at rest, between a ReadyForQuery and the client's next message:
//! when it is ended there (idle timeouts, maximum age) and how the gateway ends a
//! session (also an admin's terminate). Rules: `server::hygiene`.

use tokio::time::Instant;

use super::{Session, Tx};
use crate::server::hygiene::{Ending, Kill};
use crate::wire::Disconnect;
use crate::wire::frame::Frame;

impl Session {
    /// When the session, at rest, is ended (and why): its idle timeout for the
    /// transaction state it is in, or, outside a transaction, its maximum age.
    pub(super) fn rest_deadline(&self) -> Option<(Instant, Ending)> {
        let since = self.at_rest_since?;
        let in_tx = self.tx != Tx::Idle;
        let idle = self.rules.idle_timeout(&self.settings, in_tx).map(|t| {
            let ending = if in_tx {
                Ending::IdleInTransaction
            } else {
                Ending::IdleSession
            };
            (since + t, ending)
        });
        let age = match self.rules.max_age {
            Some(a) if !in_tx => Some((Instant::from_std(self.login_at) + a, Ending::MaxAge)),
            _ => None,
        };
        match (idle, age) {
            (Some(i), Some(a)) => Some(if a.0 <= i.0 { a } else { i }),
            (i, a) => i.or(a),
        }
    }

    /// The gateway ends the session: FATAL to the client (flushed within a bound,
    /// so a client that does not read cannot hold the session), counted, and
    /// named in the logoff event. `run` then releases the upstream session.
    pub(super) async fn end_session(&mut self, ending: Ending) -> Result<(), Disconnect> {
        self.end_session_telling(ending, true).await
    }

    /// `end_session`; `tell: false` after a statement was abandoned mid-way (its
    /// output may have stopped inside a message, so nothing more can be framed):
    /// the socket is just closed.
    pub(super) async fn end_session_telling(
        &mut self,
        ending: Ending,
        tell: bool,
    ) -> Result<(), Disconnect> {
        self.ending = Some(ending);
        crate::metrics::metrics()
            .session_terminations
            .with_label_values(&[ending.name()])
            .inc();
        tracing::info!(pid = self.cancel.pid, user = %self.identity.user, reason = ending.name(), "ending session");
        if tell {
            self.conn.send_error(&ending.error());
        } else {
            self.conn.out.clear();
        }
        let _ = tokio::time::timeout(TERMINATE_GRACE, self.conn.shutdown()).await;
        Ok(())
    }
}

/// What the loop's wait for the client ended with.
pub(super) enum Waited {
    Killed,
    Expired,
    Read(Result<Option<Frame>, Disconnect>),
}

/// How long a terminated session's running statement has to end after its cancel
/// before it is dropped; also the bound on flushing the final FATAL.
pub(super) const TERMINATE_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Resolves `grace` after the session is marked terminated. Meanwhile the
/// session's cancel signal is raised again every 100 ms: a statement between two
/// cancellable stages (planned, not yet streaming) when the first one fired still
/// sees it, so it ends cooperatively (and is recorded) rather than being dropped.
pub(super) async fn killed_for(
    kill: &Kill,
    cancel: &tokio::sync::Notify,
    grace: std::time::Duration,
) {
    kill.wait().await;
    let end = Instant::now() + grace;
    while Instant::now() < end {
        cancel.notify_waiters();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
