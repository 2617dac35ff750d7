//! The writer task: takes events off the channel, renders them once into a queue,
//! and keeps every sink writing its part of the queue.
//!
//! Positions are absolute record numbers (records accepted before), so dropping
//! from the front of the queue never confuses a sink's place. Each sink has at most
//! one write under way, run as its own task (file and stdout writes block, S3 PUTs
//! wait on the network), so a slow or failing sink never holds up the others.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::{Id, JoinError, JoinSet};
use tokio::time::Instant;

use super::file::FileSink;
use super::s3::S3Sink;
use super::{Command, Line, State, render};
use crate::config::AuditFormat;

/// How often a failing sink is tried again.
const RETRY: Duration = Duration::from_millis(250);
/// Most records taken off the channel per round, and per file or stdout write.
const BATCH: usize = 4096;
/// File and stdout sinks write when this many records wait, or the oldest has
/// waited `LINGER` (a flush writes at once).
const LINGER_RECORDS: usize = 512;
const LINGER: Duration = Duration::from_millis(20);
/// How long the writer gathers records after one arrives before it takes them.
const GATHER: Duration = Duration::from_millis(5);

/// What a write reports: on failure, how many of its records were written before
/// the error (the file sink can tell), and the error.
pub(super) type WriteResult = Result<(), (usize, String)>;

pub(super) enum Sink {
    File(Arc<Mutex<FileSink>>),
    Stdout,
    S3(Arc<S3Sink>),
}

impl Sink {
    pub(super) fn file(sink: FileSink) -> Sink {
        Sink::File(Arc::new(Mutex::new(sink)))
    }

    pub(super) fn s3(sink: S3Sink) -> Sink {
        Sink::S3(Arc::new(sink))
    }

    fn name(&self) -> String {
        match self {
            Sink::File(f) => lock(f).path().display().to_string(),
            Sink::Stdout => "standard output".into(),
            Sink::S3(s) => s.url().to_owned(),
        }
    }
}

fn lock(file: &Mutex<FileSink>) -> std::sync::MutexGuard<'_, FileSink> {
    // A panic mid-write leaves the sink's state as consistent as after an I/O error.
    file.lock().unwrap_or_else(|p| p.into_inner())
}

struct Slot {
    sink: Sink,
    /// Records before this absolute position are written by this sink.
    written_to: u64,
    /// The write under way: its task, where it starts, how many records.
    in_flight: Option<(Id, u64, usize)>,
    failing: Option<String>,
    retry_at: Instant,
    /// Completed attempts, so a flush can tell a failure that happened after it.
    attempts: u64,
    /// Since when records have waited for this sink (S3 batches by age).
    waiting_since: Option<Instant>,
}

struct FlushWaiter {
    target: u64,
    attempts: Vec<u64>,
    done: oneshot::Sender<()>,
}

pub(super) struct Writer {
    commands: mpsc::UnboundedReceiver<Command>,
    state: Arc<State>,
    format: AuditFormat,
    queue: VecDeque<Line>,
    /// The absolute position of `queue[0]`.
    base: u64,
    slots: Vec<Slot>,
    tasks: JoinSet<(usize, WriteResult)>,
    flushes: Vec<FlushWaiter>,
    /// Batching sinks write everything before this now (flush, shutdown).
    force_to: u64,
    /// Dropping was logged in the current failure streak.
    drops_logged: bool,
    /// Scratch space for rendering records.
    buffer: String,
}

impl Writer {
    pub(super) fn new(
        commands: mpsc::UnboundedReceiver<Command>,
        state: Arc<State>,
        format: AuditFormat,
        sinks: Vec<Sink>,
    ) -> Writer {
        let now = Instant::now();
        let slots = sinks
            .into_iter()
            .map(|sink| Slot {
                sink,
                written_to: 0,
                in_flight: None,
                failing: None,
                retry_at: now,
                attempts: 0,
                waiting_since: None,
            })
            .collect();
        Writer {
            commands,
            state,
            format,
            queue: VecDeque::new(),
            base: 0,
            slots,
            tasks: JoinSet::new(),
            flushes: Vec::new(),
            force_to: 0,
            drops_logged: false,
            buffer: String::with_capacity(1024),
        }
    }

    fn end(&self) -> u64 {
        self.base + self.queue.len() as u64
    }

