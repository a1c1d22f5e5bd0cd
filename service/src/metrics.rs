//! Metrics: `/metrics` in the Prometheus (OpenMetrics) text format and `/healthz`, served by
//! axum on `--metrics ADDR`, with the binary's own routes (a control API) beside them. A binary
//! installs a collector that reads its system's own counters at scrape time into [`Samples`];
//! nothing is counted twice.

#![allow(
    clippy::disallowed_types,
    reason = "production runtime: the metrics listener is a real socket"
)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use axum::Router;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tower::ServiceExt;

use crate::Shutdown;
use crate::context::Concerning;

/// A collector: adds the current samples.
pub(crate) type Collect = Box<dyn Fn(&mut Samples) + Send + Sync>;

/// The metric families of one scrape, in the order they were added.
#[derive(Debug, Default)]
pub struct Samples {
    families: Vec<Family>,
}

#[derive(Debug)]
struct Family {
    // The exposed name without the `_total` the encoder appends to counters.
    name: String,
    help: String,
    kind: MetricType,
    samples: Vec<(Vec<(String, String)>, Value)>,
}

#[derive(Clone, Copy, Debug)]
enum Value {
    Counter(u64),
    // A counter of a continuous quantity (seconds).
    CounterFloat(f64),
    Gauge(f64),
}

impl Samples {
    /// A counter without labels; `name` ends in `_total` (as it is exposed).
    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.counter_with(name, help, &[], value);
    }

    /// Counters without labels, one per `(name, help, value)` row of a table.
    pub fn counters(&mut self, table: &[(&str, &str, u64)]) {
        self.counters_with(&[], table);
    }

    /// Counters with the same labels, one per `(name, help, value)` row of a table.
    pub fn counters_with(&mut self, labels: &[(&str, &str)], table: &[(&str, &str, u64)]) {
        for (name, help, value) in table {
            self.counter_with(name, help, labels, *value);
        }
    }

    /// One labelled sample of counter `name` (samples of one name form one family).
    pub fn counter_with(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: u64) {
        let base = name.strip_suffix("_total");
        assert!(base.is_some(), "counter {name} must end in _total");
        let base = base.unwrap_or(name);
        self.add(base, help, MetricType::Counter, labels, Value::Counter(value));
    }

    /// A counter without labels of a continuous quantity (`_seconds_total`); `value` is
    /// finite and never negative.
    pub fn counter_float(&mut self, name: &str, help: &str, value: f64) {
        assert!(value.is_finite() && value >= 0.0, "counter {name} at {value}");
        let base = name.strip_suffix("_total");
        assert!(base.is_some(), "counter {name} must end in _total");
        let base = base.unwrap_or(name);
        self.add(base, help, MetricType::Counter, &[], Value::CounterFloat(value));
    }

    /// A gauge without labels.
    pub fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.gauge_with(name, help, &[], value);
    }

    /// One labelled sample of gauge `name`.
    pub fn gauge_with(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.add(name, help, MetricType::Gauge, labels, Value::Gauge(value));
    }

    fn add(&mut self, name: &str, help: &str, kind: MetricType, labels: &[(&str, &str)], v: Value) {
        let labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        if let Some(family) = self.families.iter_mut().find(|family| family.name == name) {
            assert!(family.kind == kind, "metric {name} added with two types");
            family.samples.push((labels, v));
            return;
        }
        let (name, help) = (name.to_string(), help.to_string());
        self.families.push(Family { name, help, kind, samples: vec![(labels, v)] });
    }

    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for family in &self.families {
            let mut metric =
                encoder.encode_descriptor(&family.name, &family.help, None, family.kind)?;
            for (labels, value) in &family.samples {
                // An empty label set writes no braces.
                let sample = metric.encode_family(labels)?;
                match *value {
                    Value::Counter(count) => ConstCounter::new(count).encode(sample)?,
                    Value::CounterFloat(amount) => ConstCounter::new(amount).encode(sample)?,
                    Value::Gauge(level) => ConstGauge::new(level).encode(sample)?,
                }
            }
        }
        Ok(())
    }
}

