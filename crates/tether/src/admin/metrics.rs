//! `GET /metrics`: Prometheus metrics in the OpenMetrics text format, read at scrape time from
//! [`Stats`] (atomics the data plane bumps) and the session registry. Every label comes from a
//! closed set — states, method classes, outcomes, store operations — and no session id is ever
//! a label, so the number of series is fixed.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

use super::health::UpstreamCounts;
use super::{AdminError, AdminState};
use crate::session::Manager;
use crate::session::record::Transport;
use crate::stats::{HistogramSnapshot, MethodClass, Outcome, Stats, StoreOp};

/// The content type of the OpenMetrics text format, which Prometheus scrapes natively.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The registry served at `/metrics`.
pub fn registry(manager: Arc<Manager>) -> Registry {
    let started = crate::clock::now_secs_f64();
    let mut r = Registry::default();
    r.register_collector(Box::new(TetherCollector { manager, started }));
    r
}

/// GET /metrics
pub async fn scrape(State(state): State<AdminState>) -> Response {
    let mut body = String::with_capacity(16 * 1024);
    if let Err(e) = prometheus_client::encoding::text::encode(&mut body, &state.0.registry) {
        return AdminError::Internal(format!("encoding metrics failed: {e}")).into_response();
    }
    (StatusCode::OK, [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))], body).into_response()
}

/// Reads everything at scrape time.
struct TetherCollector {
    manager: Arc<Manager>,
    /// Unix seconds when the gateway started.
    started: f64,
}

impl std::fmt::Debug for TetherCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TetherCollector").finish_non_exhaustive()
    }
}

type Fmt = Result<(), std::fmt::Error>;

impl Collector for TetherCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Fmt {
        let m = &self.manager;
        let s: &Stats = &m.deps().stats;
        let e = &mut enc;

        gauge(
            e,
            "tether_start_time",
            "When the gateway started, in Unix seconds.",
            Some(&Unit::Seconds),
            self.started,
        )?;
        gauge(e, "tether_draining", "1 while new sessions are refused (drain).", None, u8::from(m.is_draining()))?;

        gauge(e, "tether_sessions_active", "Client sessions live in this process.", None, m.live_count() as f64)?;
        let mut f = e.encode_descriptor(
            "tether_sessions_live",
            "Client sessions live in this process by client transport (modern-http: the bindings of 2026-07-28 clients).",
            None,
            MetricType::Gauge,
        )?;
        for (t, n) in Transport::ALL.into_iter().zip(m.live_by_transport()) {
            ConstGauge::new(n as f64).encode(f.encode_family(&[("transport", t.as_str())])?)?;
        }
        counter(e, "tether_sessions_created", "Client sessions created.", &s.sessions_created)?;
        counter(e, "tether_sessions_closed", "Sessions closed by the client or an operator.", &s.sessions_closed)?;
        counter(e, "tether_sessions_expired", "Sessions ended by the idle TTL.", &s.sessions_expired)?;
        counter(e, "tether_sessions_resumed", "Sessions loaded from the store, not live here.", &s.sessions_resumed)?;
        counter(
            e,
            "tether_sessions_hibernated",
            "Idle sessions whose task ended, their record left in the store.",
            &s.sessions_hibernated,
        )?;
        counter(e, "tether_sessions_woken", "Hibernated sessions woken by a request.", &s.sessions_woken)?;
        counter(e, "tether_sessions_revived", "Upstream sides rebuilt by replay.", &s.revives)?;

