//! `service-probe`: a stand-in server for the `service` crate's own end-to-end tests (feature
//! `probe`; not a production binary). It runs through `service::run` like every binary, and
//! when asked to stop it takes `--stop-secs` to do so, as a server finishing a long request
//! would, so a test can send a second signal during the shutdown or let the bound expire.

#![allow(
    clippy::disallowed_methods,
    reason = "a production-side binary: its slow shutdown sleeps on the real clock"
)]

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

/// A server whose clean shutdown takes a while.
#[derive(Parser, Debug)]
#[command(name = "service-probe", version = service::VERSION)]
struct Args {
    /// Seconds the clean shutdown takes after the first signal.
    #[arg(long, default_value_t = 60)]
    stop_secs: u64,
    #[command(flatten)]
    service: service::Options,
}

fn main() -> ExitCode {
    let args = Args::parse();
    service::run("service-probe", &args.service, |service| async move {
        service.set_collector(|samples| samples.counter("probe_ticks_total", "Ticks.", 1));
        service::tracing::info!("probe ready");
        service.shutdown().requested().await;
        service::tracing::info!(stop_secs = args.stop_secs, "probe stopping slowly");
        tokio::time::sleep(Duration::from_secs(args.stop_secs)).await;
        service::tracing::info!("probe stopped");
        Ok(())
    })
}
