//! Clean shutdown: the first SIGTERM or SIGINT fires the [`Shutdown`] token the binary awaits
//! (stop accepting, finish in-flight work, close the store, leave the cluster); a second signal
//! exits at once with 128 + the signal number (143, 130), and a shutdown that outlasts its bound
//! exits with 1.

#![allow(
    clippy::disallowed_methods,
    reason = "production runtime: signals and the shutdown bound run on the real clock"
)]

use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Fires once when the process is asked to stop; clones share it.
#[derive(Clone, Debug, Default)]
pub struct Shutdown(CancellationToken);

impl Shutdown {
    /// A token that has not fired.
    pub fn new() -> Shutdown {
        Shutdown(CancellationToken::new())
    }

    /// Completes once shutdown was requested (at once if it already was).
    pub async fn requested(&self) {
        self.0.cancelled().await;
    }

    /// Whether shutdown was requested.
    pub fn is_requested(&self) -> bool {
        self.0.is_cancelled()
    }

    /// Requests shutdown (what a signal does; a binary may also end itself this way).
    pub fn request(&self) {
        self.0.cancel();
    }
}

/// Spawns the task that turns signals into `shutdown` and enforces `bound`.
pub(crate) fn watch_signals(
    name: &'static str,
    shutdown: Shutdown,
    bound: Duration,
) -> anyhow::Result<()> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        let first = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
            () = shutdown.requested() => "a request",
        };
        tracing::info!(bound_secs = bound.as_secs(), "{name}: {first}: shutting down cleanly");
        shutdown.request();
        let code = tokio::select! {
            _ = terminate.recv() => 143,
            _ = interrupt.recv() => 130,
            () = tokio::time::sleep(bound) => {
                tracing::error!("{name}: shutdown took longer than {}s; exiting", bound.as_secs());
                1
            }
        };
        if code != 1 {
            tracing::warn!("{name}: second signal: exiting at once");
        }
        std::process::exit(code);
    });
    Ok(())
}
