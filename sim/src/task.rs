//! `TaskHandle`: the backend-independent join handle returned by `Env::spawn`.
//!
//! A spawned future is wrapped so that its output lands in a shared slot; the handle is a future
//! over that slot. Dropping the handle detaches the task; `abort` cancels it through a
//! backend-supplied hook. A task that dies without finishing (aborted, or its node crashed)
//! resolves the handle to `Err(JoinError)` once the wrapper is dropped.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

/// Why a task produced no output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinError {
    /// The task was aborted, or its node crashed, before it finished.
    Cancelled,
}

impl fmt::Display for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JoinError::Cancelled => f.write_str("task cancelled before it finished"),
        }
    }
}

impl std::error::Error for JoinError {}

enum Slot<T> {
    Running { waker: Option<Waker> },
    Finished(T),
    Cancelled,
    Taken,
}

struct Shared<T> {
    slot: Mutex<Slot<T>>,
}

impl<T> Shared<T> {
    fn complete(&self, next: Slot<T>) {
        let waker = {
            let mut slot = self.slot.lock().unwrap_or_else(|poison| poison.into_inner());
            match std::mem::replace(&mut *slot, Slot::Taken) {
                Slot::Running { waker } => {
                    *slot = next;
                    waker
                }
                previous => {
                    // Completed once already (output set, then the wrapper dropped): keep it.
                    *slot = previous;
                    None
                }
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// Awaits a spawned task's output. Dropping it detaches the task.
pub struct TaskHandle<T> {
    shared: Arc<Shared<T>>,
    abort: Option<Box<dyn Fn() + Send + Sync>>,
}

impl<T> fmt::Debug for TaskHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TaskHandle")
    }
}

impl<T: Send + 'static> TaskHandle<T> {
    /// Wraps `future` for spawning. The backend spawns the returned future and then attaches its
    /// abort hook with `set_abort`.
    pub fn wrap<F>(future: F) -> (impl Future<Output = ()> + Send + 'static, TaskHandle<T>)
    where
        F: Future<Output = T> + Send + 'static,
    {
        let shared = Arc::new(Shared { slot: Mutex::new(Slot::Running { waker: None }) });
        let guard = CancelOnDrop { shared: Arc::clone(&shared) };
        let wrapped = async move {
            let guard = guard;
            let output = future.await;
            guard.shared.complete(Slot::Finished(output));
        };
        (wrapped, TaskHandle { shared, abort: None })
    }

    /// Attaches the backend's way to cancel the task.
    pub fn set_abort(&mut self, abort: Box<dyn Fn() + Send + Sync>) {
        self.abort = Some(abort);
    }
}

impl<T> TaskHandle<T> {
    /// Cancels the task; awaiting the handle then gives `Err(JoinError::Cancelled)`.
    pub fn abort(&self) {
        if let Some(abort) = &self.abort {
            abort();
        }
    }

    /// Whether the task has finished (with output or cancelled).
    pub fn is_finished(&self) -> bool {
        let slot = self.shared.slot.lock().unwrap_or_else(|poison| poison.into_inner());
        !matches!(*slot, Slot::Running { .. })
    }
}

impl<T> Future for TaskHandle<T> {
    type Output = Result<T, JoinError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut slot = self.shared.slot.lock().unwrap_or_else(|poison| poison.into_inner());
        match std::mem::replace(&mut *slot, Slot::Taken) {
            Slot::Running { .. } => {
                *slot = Slot::Running { waker: Some(cx.waker().clone()) };
                Poll::Pending
            }
            Slot::Finished(output) => Poll::Ready(Ok(output)),
            Slot::Cancelled => Poll::Ready(Err(JoinError::Cancelled)),
            Slot::Taken => panic!("TaskHandle polled after it completed"),
        }
    }
}

/// Marks the task cancelled if the wrapper is dropped before it finished.
struct CancelOnDrop<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Drop for CancelOnDrop<T> {
    fn drop(&mut self) {
        self.shared.complete(Slot::Cancelled);
    }
}
