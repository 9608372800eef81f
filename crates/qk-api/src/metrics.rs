//! `GET /metrics`: request counts and durations by route template, and the
//! backend's gauges, in the Prometheus text format.

use std::sync::atomic::AtomicU64;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::errors::{ErrorKind, Failure};
use crate::{AppState, Gauges, REQUEST_TIMEOUT};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

type HistogramFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

fn new_histogram() -> Histogram {
    // 1 ms .. ~65 s: key generation waits up to a minute.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// The API's metrics registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: HistogramFamily,
    term: Gauge<u64, AtomicU64>,
    last_applied: Gauge<u64, AtomicU64>,
    keys: Gauge<u64, AtomicU64>,
    audit_len: Gauge<u64, AtomicU64>,
    is_leader: Gauge<u64, AtomicU64>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("qk_api");
        let requests = Family::<RequestLabels, Counter>::default();
        let durations = HistogramFamily::new_with_constructor(new_histogram);
        let gauge = Gauge::<u64, AtomicU64>::default;
        let (term, last_applied, keys, audit_len, is_leader) =
            (gauge(), gauge(), gauge(), gauge(), gauge());
        registry.register(
            "requests",
            "HTTP requests by route template, method and status class",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "HTTP request duration by route template",
            durations.clone(),
        );
        registry.register("raft_term", "Current Raft term", term.clone());
        registry.register(
            "raft_last_applied",
            "Last log index applied",
            last_applied.clone(),
        );
        registry.register("keys", "Keys in the inventory", keys.clone());
        registry.register("audit_records", "Audit trail length", audit_len.clone());
        registry.register("is_leader", "1 when this node leads", is_leader.clone());
        Metrics {
            registry,
            requests,
            durations,
            term,
            last_applied,
            keys,
            audit_len,
            is_leader,
        }
    }

    fn observe(&self, route: &str, method: &str, status: StatusCode, seconds: f64) {
        let class = format!("{}xx", status.as_u16() / 100);
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_owned(),
                method: method.to_owned(),
                status: class,
            })
            .inc();
        self.durations
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
            })
            .observe(seconds);
    }

    /// The text exposition, with gauges refreshed from `gauges`.
    pub fn render(&self, gauges: &Gauges) -> Result<String, std::fmt::Error> {
        self.term.set(gauges.term);
        self.last_applied.set(gauges.last_applied);
        self.keys.set(gauges.key_count);
        self.audit_len.set(gauges.audit_len);
        self.is_leader.set(u64::from(gauges.is_leader));
        let mut text = String::new();
        encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Counts and times every request; bounds its duration.
pub(crate) async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    // Route templates only (never raw paths): label cardinality stays bounded.
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let method = bounded_method(req.method().as_str());
    let start = Instant::now();
    let response = match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(r) => r,
        Err(_) => Failure::new(
            ErrorKind::Unavailable,
            format!(
                "the request took longer than {} s; check the cluster's health and retry",
                REQUEST_TIMEOUT.as_secs()
            ),
        )
        .into_response(),
    };
    let seconds = start.elapsed().as_secs_f64();
    state
        .metrics
        .observe(&route, method, response.status(), seconds);
    response
}

fn bounded_method(m: &str) -> &'static str {
    match m {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "LIST" => "LIST",
        "HEAD" => "HEAD",
        _ => "other",
    }
}

/// `GET /metrics`.
pub(crate) async fn serve(State(state): State<AppState>) -> Response {
    match state.metrics.render(&state.backend.gauges()) {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => Failure::new(ErrorKind::Internal, "could not encode the metrics").into_response(),
    }
}
