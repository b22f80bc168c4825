//! Legacy HTTP+SSE (2024-11-05): `GET /sse` opens a session and its one stream, whose first
//! event names the POST endpoint; POSTs to `/messages/`, `/messages` or `/message` with
//! `session_id` or `sessionId` (every spelling real clients and servers use) are accepted with
//! 202 and answered on the stream. The transport cannot resume, so the session ends with the
//! stream.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tether_protocol::{Kind, Message, sse};
use tracing::Instrument;

use super::front_door::SessionRef;
use super::guard;
use super::stream::{Pump, sse_response};
use super::{AppState, error_response};
use crate::error::GatewayError;
use crate::session::record::{CloseReason, Transport};
use crate::session::{Sink, StreamKind};
use crate::stats::Outcome;

/// GET /sse
pub async fn get(State(app): State<AppState>, sref: SessionRef) -> Response {
    let session = match sref.create(&app, Transport::LegacySse).await {
        Ok(s) => s,
        Err(e) => return error_response(&e, None),
    };
    let (sink, mut rx) = Sink::channel(session.next_stream().await, StreamKind::Legacy);
    session.attach_standalone(sink).await;
    let (tx, resp) = sse_response(None);
    let pump = Pump {
        session: session.clone(),
        legacy: true,
        keepalive: session.config().keepalive,
        stop: app.shutdown.clone(),
        out: tx,
        replayed_upto: 0,
    };
    let manager = app.manager.clone();
    let span = tracing::info_span!("stream", session_id = %session.id(), transport = "sse");
    tokio::spawn(
        async move {
            let mut first = Vec::new();
            let endpoint = format!("/messages/?session_id={}", session.id());
            sse::encode(&mut first, None, Some("endpoint"), endpoint.as_bytes());
            if pump.raw(first).await {
                // Legacy requests have no stream of their own to time them out: sweep.
                let sweeper = {
                    let s = session.clone();
                    tokio::spawn(async move {
                        loop {
                            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                            s.expire_overdue().await;
                        }
                    })
                };
                pump.run(&mut rx, false, None).await;
                sweeper.abort();
            }
            // No resumption in this transport: the session ends with its stream.
            manager.close(session.id(), CloseReason::ClientClosed).await;
        }
        .instrument(span),
    );
    resp
}

/// POST /messages/?session_id=… (and its spellings)
pub async fn post(State(app): State<AppState>, sref: SessionRef, headers: HeaderMap, body: Body) -> Response {
    let probe = app.manager.deps().stats.probe();
    let run = async {
        guard::content_type(&headers)?;
        sref.id(Transport::LegacySse).ok_or(GatewayError::MissingSessionQuery)?;
        let bytes = guard::body(body, &headers, app.front.max_body, app.front.body_timeout).await?;
        let msg = Message::parse(&bytes)?;
        probe.classify(&msg);
        let session = sref.resolve(&app, Transport::LegacySse).await?;
        match msg.kind() {
            Kind::Request => {
                let sink = session.standalone_sink().await.ok_or(GatewayError::SessionNotFound)?.probed(probe.clone());
                let span =
                    tracing::info_span!("request", session_id = %session.id(), method = msg.method().unwrap_or(""));
                let id = msg.id().map(ToOwned::to_owned);
                if let Err(e) = session.request(msg, sink.clone()).instrument(span).await {
                    // The client waits on its stream, so the error goes there.
                    let data = Bytes::from(e.to_message(id.as_deref()).to_bytes());
                    session.emit(&sink, data, true, None).await;
                }
            }
            Kind::Notification => {
                session.notify(msg).await?;
                probe.settle(Outcome::Ok);
            }
            Kind::Response | Kind::Error => {
                session.answer(msg).await?;
                probe.settle(Outcome::Ok);
            }
        }
        Ok((StatusCode::ACCEPTED, "Accepted").into_response())
    };
    run.await.unwrap_or_else(|e: GatewayError| {
        probe.failed(&e);
        error_response(&e, None)
    })
}
