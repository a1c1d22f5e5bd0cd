//! The executor's parts: the task slab, the ready queue and its wakers, timers, and the event
//! queue that virtual time advances through.
//!
//! Locking discipline (the one rule that keeps this deadlock-free): the world state lock is
//! never held while a task is polled or a user future is dropped, because both can call back
//! into the world. Wakers only touch the ready queue's own lock, so they may be woken while the
//! state lock is held; the ready lock is never held while taking the state lock.

use std::cmp::Ordering;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::task::{Wake, Waker};

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::net::NetEvent;
use crate::time::Instant;

/// A boxed task future.
pub(crate) type TaskFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Identifies a task: slot plus generation, so a stale key never names a newer task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TaskKey {
    pub(crate) slot: u32,
    pub(crate) generation: u32,
}

/// Tasks whose wakers fired, waiting to be polled. The executor picks among them at random.
pub(crate) struct ReadyQueue {
    keys: Mutex<Vec<TaskKey>>,
}

impl ReadyQueue {
    pub(crate) fn new() -> ReadyQueue {
        ReadyQueue { keys: Mutex::new(Vec::with_capacity(1024)) }
    }

    fn push(&self, key: TaskKey) {
        self.keys.lock().unwrap_or_else(|poison| poison.into_inner()).push(key);
    }

    /// Removes and returns a uniformly chosen ready task.
    pub(crate) fn pick(&self, rng: &mut ChaCha8Rng) -> Option<TaskKey> {
        let mut keys = self.keys.lock().unwrap_or_else(|poison| poison.into_inner());
        match keys.len() {
            0 => None,
            1 => keys.pop(),
            len => {
                let index = rng.random_range(0..len);
                Some(keys.swap_remove(index))
            }
        }
    }
}

/// A task's waker: queues the task once until it is polled again.
pub(crate) struct TaskWaker {
    key: TaskKey,
    // Invariant: true exactly while `key` sits in the ready queue (or a paused node's parking).
    queued: AtomicBool,
    ready: Arc<ReadyQueue>,
}

impl TaskWaker {
    /// Clears the queued mark just before a poll, so a wake during the poll queues it again.
    pub(crate) fn clear(&self) {
        self.queued.store(false, AtomicOrdering::Relaxed);
    }

    /// Puts the task back in the ready queue (used when a paused node resumes).
    pub(crate) fn requeue(&self) {
        self.ready.push(self.key);
    }
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, AtomicOrdering::Relaxed) {
            self.ready.push(self.key);
        }
    }
}

/// One task.
pub(crate) struct Task {
    pub(crate) node: u32,
    /// `None` while the task is being polled.
    pub(crate) future: Option<TaskFuture>,
    pub(crate) waker: Arc<TaskWaker>,
    /// Set when the task was cancelled while it was being polled.
    pub(crate) killed: bool,
}

/// The task slab: slots with generations and a free list.
pub(crate) struct Tasks {
    slots: Vec<(u32, Option<Task>)>,
    free: Vec<u32>,
    live_count: usize,
}

impl Tasks {
    pub(crate) fn new() -> Tasks {
        Tasks { slots: Vec::new(), free: Vec::new(), live_count: 0 }
    }

