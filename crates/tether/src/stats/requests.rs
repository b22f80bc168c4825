//! Client requests by method class and outcome, with latency. Both label sets are closed enums,
//! so the metric has a fixed, small number of series whatever clients send.
//!
//! A [`RequestProbe`] follows one client message: the transport classifies it, the session layer
//! settles it when the answer goes out (see `Sink::probed`), and a probe dropped unsettled counts
//! as cancelled (the client went away, or cancelled the request).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use serde::Deserialize;
use tether_protocol::method;
use tether_protocol::{Kind, Message, error_code};

use super::{Counter, Histogram, REQUEST_BUCKETS, Stats};
use crate::error::{Fault, GatewayError};

/// What a client message is, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodClass {
    /// `initialize`.
    Initialize,
    /// `tools/*`.
    Tools,
    /// `resources/*`.
    Resources,
    /// `prompts/*`.
    Prompts,
    /// `completion/*`.
    Completion,
    /// `logging/*`.
    Logging,
    /// `ping`.
    Ping,
    /// Any notification.
    Notification,
    /// The client's answer to a server request.
    Response,
    /// Anything else, including what could not be parsed.
    Other,
}

impl MethodClass {
    /// Every class, in label order.
    pub const ALL: [MethodClass; 10] = [
        MethodClass::Initialize,
        MethodClass::Tools,
        MethodClass::Resources,
        MethodClass::Prompts,
        MethodClass::Completion,
        MethodClass::Logging,
        MethodClass::Ping,
        MethodClass::Notification,
        MethodClass::Response,
        MethodClass::Other,
    ];

    /// The class of a client message.
    pub fn of(msg: &Message) -> MethodClass {
        match msg.kind() {
            Kind::Notification => return MethodClass::Notification,
            Kind::Response | Kind::Error => return MethodClass::Response,
            Kind::Request => {}
        }
        let method = msg.method().unwrap_or_default();
        match method.split('/').next().unwrap_or_default() {
            _ if method == method::INITIALIZE => MethodClass::Initialize,
            _ if method == method::PING => MethodClass::Ping,
            "tools" => MethodClass::Tools,
            "resources" => MethodClass::Resources,
            "prompts" => MethodClass::Prompts,
            "completion" => MethodClass::Completion,
            "logging" => MethodClass::Logging,
            _ => MethodClass::Other,
        }
    }

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            MethodClass::Initialize => method::INITIALIZE,
            MethodClass::Tools => "tools",
            MethodClass::Resources => "resources",
            MethodClass::Prompts => "prompts",
            MethodClass::Completion => "completion",
            MethodClass::Logging => "logging",
            MethodClass::Ping => method::PING,
            MethodClass::Notification => "notification",
            MethodClass::Response => "response",
            MethodClass::Other => "other",
        }
    }
}

/// How a client message ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A result (or, for notifications and answers, accepted).
    Ok,
    /// A JSON-RPC error from the upstream server.
    Error,
    /// tether refused it: the client's fault (bad input, unknown session, forbidden origin).
    Rejected,
    /// The upstream failed, restarted under it, or is crash-looping.
    UpstreamError,
    /// No answer within the request timeout.
    Timeout,
    /// The client cancelled it or went away before the answer.
    Cancelled,
    /// tether could not take it: draining, at the session limit, or the store failed.
    Unavailable,
}

