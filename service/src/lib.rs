//! How a Ghostmesh production binary runs, the same way for all of them: `tracing` logs with
//! `RUST_LOG` filters (default `info`) as text or JSON on stderr, `--version` with the git
//! revision, SIGTERM/SIGINT as a clean shutdown with a bound (a second signal exits at once),
//! stdout that ends quietly on a broken pipe, Prometheus metrics and `/healthz` on an optional
//! `--metrics ADDR`, and errors that name what they concern.
//!
//! Production only: the systems depend on this crate under their `tokio` feature, for
//! `src/bin/`, never in library code. A server binary uses it like this:
//!
//! ```no_run
//! use clap::Parser;
//!
//! #[derive(Parser)]
//! #[command(version = service::VERSION)]
//! struct Args {
//!     #[command(flatten)]
//!     service: service::Options,
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     let args = Args::parse();
//!     service::run("example", &args.service, |service| async move {
//!         service.set_collector(|samples| samples.counter("example_ticks_total", "Ticks.", 1));
//!         service.shutdown().requested().await; // Serve until SIGTERM or SIGINT.
//!         service::println("bye")?; // A closed stdout ends the run quietly.
//!         Ok(())
//!     })
//! }
//! ```
//!
//! A one-shot client calls [`init_logging`] instead of [`run`] and uses [`println`] and
//! [`is_output_closed`] for its output.

mod context;
mod logging;
mod metrics;
mod output;
mod shutdown;
pub mod testing;

use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

/// Re-exported so binaries build their control routes with the same axum.
pub use axum;
pub use context::Concerning;
pub use logging::{LogFormat, LogOptions, init_logging};
pub use metrics::Samples;
pub use output::{OutputClosed, is_output_closed, println};
pub use shutdown::Shutdown;
/// Re-exported so binaries log through the same `tracing` without their own dependency.
pub use tracing;

/// The version every binary prints: the crate version and the git revision it was built from.
pub const VERSION: &str =
    concat!(env!("CARGO_PKG_VERSION"), " (git ", env!("GHOSTMESH_GIT_REVISION"), ")");

/// The git revision the binaries were built from ("unknown" outside a git checkout).
pub const REVISION: &str = env!("GHOSTMESH_GIT_REVISION");

/// The flags every server binary shares (flatten them into its clap arguments).
#[derive(clap::Args, Clone, Debug)]
pub struct Options {
    /// Logging flags.
    #[command(flatten)]
    pub log: LogOptions,
    /// Serve Prometheus metrics at `/metrics` and a health check at `/healthz` on this address.
    #[arg(long, value_name = "ADDR", global = true)]
    pub metrics: Option<SocketAddr>,
    /// Seconds a clean shutdown may take after SIGTERM/SIGINT before the process gives up.
    #[arg(long, value_name = "SECONDS", default_value_t = 10, global = true)]
    pub shutdown_timeout_secs: u64,
}

/// What a running binary gets from [`run`]: its shutdown signal and its metrics.
#[derive(Clone)]
pub struct Service {
    shutdown: Shutdown,
    metrics: metrics::Slot,
}

impl Service {
    /// The shutdown token: fires on the first SIGTERM or SIGINT.
    pub fn shutdown(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// Serves `routes` (the binary's control API) on the `--metrics` listener beside `/metrics`
    /// and `/healthz`; without `--metrics` they are not served.
    pub fn set_routes(&self, routes: axum::Router) {
        self.metrics.set_routes(routes);
    }

    /// Installs what `/metrics` reports: `collect` runs on every scrape and adds samples
    /// read from the system's own counters. A later call replaces an earlier one.
    pub fn set_collector(&self, collect: impl Fn(&mut Samples) + Send + Sync + 'static) {
        self.metrics.set(Box::new(collect));
    }
}

/// Runs `body` as the binary `name`: logs, runtime, signals, metrics listener; maps the
/// outcome to an exit code (0, or 1 with the error and its causes logged; a closed stdout is
/// a quiet 0). Shutdown is bounded by `--shutdown-timeout-secs` from the first signal.
pub fn run<F, Fut>(name: &'static str, options: &Options, body: F) -> ExitCode
where
    F: FnOnce(Service) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    init_logging(&options.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the tokio runtime");
            return ExitCode::FAILURE;
        }
    };
    let bound = Duration::from_secs(options.shutdown_timeout_secs);
    let outcome = runtime.block_on(async {
        let shutdown = Shutdown::new();
        shutdown::watch_signals(name, shutdown.clone(), bound)?;
        let metrics = metrics::Slot::new(name);
        if let Some(addr) = options.metrics {
            metrics::serve(addr, metrics.clone(), shutdown.clone()).await?;
        }
        tracing::info!(version = VERSION, "{name} starting");
        body(Service { shutdown, metrics }).await
    });
    // Tasks still running (connections, timers) are dropped; nothing blocking is waited on
    // for longer than the bound.
    runtime.shutdown_timeout(bound);
    if outcome.is_ok() {
        tracing::info!("{name} stopped");
    }
    exit_code(name, outcome)
}

/// The exit code of a run's outcome, logging a failure with its causes.
pub fn exit_code(name: &str, outcome: anyhow::Result<()>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if is_output_closed(&error) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{name}: {error:#}");
            ExitCode::FAILURE
        }
    }
}
