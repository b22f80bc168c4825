//! Process-wide counters, cheap to bump from any task, read by health and metrics. Labels are a
//! closed set; no session id ever becomes a label.

mod requests;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use requests::{MethodClass, Outcome, RequestProbe, RequestStats};

/// A counter: prometheus-client's own (an atomic), encoded at `/metrics` as it is.
pub type Counter = prometheus_client::metrics::counter::Counter;

/// A value that goes up and down: prometheus-client's own gauge.
pub type Gauge = prometheus_client::metrics::gauge::Gauge;

/// Upper bounds (seconds) for request latency: from a cached answer to a long tool call.
pub const REQUEST_BUCKETS: [f64; 14] =
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// Upper bounds (seconds) for store writes: memory, then an fsync'd SQLite commit, then trouble.
pub const STORE_BUCKETS: [f64; 10] = [0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.5];

/// A latency histogram over fixed bucket bounds: lock-free to observe.
///
/// Hand-written because prometheus-client's `Histogram` (0.25) keeps its buckets behind a
/// mutex every observation takes — a lock on the request path of every session — and does
/// not expose its bucket counts, which the dashboard's p50/p99 plots read.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One counter per bound, then the overflow (+Inf) bucket; not cumulative.
    buckets: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
}

/// A histogram read at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// Sum of the observations in seconds.
    pub sum: f64,
    /// Number of observations (the sum of `buckets`).
    pub count: u64,
    /// (upper bound, observations in this bucket only), ending with `f64::INFINITY`.
    pub buckets: Vec<(f64, u64)>,
}

impl Histogram {
    /// An empty histogram over `bounds` (ascending).
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self.bounds.iter().position(|b| secs <= *b).unwrap_or(self.bounds.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(d.as_nanos().min(u128::from(u64::MAX)) as u64, Ordering::Relaxed);
    }

    /// The current counts.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.buckets.iter().map(|b| b.load(Ordering::Relaxed)))
            .collect();
        HistogramSnapshot {
            sum: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            count: buckets.iter().map(|(_, n)| n).sum(),
            buckets,
        }
    }
}

/// What a store write was, for its latency: a closed set of labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOp {
    /// A new session record.
    Create,
    /// The handshake's outcome.
    Handshake,
    /// The replayable session state.
    State,
    /// Activity, written behind.
    Touch,
    /// A session closed.
    Close,
    /// A flush of what was written behind.
    Flush,
    /// An SSE event committed before it is sent.
    EventAppend,
    /// Events dropped beyond retention.
    EventPrune,
    /// A session's events dropped.
    EventForget,
}

impl StoreOp {
    /// Every store operation, in label order.
    pub const ALL: [StoreOp; 9] = [
        StoreOp::Create,
        StoreOp::Handshake,
        StoreOp::State,
        StoreOp::Touch,
        StoreOp::Close,
        StoreOp::Flush,
        StoreOp::EventAppend,
        StoreOp::EventPrune,
        StoreOp::EventForget,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreOp::Create => "create",
            StoreOp::Handshake => "handshake",
            StoreOp::State => "state",
            StoreOp::Touch => "touch",
            StoreOp::Close => "close",
            StoreOp::Flush => "flush",
            StoreOp::EventAppend => "event_append",
            StoreOp::EventPrune => "event_prune",
            StoreOp::EventForget => "event_forget",
        }
    }
}

/// Store write latency and failures, by operation.
#[derive(Debug)]
pub struct StoreStats {
    latency: [Histogram; StoreOp::ALL.len()],
    errors: [Counter; StoreOp::ALL.len()],
}

impl Default for StoreStats {
    fn default() -> Self {
        StoreStats {
            latency: std::array::from_fn(|_| Histogram::new(&STORE_BUCKETS)),
            errors: std::array::from_fn(|_| Counter::default()),
        }
    }
}