        let c = UpstreamCounts::of(m);
        let mut f = e.encode_descriptor(
            "tether_upstreams",
            "Upstream bindings of live sessions by state; broken = crash-loop breaker open.",
            None,
            MetricType::Gauge,
        )?;
        for (state, n) in [("alive", c.alive), ("restarting", c.restarting), ("broken", c.broken), ("idle", c.idle)] {
            ConstGauge::new(n as f64).encode(f.encode_family(&[("state", state)])?)?;
        }
        counter(e, "tether_upstream_losses", "Upstream connections that died on their own.", &s.upstream_losses)?;
        counter(e, "tether_upstream_restart_failures", "Upstream restarts (revives) that failed.", &s.revive_failures)?;
        let sup = &m.deps().config.upstream.supervisor;
        counter(
            e,
            "tether_upstream_crash_loops",
            "Times a crash-loop breaker opened, or the stdio command was backed off across sessions.",
            &ConstCounter::new(s.crash_loops.get() + sup.backoffs_total.get()),
        )?;
        gauge(
            e,
            "tether_upstream_command_backoff",
            "1 while the stdio command is not started because it keeps exiting before it answers.",
            None,
            u8::from(sup.backing_off().is_some()),
        )?;
        counter(
            e,
            "tether_upstream_quick_exits",
            "Stdio children that exited before writing a message.",
            &sup.quick_exits_total,
        )?;
        gauge(
            e,
            "tether_upstream_spares_ready",
            "Stdio children started ahead of need and waiting for a session (`--stdio-spare`).",
            None,
            u32::try_from(sup.spares.ready()).unwrap_or(u32::MAX),
        )?;
        counter(
            e,
            "tether_upstream_spares_taken",
            "Sessions and revives that took a started spare child instead of starting one.",
            &sup.spares_taken_total,
        )?;
        counter(
            e,
            "tether_upstream_spawns_refused",
            "Stdio spawns refused during a command backoff.",
            &sup.spawns_refused_total,
        )?;
        counter(
            e,
            "tether_upstream_oversized_lines",
            "Stdout lines over the message limit, discarded.",
            &sup.oversized_lines_total,
        )?;
        counter(
            e,
            "tether_upstream_junk_lines",
            "Stdout lines that were not JSON-RPC messages, skipped.",
            &sup.junk_lines_total,
        )?;
        counter(
            e,
            "tether_upstream_stderr_truncated",
            "Stderr lines cut to the 4 KiB log line limit.",
            &sup.stderr_truncated_total,
        )?;
        counter(
            e,
            "tether_upstream_log_lines_suppressed",
            "Stderr and junk stdout lines not logged (rate limit).",
            &sup.log_lines_suppressed_total,
        )?;
        counter(e, "tether_upstream_reaped", "Upstream connections released when idle.", &s.upstream_reaped)?;
        let c = &s.cluster;
        c.leases_held.encode(e.encode_descriptor(
            "tether_cluster_leases_held",
            "Session leases this replica holds (cluster mode).",
            None,
            c.leases_held.metric_type(),
        )?)?;
        counter(e, "tether_cluster_claims", "Session leases won by a claim.", &c.claims)?;
        counter(
            e,
            "tether_cluster_takeovers",
            "Session leases claimed after an earlier owner's ran out or was given back.",
            &c.takeovers,
        )?;
        counter(e, "tether_cluster_forwards", "Requests forwarded to the owner replica.", &c.forwards)?;
        counter(
            e,
            "tether_cluster_forward_failures",
            "Forwards that did not reach the owner (looked up again).",
            &c.forward_failures,
        )?;
        histogram(
            e.encode_descriptor(
                "tether_cluster_forward_duration",
                "Time from a forward to the owner's answer head.",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?,
            &c.forward_latency.snapshot(),
        )?;
        counter(
            e,
            "tether_cluster_fenced",
            "Sessions fenced off here: their lease was lost or could not be renewed in time.",
            &c.fenced,
        )?;
        counter(
            e,
            "tether_cluster_fenced_writes",
            "Session writes the store refused: their lease epoch was stale (another replica owns the session).",
            &c.fenced_writes,
        )?;

        let mut f = e.encode_descriptor(
            "tether_requests",
            "Client messages by method class and outcome.",
            None,
            MetricType::Counter,
        )?;
        for class in MethodClass::ALL {
            for outcome in Outcome::ALL {
                let labels = [("method_class", class.as_str()), ("outcome", outcome.as_str())];
                ConstCounter::new(s.requests.count(class, outcome)).encode(f.encode_family(&labels)?)?;
            }
        }
        let mut f = e.encode_descriptor(
            "tether_request_duration",
            "Time from a client message's arrival to its outcome.",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for class in MethodClass::ALL {
            histogram(f.encode_family(&[("method_class", class.as_str())])?, &s.requests.latency(class).snapshot())?;
        }
        counter(e, "tether_requests_retried", "In-flight requests sent again after a revive.", &s.requests_retried)?;
        counter(
            e,
            "tether_requests_interrupted",
            "In-flight requests ended with 'upstream restarted'.",
            &s.requests_interrupted,
        )?;
        counter(e, "tether_tool_calls", "tools/call requests served.", &s.tool_calls)?;

        let g = &s.sse_streams_open;
        g.encode(e.encode_descriptor(
            "tether_sse_streams_open",
            "SSE response streams open now.",
            None,
            g.metric_type(),
        )?)?;
        let g = &s.requests.in_flight;
        g.encode(e.encode_descriptor(
            "tether_requests_in_flight",
            "Client messages received and not yet answered, failed or cancelled.",
            None,
            g.metric_type(),
        )?)?;
        counter(
            e,
            "tether_sse_events_replayed",
            "Stored events sent again to clients resuming with Last-Event-ID.",
            &s.events_replayed,
        )?;

        let mut f = e.encode_descriptor(
            "tether_store_write_duration",
            "Session store write latency by operation.",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for op in StoreOp::ALL {
            histogram(f.encode_family(&[("op", op.as_str())])?, &s.store.latency(op).snapshot())?;
        }
        let mut f = e.encode_descriptor(
            "tether_store_write_errors",
            "Failed store writes by operation.",
            None,
            MetricType::Counter,
        )?;
        for op in StoreOp::ALL {
            ConstCounter::new(s.store.errors(op)).encode(f.encode_family(&[("op", op.as_str())])?)?;
        }
        Ok(())
    }
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, c: &impl EncodeMetric) -> Fmt {
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, unit: Option<&Unit>, v: impl Into<f64>) -> Fmt {
    let g = ConstGauge::new(v.into());
    g.encode(e.encode_descriptor(name, help, unit, g.metric_type())?)
}

fn histogram(mut enc: prometheus_client::encoding::MetricEncoder, h: &HistogramSnapshot) -> Fmt {
    enc.encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets, None)
}
