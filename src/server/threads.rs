//! Session threads: every client connection lives its whole life on one thread, each
//! thread running its own current-thread tokio runtime (thread per core).
//!
//! Why not one work-stealing runtime: relaying is a few microseconds of work between
//! two socket waits, so the scheduler's own costs dominate. With work stealing a
//! readiness event on one worker wakes an idle sibling (a futex call and a context
//! switch) and a session hops between cores; on a busy machine that cost more CPU per
//! forwarded statement than PgBouncer spends in total (`benches/passthrough.rs`).
//! Pinned sessions wake only the thread that owns their sockets, and one `epoll_wait`
//! returns the events of many sessions at once.
//!
//! Lake queries do not run here: the engine executes plans on its own multi-thread
//! runtime, so a heavy query never stalls the sessions sharing its thread.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// Stack of each session thread: SQL parsing and planning recurse with the depth of
/// the statement (virtual memory, committed only when used).
const STACK_BYTES: usize = 16 * 1024 * 1024;

struct Worker {
    handle: Handle,
    /// Sessions currently on this thread, for least-loaded placement.
    sessions: Arc<AtomicUsize>,
}

/// The session threads of one server. Dropping it stops them (their sessions end).
pub struct SessionThreads {
    workers: Vec<Worker>,
    _stop: oneshot::Sender<()>,
}

impl SessionThreads {
    /// Starts `count` threads (at least one).
    pub fn start(count: usize) -> std::io::Result<SessionThreads> {
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let stop = futures::future::FutureExt::shared(stop_rx);
        let mut workers = Vec::with_capacity(count.max(1));
        for i in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = runtime.handle().clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("sluice-session-{i}"))
                .stack_size(STACK_BYTES)
                .spawn(move || {
                    // Runs spawned sessions until the server is dropped; dropping the
                    // runtime then cancels whatever is still running on it.
                    let _ = runtime.block_on(stop);
                })?;
            workers.push(Worker {
                handle,
                sessions: Arc::new(AtomicUsize::new(0)),
            });
        }
        Ok(SessionThreads {
            workers,
            _stop: stop_tx,
        })
    }

    /// Runs `session` to completion on the thread with the fewest sessions. Sockets
    /// the future creates when first polled (`TcpStream::from_std`) register with
    /// that thread's I/O driver, so their wake-ups stay on it.
    pub fn spawn<F>(&self, session: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let Some(worker) = self
            .workers
            .iter()
            .min_by_key(|w| w.sessions.load(Ordering::Relaxed))
        else {
            return;
        };
        let load = Placed::new(worker.sessions.clone());
        worker.handle.spawn(async move {
            let _load = load;
            session.await;
        });
    }
}

/// One session counted against its thread until dropped.
struct Placed(Arc<AtomicUsize>);

impl Placed {
    fn new(count: Arc<AtomicUsize>) -> Placed {
        count.fetch_add(1, Ordering::Relaxed);
        Placed(count)
    }
}

impl Drop for Placed {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_go_to_the_least_loaded_thread_and_run_there() {
        let threads = SessionThreads::start(2).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let (hold_tx, hold_rx) = tokio::sync::oneshot::channel::<()>();
        let first = tx.clone();
        threads.spawn(async move {
            let _ = first.send(std::thread::current().name().map(str::to_owned));
            let _ = hold_rx.await;
        });
        let a = rx.recv().unwrap();
        // The first thread is busy with a session: the next goes to the other one.
        threads.spawn(async move {
            let _ = tx.send(std::thread::current().name().map(str::to_owned));
        });
        let b = rx.recv().unwrap();
        assert_ne!(a, b);
        assert!(a.unwrap().starts_with("sluice-session-"));
        drop(hold_tx);
    }
}