/// Where the binary's collector lives; shared by the HTTP handler.
#[derive(Clone)]
pub(crate) struct Slot {
    name: &'static str,
    collect: Arc<Mutex<Option<Collect>>>,
    // The binary's own API, served beside `/metrics` and `/healthz`.
    routes: Arc<Mutex<Option<Router>>>,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Slot {
    pub(crate) fn new(name: &'static str) -> Slot {
        Slot { name, collect: Arc::new(Mutex::new(None)), routes: Arc::new(Mutex::new(None)) }
    }

    pub(crate) fn set_routes(&self, routes: Router) {
        *self.routes.lock().unwrap_or_else(|poison| poison.into_inner()) = Some(routes);
    }

    /// Hands `request` to the binary's routes (404 before it installed any).
    async fn route(&self, request: Request) -> Response {
        let routes = self.routes.lock().unwrap_or_else(|poison| poison.into_inner()).clone();
        let Some(routes) = routes else { return StatusCode::NOT_FOUND.into_response() };
        match routes.oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }

    pub(crate) fn set(&self, collect: Collect) {
        *self.collect.lock().unwrap_or_else(|poison| poison.into_inner()) = Some(collect);
    }

    /// One scrape: the build info and the collector's samples.
    fn samples(&self) -> Samples {
        let mut samples = Samples::default();
        let labels = [("binary", self.name), ("version", crate::VERSION)];
        samples.gauge_with("ghostmesh_build_info", "The binary and its build.", &labels, 1.0);
        if let Some(collect) = &*self.collect.lock().unwrap_or_else(|poison| poison.into_inner()) {
            collect(&mut samples);
        }
        samples
    }
}

impl Collector for Slot {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.samples().encode(encoder)
    }
}

/// The scrape body in the OpenMetrics text format.
pub(crate) fn render(slot: &Slot) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(slot.clone()));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text)
}

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds `addr` and serves `/metrics` and `/healthz` until the process ends.
pub(crate) async fn serve(addr: SocketAddr, slot: Slot, shutdown: Shutdown) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .concerning("binding the metrics listener on", addr)?;
    let local = listener.local_addr().context("the metrics listener's address")?;
    let health = shutdown.clone();
    let extra = slot.clone();
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let slot = slot.clone();
                async move {
                    match render(&slot) {
                        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
                        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                    }
                }
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let stopping = health.is_requested();
                async move {
                    if stopping {
                        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
                    } else {
                        (StatusCode::OK, "ok\n")
                    }
                }
            }),
        )
        .fallback(move |request: Request| {
            let extra = extra.clone();
            async move { extra.route(request).await }
        });
    tracing::info!(addr = %local, "metrics on http://{local}/metrics");
    #[allow(clippy::disallowed_methods, reason = "production runtime: the listener's task")]
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "the metrics listener failed");
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_labels() {
        let slot = Slot::new("test");
        slot.set(Box::new(|samples: &mut Samples| {
            samples.counter("a_things_total", "Things.", 3);
            samples.counter_with("b_drops_total", "Drops.", &[("reason", "x")], 1);
            samples.counter_with("b_drops_total", "Drops.", &[("reason", "y")], 2);
            samples.gauge("c_bytes", "Bytes.", 7.0);
            samples.counter_float("d_wait_seconds_total", "Waits.", 1.5);
        }));
        let text = render(&slot).unwrap();
        for line in [
            "# TYPE a_things counter",
            "a_things_total 3",
            "b_drops_total{reason=\"x\"} 1",
            "b_drops_total{reason=\"y\"} 2",
            "# TYPE c_bytes gauge",
            "c_bytes 7.0",
            "# TYPE d_wait_seconds counter",
            "d_wait_seconds_total 1.5",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing from\n{text}");
        }
        assert!(text.contains("ghostmesh_build_info{binary=\"test\""), "{text}");
    }
}
