//! SSE response bodies: one pump task per client stream writes the session's events (already
//! stored and given ids by the session), keep-alive comments on idle streams, a priming event
//! where the revision wants one, and a `retry` hint before a stream is ended on purpose.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::stream;
use tether_protocol::sse;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::session::{Outbound, SessionHandle};

/// A body fed by a channel, and the response that carries it.
pub fn sse_response(extra: Option<(&'static str, String)>) -> (mpsc::Sender<Bytes>, Response) {
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let body =
        Body::from_stream(stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx)) },
        ));
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache, no-transform"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    if let Some((name, value)) = extra
        && let Ok(v) = HeaderValue::from_str(&value)
    {
        h.insert(name, v);
    }
    (tx, resp)
}

/// How a stream is written.
pub struct Pump {
    /// The session the stream belongs to.
    pub session: SessionHandle,
    /// Write `event: message` and no ids (legacy HTTP+SSE).
    pub legacy: bool,
    /// Keep-alive interval.
    pub keepalive: Duration,
    /// Cancelled when this stream must end (with a retry hint).
    pub stop: CancellationToken,
    /// Where the bytes go.
    pub out: mpsc::Sender<Bytes>,
    /// Events at or below this seq were already written by a replay: skip them.
    pub replayed_upto: u64,
}

/// What ended a stream.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// The answer was written (request streams).
    Answered,
    /// The session side closed the channel.
    Closed,
    /// The client went away.
    ClientGone,
    /// The request ran out of time.
    Deadline,
    /// The gateway is shutting down.
    Shutdown,
}

impl Pump {
    /// Writes raw bytes; false when the client is gone.
    pub async fn raw(&self, bytes: Vec<u8>) -> bool {
        self.out.send(Bytes::from(bytes)).await.is_ok()
    }

    /// Writes one event with its id (none on legacy streams).
    pub async fn event(&self, id: Option<&str>, data: &[u8]) -> bool {
        let mut buf = Vec::with_capacity(data.len() + 48);
        if self.legacy {
            sse::encode(&mut buf, None, Some("message"), data);
        } else {
            sse::encode(&mut buf, id, None, data);
        }
        self.raw(buf).await
    }

    /// Writes a priming event (id, `retry`, empty data) when the session's revision wants one.
    /// The id must be taken before anything can be emitted on the stream (see
    /// [`Session::next_event_id`]): a resume from it replays what follows by position.
    pub async fn prime(&self, id: &str) -> bool {
        let version = self.session.protocol_version();
        if self.legacy || !version.as_deref().is_some_and(tether_protocol::version::primes_streams) {
            return true;
        }
        let mut buf = Vec::new();
        sse::encode_priming(&mut buf, id, self.session.config().retry_hint.as_millis() as u64);
        self.raw(buf).await
    }

    /// Pumps `rx` into the stream until it ends. With `until_answer`, the stream ends after
    /// the message that answers its request.
    pub async fn run(&self, rx: &mut mpsc::Receiver<Outbound>, until_answer: bool, deadline: Option<Instant>) -> End {
        let mut keepalive = tokio::time::interval_at(Instant::now() + self.keepalive, self.keepalive);
        keepalive.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let far = Instant::now() + Duration::from_secs(86400 * 365);
        let deadline = deadline.unwrap_or(far);
        loop {
            tokio::select! {
                m = rx.recv() => match m {
                    Some(o) => {
                        if (o.seq > self.replayed_upto || o.id.is_none()) && !self.event(o.id.as_deref(), &o.data).await {
                            return End::ClientGone;
                        }
                        keepalive.reset();
                        if until_answer && o.fin {
                            return End::Answered;
                        }
                    }
                    None => return End::Closed,
                },
                _ = keepalive.tick() => {
                    if !self.raw(sse::KEEP_ALIVE.to_vec()).await {
                        return End::ClientGone;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return End::Deadline,
                _ = self.stop.cancelled() => {
                    let mut buf = Vec::new();
                    sse::encode_retry(&mut buf, self.session.config().retry_hint.as_millis() as u64);
                    let _ = self.raw(buf).await;
                    return End::Shutdown;
                }
                _ = self.out.closed() => return End::ClientGone,
            }
        }
    }
}