    pub(super) async fn run(mut self) {
        let mut open = true;
        loop {
            self.start_writes();
            if !open && self.queue.is_empty() && self.tasks.is_empty() {
                break;
            }
            let deadline = self.next_deadline();
            tokio::select! {
                command = self.commands.recv(), if open => match command {
                    Some(command) => {
                        self.accept(command);
                        // Gather for a moment before waiting again: while the
                        // writer is not waiting on the channel, sessions' sends wake
                        // nobody, so a busy gateway costs one wake-up per few
                        // milliseconds instead of one per statement.
                        if self.flushes.is_empty() {
                            tokio::time::sleep(GATHER).await;
                        }
                        open = self.accept_available();
                    }
                    None => open = false,
                },
                Some(done) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                    self.finish(done);
                }
                () = sleep_until(deadline), if deadline.is_some() => {}
                // Closed, nothing under way and nothing due: nothing can change.
                else => break,
            }
            if !open {
                // Shutdown: batching sinks send what they hold.
                self.force_to = self.end();
            }
            self.drop_excess();
            self.release();
            self.answer_flushes();
        }
    }

    /// Takes what else the channel holds, up to a batch; false once it is closed.
    fn accept_available(&mut self) -> bool {
        for _ in 0..BATCH {
            match self.commands.try_recv() {
                Ok(command) => self.accept(command),
                Err(mpsc::error::TryRecvError::Empty) => return true,
                Err(mpsc::error::TryRecvError::Disconnected) => return false,
            }
        }
        true
    }

    fn accept(&mut self, command: Command) {
        match command {
            Command::Record(stamped) => {
                let line = render(self.format, &stamped, &mut self.buffer);
                self.queue.push_back(line);
            }
            Command::Flush(done) => {
                let target = self.end();
                self.force_to = self.force_to.max(target);
                let now = Instant::now();
                for slot in &mut self.slots {
                    // A failing sink gets its next attempt now rather than later.
                    slot.retry_at = slot.retry_at.min(now);
                }
                self.flushes.push(FlushWaiter {
                    target,
                    attempts: self.slots.iter().map(|s| s.attempts).collect(),
                    done,
                });
            }
        }
    }

    /// Starts a write for every idle sink that has records due.
    fn start_writes(&mut self) {
        let now = Instant::now();
        let end = self.end();
        for (index, slot) in self.slots.iter_mut().enumerate() {
            if slot.in_flight.is_some() {
                continue;
            }
            let start = slot.written_to;
            if start >= end {
                slot.waiting_since = None;
                continue;
            }
            let since = *slot.waiting_since.get_or_insert(now);
            if slot.failing.is_some() && now < slot.retry_at {
                continue;
            }
            let offset = (start - self.base) as usize;
            let waiting = (end - start) as usize;
            let count = match &slot.sink {
                // Records linger briefly so a busy gateway writes in batches: one
                // write (and one blocking-pool hop) per few hundred statements, not
                // per statement.
                Sink::File(_) | Sink::Stdout => {
                    let due = waiting >= LINGER_RECORDS
                        || self.force_to > start
                        || slot.failing.is_some()
                        || now.duration_since(since) >= LINGER;
                    if due { waiting.min(BATCH) } else { 0 }
                }
                Sink::S3(s3) => {
                    let due = waiting >= s3.batch_events()
                        || self.force_to > start
                        || now.duration_since(since) >= s3.batch_interval();
                    if due {
                        s3.batch_len(self.queue.range(offset..))
                    } else {
                        0
                    }
                }
            };
            if count == 0 {
                continue;
            }
            let lines: Vec<Line> = self.queue.range(offset..offset + count).cloned().collect();
            let task = match &slot.sink {
                Sink::File(file) => {
                    let file = file.clone();
                    self.tasks
                        .spawn_blocking(move || (index, lock(&file).write(&lines)))
                }
                Sink::Stdout => self
                    .tasks
                    .spawn_blocking(move || (index, super::stdout::write(&lines))),
                Sink::S3(s3) => {
                    let s3 = s3.clone();
                    self.tasks
                        .spawn(async move { (index, s3.put(&lines).await.map_err(|e| (0, e))) })
                }
            };
            slot.in_flight = Some((task.id(), start, count));
        }
    }

    /// The next moment something is due without a new record: a retry, or an S3
    /// batch reaching its age.
    fn next_deadline(&self) -> Option<Instant> {
        let end = self.end();
        self.slots
            .iter()
            .filter(|s| s.in_flight.is_none() && s.written_to < end)
            .filter_map(|s| match (&s.failing, &s.sink) {
                (Some(_), _) => Some(s.retry_at),
                (None, Sink::S3(s3)) => s.waiting_since.map(|w| w + s3.batch_interval()),
                (None, _) => s.waiting_since.map(|w| w + LINGER),
            })
            .min()
    }

    fn finish(&mut self, done: Result<(Id, (usize, WriteResult)), JoinError>) {
        let (index, outcome) = match done {
            Ok((_, (index, outcome))) => (index, outcome),
            Err(e) => {
                let id = e.id();
                let Some(index) = self
                    .slots
                    .iter()
                    .position(|s| s.in_flight.is_some_and(|f| f.0 == id))
                else {
                    return;
                };
                (index, Err((0, format!("the write task failed: {e}"))))
            }
        };
        let Some(slot) = self.slots.get_mut(index) else {
            return;
        };
        let Some((_, start, count)) = slot.in_flight.take() else {
            return;
        };
        slot.attempts += 1;
        match outcome {
            Ok(()) => {
                slot.written_to = slot.written_to.max(start + count as u64);
                slot.waiting_since = None;
                if slot.failing.take().is_some() {
                    tracing::warn!(sink = %slot.sink.name(), "audit sink writes again");
                }
            }
            Err((written, error)) => {
                slot.written_to = slot.written_to.max(start + written as u64);
                self.state.write_failures.fetch_add(1, Ordering::Relaxed);
                if slot.failing.is_none() {
                    tracing::error!(
                        sink = %slot.sink.name(),
                        %error,
                        "audit sink cannot write; its records are kept and retried every 250 ms"
                    );
                }
                slot.failing = Some(error);
                slot.retry_at = Instant::now() + RETRY;
            }
        }
        self.publish_health();
    }

    fn publish_health(&mut self) {
        let reasons: Vec<String> = self
            .slots
            .iter()
            .filter_map(|s| {
                s.failing
                    .as_ref()
                    .map(|e| format!("{}: {e}", s.sink.name()))
            })
            .collect();
        if reasons.is_empty() {
            self.drops_logged = false;
            self.state.set_failing(None);
        } else {
            self.state.set_failing(Some(reasons.join("; ")));
        }
    }

    /// `on_failure = "continue"`: keep at most `max_pending`, whether a sink fails
    /// or only falls behind (a stalled stdout reader, a slow S3): memory stays
    /// bounded and the oldest records go first.
    fn drop_excess(&mut self) {
        if self.state.refuse {
            return;
        }
        let excess = self.queue.len().saturating_sub(self.state.max_pending);
        if excess == 0 {
            return;
        }
        self.queue.drain(..excess);
        self.base += excess as u64;
        for slot in &mut self.slots {
            slot.written_to = slot.written_to.max(self.base);
        }
        self.state
            .dropped
            .fetch_add(excess as u64, Ordering::Relaxed);
        self.state.pending.fetch_sub(excess, Ordering::Relaxed);
        if !self.drops_logged {
            self.drops_logged = true;
            tracing::error!(
                max_pending = self.state.max_pending,
                "audit records are being dropped, oldest first: a sink is failing or behind and audit.max_pending is reached (audit.on_failure = \"continue\")"
            );
        }
    }

    /// Takes records every sink has written off the queue.
    fn release(&mut self) {
        let end = self.end();
        let everywhere = self.slots.iter().map(|s| s.written_to).min().unwrap_or(end);
        let count = everywhere
            .saturating_sub(self.base)
            .min(self.queue.len() as u64) as usize;
        if count == 0 {
            return;
        }
        self.queue.drain(..count);
        self.base += count as u64;
        self.state
            .written
            .fetch_add(count as u64, Ordering::Relaxed);
        self.state.pending.fetch_sub(count, Ordering::Relaxed);
    }

    fn answer_flushes(&mut self) {
        let slots = &self.slots;
        let settled = |waiter: &FlushWaiter| {
            slots.iter().zip(&waiter.attempts).all(|(slot, &before)| {
                slot.written_to >= waiter.target
                    || (slot.failing.is_some()
                        && slot.in_flight.is_none()
                        && slot.attempts > before)
            })
        };
        let (answered, waiting): (Vec<_>, Vec<_>) = self.flushes.drain(..).partition(settled);
        self.flushes = waiting;
        for waiter in answered {
            let _ = waiter.done.send(());
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(deadline) = deadline {
        tokio::time::sleep_until(deadline).await;
    }
}
