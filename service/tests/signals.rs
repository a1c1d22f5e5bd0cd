//! The shutdown contract end to end, on `service-probe` (feature `probe`), a binary whose
//! clean shutdown takes a minute: the first SIGTERM starts the shutdown (and `/healthz` turns
//! 503), a second SIGTERM or SIGINT during it exits at once with 143 or 130, and a shutdown
//! that outlasts `--shutdown-timeout-secs` exits with 1.

#![cfg(feature = "probe")]
#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    reason = "end-to-end tests of a production binary: real processes and time"
)]

use std::time::Duration;

use service::testing::{Process, field, http_get};

const PROBE: &str = env!("CARGO_BIN_EXE_service-probe");
/// Far below the probe's minute-long shutdown: an exit within it was not the clean one.
const PROMPT_MAX: Duration = Duration::from_secs(15);

/// Starts the probe with `args`; returns it and its metrics address once it is ready.
fn start(args: &[&str]) -> (Process, std::net::SocketAddr) {
    let mut all = vec!["--metrics", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let mut probe = Process::start(PROBE, &all);
    let metrics = field(&probe.wait_for("metrics on"), "addr").expect("metrics addr");
    probe.wait_for("probe ready");
    (probe, metrics.parse().expect("metrics addr"))
}

#[test]
fn a_second_signal_during_a_slow_shutdown_exits_at_once() {
    for (second, code) in [("TERM", 143), ("INT", 130)] {
        let (mut probe, metrics) = start(&["--shutdown-timeout-secs", "120"]);
        assert_eq!(http_get(metrics, "/healthz"), (200, "ok\n".to_string()));
        probe.signal("TERM");
        probe.wait_for("shutting down cleanly");
        probe.wait_for("probe stopping slowly");
        assert_eq!(http_get(metrics, "/healthz").0, 503, "healthy while shutting down");
        probe.signal(second);
        let (status, took) = probe.wait_exit(PROMPT_MAX);
        assert_eq!(status.code(), Some(code), "after SIG{second}: {}", probe.log());
        assert!(probe.log().contains("second signal: exiting at once"), "{}", probe.log());
        assert!(!probe.log().contains("probe stopped"), "{}", probe.log());
        assert!(took < PROMPT_MAX, "{took:?}");
    }
}

#[test]
fn a_shutdown_past_its_bound_exits_with_one() {
    let (mut probe, _) = start(&["--shutdown-timeout-secs", "1"]);
    probe.signal("INT");
    probe.wait_for("probe stopping slowly");
    let (status, _) = probe.wait_exit(PROMPT_MAX);
    assert_eq!(status.code(), Some(1), "{}", probe.log());
    assert!(probe.log().contains("shutdown took longer than 1s"), "{}", probe.log());
}

#[test]
fn a_quick_shutdown_exits_zero() {
    let (mut probe, _) = start(&["--stop-secs", "0"]);
    probe.signal("TERM");
    let (status, _) = probe.wait_exit(PROMPT_MAX);
    assert_eq!(status.code(), Some(0), "{}", probe.log());
    assert!(probe.log().contains("probe stopped"), "{}", probe.log());
}