impl Outcome {
    /// Every outcome, in label order.
    pub const ALL: [Outcome; 7] = [
        Outcome::Ok,
        Outcome::Error,
        Outcome::Rejected,
        Outcome::UpstreamError,
        Outcome::Timeout,
        Outcome::Cancelled,
        Outcome::Unavailable,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::Rejected => "rejected",
            Outcome::UpstreamError => "upstream_error",
            Outcome::Timeout => "timeout",
            Outcome::Cancelled => "cancelled",
            Outcome::Unavailable => "unavailable",
        }
    }

    /// The outcome an answer on the wire stands for, told by its error code: tether's own codes
    /// name the cause; any other error is the upstream's answer.
    pub fn of_answer(data: &[u8]) -> Outcome {
        #[derive(Deserialize)]
        struct Answer {
            error: Option<ErrorObject>,
        }
        #[derive(Deserialize)]
        struct ErrorObject {
            code: i64,
        }
        let Ok(answer) = serde_json::from_slice::<Answer>(data) else { return Outcome::Error };
        match answer.error.map(|e| e.code) {
            None => Outcome::Ok,
            Some(error_code::UPSTREAM_TIMEOUT) => Outcome::Timeout,
            Some(error_code::UPSTREAM_UNAVAILABLE | error_code::UPSTREAM_RESTARTED) => Outcome::UpstreamError,
            Some(error_code::GATEWAY_UNAVAILABLE) => Outcome::Unavailable,
            Some(error_code::REQUEST_CANCELLED) => Outcome::Cancelled,
            Some(error_code::SESSION_NOT_FOUND) => Outcome::Rejected,
            Some(_) => Outcome::Error,
        }
    }

    /// The outcome of a request tether ended with one of its own errors.
    pub fn of_error(e: &GatewayError) -> Outcome {
        if let GatewayError::UpstreamTimeout(_) = e {
            return Outcome::Timeout;
        }
        match e.wire().fault {
            Fault::Downstream => Outcome::Rejected,
            Fault::Upstream => Outcome::UpstreamError,
            Fault::Internal => Outcome::Unavailable,
        }
    }
}

/// Counts and latency of client messages.
#[derive(Debug)]
pub struct RequestStats {
    counts: [[Counter; Outcome::ALL.len()]; MethodClass::ALL.len()],
    latency: [Histogram; MethodClass::ALL.len()],
    /// Client messages received and not yet settled (answered, failed or cancelled).
    pub in_flight: super::Gauge,
}

impl Default for RequestStats {
    fn default() -> Self {
        RequestStats {
            counts: std::array::from_fn(|_| std::array::from_fn(|_| Counter::default())),
            latency: std::array::from_fn(|_| Histogram::new(&REQUEST_BUCKETS)),
            in_flight: super::Gauge::default(),
        }
    }
}

impl RequestStats {
    /// Records one finished message.
    pub fn record(&self, class: MethodClass, outcome: Outcome, took: Duration) {
        self.counts[class as usize][outcome as usize].inc();
        self.latency[class as usize].observe(took);
    }

    /// How many messages of `class` ended with `outcome`.
    pub fn count(&self, class: MethodClass, outcome: Outcome) -> u64 {
        self.counts[class as usize][outcome as usize].get()
    }

    /// The latency of `class`.
    pub fn latency(&self, class: MethodClass) -> &Histogram {
        &self.latency[class as usize]
    }
}

/// Follows one client message to its outcome; the first settlement counts.
#[derive(Debug)]
pub struct RequestProbe {
    stats: Arc<Stats>,
    class: AtomicU8,
    started: Instant,
    settled: AtomicBool,
}

impl RequestProbe {
    pub(super) fn new(stats: Arc<Stats>) -> Arc<RequestProbe> {
        stats.requests.in_flight.inc();
        Arc::new(RequestProbe {
            stats,
            class: AtomicU8::new(MethodClass::Other as u8),
            started: Instant::now(),
            settled: AtomicBool::new(false),
        })
    }

    /// Names the message's class, once it is parsed.
    pub fn classify(&self, msg: &Message) {
        self.class.store(MethodClass::of(msg) as u8, Ordering::Relaxed);
    }

    /// The class named so far.
    pub fn class(&self) -> MethodClass {
        let i = usize::from(self.class.load(Ordering::Relaxed));
        MethodClass::ALL.get(i).copied().unwrap_or(MethodClass::Other)
    }

    /// Records the outcome, unless one was recorded already.
    pub fn settle(&self, outcome: Outcome) {
        if self.settled.swap(true, Ordering::AcqRel) {
            return;
        }
        self.stats.requests.in_flight.dec();
        self.stats.requests.record(self.class(), outcome, self.started.elapsed());
    }

