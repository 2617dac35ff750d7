//! Slots: how many statements of each queue run at once, and (optionally) across
//! all queues. A statement that finds its queue full waits in line; when a slot
//! frees up it goes to the waiting statement of the highest-priority queue that
//! has room, first come first served within a priority.
//!
//! A [`Slot`] is released when dropped, so a statement gives its slot back however
//! it ends: finished, failed, cancelled, its client gone or its upstream lost.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

use crate::config::Priority;

pub struct Slots {
    /// Slots of each queue, by index.
    limits: Vec<usize>,
    priorities: Vec<Priority>,
    /// Gateway-wide cap (`usize::MAX`: none).
    total_limit: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    running: Vec<usize>,
    waiting: Vec<usize>,
    total: usize,
    /// In the order slots are handed out: priority, then arrival.
    line: BTreeMap<(Reverse<Priority>, u64), Waiter>,
    arrivals: u64,
}

struct Waiter {
    queue: usize,
    granted: oneshot::Sender<()>,
}

/// A running statement's slot; dropping it frees the slot.
pub struct Slot {
    slots: Arc<Slots>,
    queue: usize,
}

/// A place in line; dropping it (timed out, cancelled) leaves the line.
pub struct InLine {
    slots: Arc<Slots>,
    queue: usize,
    key: (Reverse<Priority>, u64),
    granted: Option<oneshot::Receiver<()>>,
    /// How many statements were ahead when it joined.
    pub ahead: usize,
}

pub enum Acquired {
    Now(Slot),
    Wait(InLine),
}

impl Slots {
    pub fn new(limits: Vec<(usize, Priority)>, total_limit: Option<usize>) -> Arc<Slots> {
        let n = limits.len();
        Arc::new(Slots {
            priorities: limits.iter().map(|l| l.1).collect(),
            limits: limits.into_iter().map(|l| l.0).collect(),
            total_limit: total_limit.unwrap_or(usize::MAX),
            state: Mutex::new(State {
                running: vec![0; n],
                waiting: vec![0; n],
                ..State::default()
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot of `queue` now, or a place in line. Statements already waiting for
    /// this queue (or, under the gateway-wide cap, for any queue) go first.
    pub fn acquire(self: &Arc<Self>, queue: usize) -> Acquired {
        let mut s = self.lock();
        let free = s.running[queue] < self.limits[queue] && s.total < self.total_limit;
        let line_first = if self.total_limit == usize::MAX {
            s.waiting[queue] > 0
        } else {
            !s.line.is_empty()
        };
        if free && !line_first {
            s.running[queue] += 1;
            s.total += 1;
            return Acquired::Now(Slot {
                slots: self.clone(),
                queue,
            });
        }
        let (tx, rx) = oneshot::channel();
        s.arrivals += 1;
        let key = (Reverse(self.priorities[queue]), s.arrivals);
        let ahead = if self.total_limit == usize::MAX {
            s.waiting[queue]
        } else {
            s.line.len()
        };
        s.line.insert(key, Waiter { queue, granted: tx });
        s.waiting[queue] += 1;
        Acquired::Wait(InLine {
            slots: self.clone(),
            queue,
            key,
            granted: Some(rx),
            ahead,
        })
    }

    /// Running and waiting statements of `queue`.
    pub fn usage(&self, queue: usize) -> (usize, usize) {
        let s = self.lock();
        (s.running[queue], s.waiting[queue])
    }

    pub fn limit(&self, queue: usize) -> usize {
        self.limits[queue]
    }

    /// Hands free slots to the line, in its order.
    fn dispatch(&self, s: &mut State) {
        while s.total < self.total_limit {
            let next = s
                .line
                .iter()
                .find(|(_, w)| s.running[w.queue] < self.limits[w.queue])
                .map(|(k, _)| *k);
            let Some(key) = next else { return };
            let Some(waiter) = s.line.remove(&key) else {
                return;
            };
            s.waiting[waiter.queue] -= 1;
            if waiter.granted.send(()).is_ok() {
                s.running[waiter.queue] += 1;
                s.total += 1;
            }
        }
    }

    fn release(&self, queue: usize) {
        let mut s = self.lock();
        s.running[queue] = s.running[queue].saturating_sub(1);
        s.total = s.total.saturating_sub(1);
        self.dispatch(&mut s);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.release(self.queue);
    }
}

impl InLine {
    /// Waits for the slot (cancel-safe: dropping the future keeps the place in
    /// line until the `InLine` itself is dropped).
    pub async fn granted(&mut self) -> Slot {
        if let Some(rx) = self.granted.as_mut() {
            // The sender lives in the line until it sends; it is dropped unsent
            // only with the line itself, which holds a reference to us — so an
            // error cannot happen while we wait.
            let _ = rx.await;
        }
        self.granted = None;
        Slot {
            slots: self.slots.clone(),
            queue: self.queue,
        }
    }
}

impl Drop for InLine {
    fn drop(&mut self) {
        let Some(mut rx) = self.granted.take() else {
            return; // became a Slot
        };
        let mut s = self.slots.lock();
        if s.line.remove(&self.key).is_some() {
            s.waiting[self.queue] -= 1;
            return;
        }
        drop(s);
        // Granted after we stopped waiting: hand the slot on.
        if rx.try_recv().is_ok() {
            self.slots.release(self.queue);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now(a: Acquired) -> Slot {
        match a {
            Acquired::Now(s) => s,
            Acquired::Wait(_) => panic!("expected a free slot"),
        }
    }

    fn wait(a: Acquired) -> InLine {
        match a {
            Acquired::Wait(w) => w,
            Acquired::Now(_) => panic!("expected to wait"),
        }
    }

    #[tokio::test]
    async fn a_queue_runs_its_slots_and_lines_up_the_rest_in_order() {
        let slots = Slots::new(vec![(2, Priority::Normal)], None);
        let a = now(slots.acquire(0));
        let _b = now(slots.acquire(0));
        let mut c = wait(slots.acquire(0));
        let mut d = wait(slots.acquire(0));
        assert_eq!((c.ahead, d.ahead), (0, 1));
        assert_eq!(slots.usage(0), (2, 2));
        drop(a);
        let c_slot = c.granted().await;
        assert_eq!(slots.usage(0), (2, 1));
        drop(c_slot);
        let _d_slot = d.granted().await;
        assert_eq!(slots.usage(0), (2, 0));
    }

    #[tokio::test]
    async fn leaving_the_line_gives_the_place_and_any_granted_slot_back() {
        let slots = Slots::new(vec![(1, Priority::Normal)], None);
        let a = now(slots.acquire(0));
        let b = wait(slots.acquire(0));
        let c = wait(slots.acquire(0));
        drop(b);
        assert_eq!(slots.usage(0), (1, 1));
        drop(a); // granted to c
        assert_eq!(slots.usage(0), (1, 0));
        let mut d = wait(slots.acquire(0));
        drop(c); // c never took its slot: d gets it
        let _d = d.granted().await;
        assert_eq!(slots.usage(0), (1, 0));
    }

    #[tokio::test]
    async fn the_gateway_cap_serves_higher_priority_queues_first() {
        let slots = Slots::new(vec![(5, Priority::Low), (5, Priority::Highest)], Some(1));
        let first = now(slots.acquire(0));
        let mut low = wait(slots.acquire(0));
        let mut high = wait(slots.acquire(1));
        drop(first);
        let h = high.granted().await;
        assert_eq!(slots.usage(1), (1, 0));
        assert_eq!(slots.usage(0), (0, 1));
        drop(h);
        let _l = low.granted().await;
        assert_eq!(slots.usage(0), (1, 0));
    }
}