impl StoreStats {
    /// Records one write.
    pub fn record(&self, op: StoreOp, took: Duration, ok: bool) {
        self.latency[op as usize].observe(took);
        if !ok {
            self.errors[op as usize].inc();
        }
    }

    /// The latency of one operation.
    pub fn latency(&self, op: StoreOp) -> &Histogram {
        &self.latency[op as usize]
    }

    /// Failed writes of one operation.
    pub fn errors(&self, op: StoreOp) -> u64 {
        self.errors[op as usize].get()
    }
}

/// Everything tether counts.
#[derive(Debug, Default)]
pub struct Stats {
    /// Sessions created.
    pub sessions_created: Counter,
    /// Sessions closed by the client or an operator.
    pub sessions_closed: Counter,
    /// Sessions expired by the TTL.
    pub sessions_expired: Counter,
    /// Sessions loaded from the store after not being live here.
    pub sessions_resumed: Counter,
    /// Idle sessions whose task ended, their record left in the store.
    pub sessions_hibernated: Counter,
    /// Hibernated sessions woken by a request.
    pub sessions_woken: Counter,
    /// Upstream sides rebuilt by replay.
    pub revives: Counter,
    /// Revives that failed.
    pub revive_failures: Counter,
    /// Upstream connections that died on their own (child exit, session lost, disconnect).
    pub upstream_losses: Counter,
    /// Upstream connections reaped when idle.
    pub upstream_reaped: Counter,
    /// Times a crash-loop breaker opened.
    pub crash_loops: Counter,
    /// In-flight requests retried after a revive.
    pub requests_retried: Counter,
    /// In-flight requests ended with "upstream restarted".
    pub requests_interrupted: Counter,
    /// Requests ended by the request timeout.
    pub requests_timed_out: Counter,
    /// `tools/call` requests served.
    pub tool_calls: Counter,
    /// Milliseconds lived by the sessions that ended (closed or expired), summed.
    pub ended_session_ms: Counter,
    /// SSE response streams open now.
    pub sse_streams_open: Gauge,
    /// Stored SSE events sent again to a client resuming with `Last-Event-ID`.
    pub events_replayed: Counter,
    /// Client requests by method class and outcome, with latency.
    pub requests: RequestStats,
    /// Store write latency.
    pub store: StoreStats,
    /// Cluster mode: leases and the forward hop.
    pub cluster: ClusterStats,
}

/// Upper bounds (seconds) for a forwarded request's time to its answer's head.
pub const FORWARD_BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0];

/// Cluster mode's counters (all zero outside it).
#[derive(Debug)]
pub struct ClusterStats {
    /// Session leases this replica holds now.
    pub leases_held: Gauge,
    /// Leases won by a claim (new sessions, and sessions taken over).
    pub claims: Counter,
    /// Leases claimed after an earlier owner's ran out or was given back (it died, stalled
    /// or drained).
    pub takeovers: Counter,
    /// Requests forwarded to the owner over the internal hop.
    pub forwards: Counter,
    /// Forwards that failed to reach the owner (retried with a fresh lookup).
    pub forward_failures: Counter,
    /// Time from sending a forward to the owner's answer head.
    pub forward_latency: Histogram,
    /// Leases lost or given up without renewal: the local session was fenced off.
    pub fenced: Counter,
    /// Session writes refused for a stale or missing lease epoch.
    pub fenced_writes: Counter,
}

impl Default for ClusterStats {
    fn default() -> Self {
        ClusterStats {
            leases_held: Gauge::default(),
            claims: Counter::default(),
            takeovers: Counter::default(),
            forwards: Counter::default(),
            forward_failures: Counter::default(),
            forward_latency: Histogram::new(&FORWARD_BUCKETS),
            fenced: Counter::default(),
            fenced_writes: Counter::default(),
        }
    }
}

impl Stats {
    /// A probe for one client message: it records the message's outcome and latency once.
    pub fn probe(self: &Arc<Self>) -> Arc<RequestProbe> {
        RequestProbe::new(self.clone())
    }
}
