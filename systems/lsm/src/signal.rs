//! `Signal`: wakes every task waiting for "the store's state changed" (a flush finished, a
//! compaction finished, an error happened), for write stalls. Runtime independent: it is built
//! on `futures` oneshot channels, so it works on the simulator and on tokio alike.

use std::sync::Mutex;

use futures::channel::oneshot;

/// Waiters a signal may hold; writers beyond it wait anyway (one shared receiver each would
/// also do), so this only bounds memory of abandoned subscriptions between notifications.
const WAITER_COUNT_MAX: usize = 1 << 16;

/// A broadcast "something changed" notification.
#[derive(Debug, Default)]
pub struct Signal {
    waiters: Mutex<Vec<oneshot::Sender<()>>>,
}

impl Signal {
    /// Registers interest: the receiver completes at the next `notify` after this call.
    /// Subscribe first, then check the condition, then await, so no notification is missed.
    pub fn subscribe(&self) -> oneshot::Receiver<()> {
        let (sender, receiver) = oneshot::channel();
        let mut waiters = self.waiters.lock().unwrap_or_else(|poison| poison.into_inner());
        waiters.retain(|waiter| !waiter.is_canceled());
        assert!(waiters.len() < WAITER_COUNT_MAX, "too many waiters on a store signal");
        waiters.push(sender);
        receiver
    }

    /// Wakes every current subscriber.
    pub fn notify(&self) {
        let waiters =
            std::mem::take(&mut *self.waiters.lock().unwrap_or_else(|poison| poison.into_inner()));
        for waiter in waiters {
            let _ = waiter.send(());
        }
    }
}