    /// Records the outcome an answer stands for.
    pub fn answered(&self, data: &[u8]) {
        if !self.settled.load(Ordering::Acquire) {
            self.settle(Outcome::of_answer(data));
        }
    }

    /// Records a request tether ended with an error of its own.
    pub fn failed(&self, e: &GatewayError) {
        self.settle(Outcome::of_error(e));
    }
}

impl Drop for RequestProbe {
    fn drop(&mut self) {
        self.settle(Outcome::Cancelled);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(text: &str) -> Message {
        Message::parse(text.as_bytes()).expect("a message")
    }

    #[test]
    fn classes_are_a_closed_set() {
        let class = |t: &str| MethodClass::of(&msg(t)).as_str();
        assert_eq!(class(r#"{"jsonrpc":"2.0","id":1,"method":"initialize"}"#), "initialize");
        assert_eq!(class(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#), "tools");
        assert_eq!(class(r#"{"jsonrpc":"2.0","id":1,"method":"resources/templates/list"}"#), "resources");
        assert_eq!(class(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#), "ping");
        assert_eq!(class(r#"{"jsonrpc":"2.0","id":1,"method":"pingx"}"#), "other");
        assert_eq!(class(r#"{"jsonrpc":"2.0","id":1,"method":"initializex/y"}"#), "other");
        assert_eq!(class(r#"{"jsonrpc":"2.0","id":1,"method":"made/up/by/a/client"}"#), "other");
        assert_eq!(class(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#), "notification");
        assert_eq!(class(r#"{"jsonrpc":"2.0","id":"tether-1","result":{}}"#), "response");
        for (i, c) in MethodClass::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i, "ALL is in discriminant order");
        }
        for (i, o) in Outcome::ALL.iter().enumerate() {
            assert_eq!(*o as usize, i, "ALL is in discriminant order");
        }
    }

    #[test]
    fn answers_are_told_apart_by_their_error_code() {
        let of = |t: &str| Outcome::of_answer(t.as_bytes());
        assert_eq!(of(r#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#), Outcome::Ok);
        assert_eq!(of(r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"bad"}}"#), Outcome::Error);
        assert_eq!(of(r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32012,"message":"late"}}"#), Outcome::Timeout);
        assert_eq!(of(r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32011,"message":"x"}}"#), Outcome::UpstreamError);
        assert_eq!(of(r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32001,"message":"x"}}"#), Outcome::Rejected);
        assert_eq!(Outcome::of_error(&GatewayError::SessionNotFound), Outcome::Rejected);
        assert_eq!(Outcome::of_error(&GatewayError::UpstreamTimeout(5)), Outcome::Timeout);
        assert_eq!(Outcome::of_error(&GatewayError::ShuttingDown), Outcome::Unavailable);
        assert_eq!(Outcome::of_error(&GatewayError::CrashLoop { retry_after_s: 1 }), Outcome::UpstreamError);
    }

    #[test]
    fn a_probe_counts_once_and_a_dropped_one_counts_as_cancelled() {
        let stats = Arc::new(Stats::default());
        let p = stats.probe();
        p.classify(&msg(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#));
        p.answered(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#);
        p.settle(Outcome::Timeout);
        drop(p);
        assert_eq!(stats.requests.count(MethodClass::Tools, Outcome::Ok), 1);
        assert_eq!(stats.requests.count(MethodClass::Tools, Outcome::Timeout), 0);
        assert_eq!(stats.requests.latency(MethodClass::Tools).snapshot().count, 1);

        let open = stats.probe();
        assert_eq!(stats.requests.in_flight.get(), 1, "a probe not settled is in flight");
        drop(open);
        assert_eq!(stats.requests.count(MethodClass::Other, Outcome::Cancelled), 1);
        assert_eq!(stats.requests.in_flight.get(), 0, "every probe settled once");
    }
}