    /// Inserts a task and queues it to be polled.
    pub(crate) fn insert(
        &mut self,
        node: u32,
        future: TaskFuture,
        ready: &Arc<ReadyQueue>,
    ) -> TaskKey {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push((0, None));
                u32::try_from(self.slots.len() - 1).expect("task slots exceed u32")
            }
        };
        let entry = &mut self.slots[slot as usize];
        assert!(entry.1.is_none());
        let key = TaskKey { slot, generation: entry.0 };
        let waker =
            Arc::new(TaskWaker { key, queued: AtomicBool::new(true), ready: Arc::clone(ready) });
        ready.push(key);
        entry.1 = Some(Task { node, future: Some(future), waker, killed: false });
        self.live_count += 1;
        key
    }

    pub(crate) fn get_mut(&mut self, key: TaskKey) -> Option<&mut Task> {
        match self.slots.get_mut(key.slot as usize) {
            Some((generation, Some(task))) if *generation == key.generation => Some(task),
            _ => None,
        }
    }

    /// Frees the slot; returns the task so its future can be dropped outside the lock.
    pub(crate) fn remove(&mut self, key: TaskKey) -> Option<Task> {
        let entry = self.slots.get_mut(key.slot as usize)?;
        if entry.0 != key.generation || entry.1.is_none() {
            return None;
        }
        let task = entry.1.take();
        entry.0 = entry.0.wrapping_add(1);
        self.free.push(key.slot);
        self.live_count -= 1;
        task
    }

    /// Keys of every live task of `node`, in slot order.
    pub(crate) fn keys_of_node(&self, node: u32) -> Vec<TaskKey> {
        let mut keys = Vec::new();
        for (slot, (generation, task)) in self.slots.iter().enumerate() {
            if task.as_ref().is_some_and(|task| task.node == node) {
                keys.push(TaskKey { slot: slot as u32, generation: *generation });
            }
        }
        keys
    }

    pub(crate) fn live_count(&self) -> usize {
        self.live_count
    }
}

/// Identifies a timer registration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TimerKey {
    pub(crate) slot: u32,
    pub(crate) generation: u32,
}

/// The timer slab: each live timer holds the waker of the sleep that registered it.
pub(crate) struct Timers {
    slots: Vec<(u32, Option<Waker>)>,
    free: Vec<u32>,
}

impl Timers {
    pub(crate) fn new() -> Timers {
        Timers { slots: Vec::new(), free: Vec::new() }
    }

    pub(crate) fn insert(&mut self, waker: Waker) -> TimerKey {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push((0, None));
                u32::try_from(self.slots.len() - 1).expect("timer slots exceed u32")
            }
        };
        let entry = &mut self.slots[slot as usize];
        entry.1 = Some(waker);
        TimerKey { slot, generation: entry.0 }
    }

    /// Replaces the waker of a live timer.
    pub(crate) fn update(&mut self, key: TimerKey, waker: &Waker) {
        if let Some((generation, Some(current))) = self.slots.get_mut(key.slot as usize)
            && *generation == key.generation
            && !current.will_wake(waker)
        {
            *current = waker.clone();
        }
    }

    /// Whether `key` names a timer that has neither fired nor been cancelled.
    pub(crate) fn is_live(&self, key: TimerKey) -> bool {
        let slot = self.slots.get(key.slot as usize);
        matches!(slot, Some((generation, Some(_))) if *generation == key.generation)
    }

    /// Frees a live timer, returning its waker; `None` if it already fired or was cancelled.
    pub(crate) fn remove(&mut self, key: TimerKey) -> Option<Waker> {
        let entry = self.slots.get_mut(key.slot as usize)?;
        if entry.0 != key.generation {
            return None;
        }
        let waker = entry.1.take()?;
        entry.0 = entry.0.wrapping_add(1);
        self.free.push(key.slot);
        Some(waker)
    }
}

/// Something that happens at a point of virtual time.
pub(crate) enum Event {
    Timer(TimerKey),
    Net(NetEvent),
}

/// An event in the queue, ordered by time and then by scheduling order (for determinism).
pub(crate) struct Scheduled {
    pub(crate) at: Instant,
    pub(crate) sequence: u64,
    pub(crate) event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Scheduled) -> bool {
        self.at == other.at && self.sequence == other.sequence
    }
}

impl Eq for Scheduled {}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Scheduled) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scheduled {
    /// Reversed, so that `BinaryHeap` pops the earliest event first.
    fn cmp(&self, other: &Scheduled) -> Ordering {
        (other.at, other.sequence).cmp(&(self.at, self.sequence))
    }
}
