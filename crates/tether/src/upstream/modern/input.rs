//! The `input_required` rounds of a handshake-era client's request: the server's questions
//! become server→client requests on the client's stream, and their answers are collected,
//! keyed like the questions, for the retry ([`super::Shared::run_exchange`]).

use std::time::Duration;

use serde_json::{Map, Value, json};
use tether_protocol::message::{numeric_id, raw_value, string_id};
use tether_protocol::{Message, method as m};
use tokio::sync::oneshot;
use tracing::{debug, warn};

use super::super::Origin;
use super::{Exchange, Shared};

/// How long the client gets to answer one round's requests.
const INPUT_TIMEOUT: Duration = Duration::from_secs(600);
/// The pause before a retry that carries only `requestState` (no questions were asked).
const STATE_ONLY_PAUSE: Duration = Duration::from_millis(250);

impl Shared {
    /// Sends one round's questions to the client as server→client requests and collects the
    /// answers, keyed like the questions. `Ok(None)`: a state-only round (nothing was asked).
    pub(super) async fn ask_client(&self, gid: u64, round: u32, result: &Value) -> Result<Option<Value>, String> {
        let Some(requests) = result.get("inputRequests").and_then(Value::as_object).filter(|r| !r.is_empty()) else {
            if result.get("requestState").is_none() {
                return Err("the server asked for input without saying what".into());
            }
            tokio::time::sleep(STATE_ONLY_PAUSE).await;
            return Ok(None);
        };
        let mut waiting = Vec::with_capacity(requests.len());
        for (n, (key, req)) in requests.iter().enumerate() {
            let method = req.get("method").and_then(Value::as_str).unwrap_or_default();
            if ![m::ELICITATION_CREATE, m::SAMPLING_CREATE_MESSAGE, m::ROOTS_LIST].contains(&method) {
                return Err(format!("the server asked for {method:?}, which has no handshake-era request"));
            }
            let mut params = req.get("params").cloned().unwrap_or_else(|| json!({}));
            if method == m::ELICITATION_CREATE
                && params.get("mode").and_then(Value::as_str) == Some("url")
                && let Some(p) = params.as_object_mut()
            {
                // 2025-11-25 URL elicitation names itself; 2026-07-28 dropped the id.
                p.entry("elicitationId").or_insert_with(|| Value::String(format!("tether-{gid}-{round}-{n}")));
            }
            let id = string_id(&format!("tether-input-{gid}-{round}-{n}"));
            let (tx, rx) = oneshot::channel();
            self.state().inputs.insert(id.get().to_owned(), tx);
            let mut ask = Message::request(0, method, Some(&raw_value(&params)));
            ask.set_id(id);
            self.deliver(Origin::Request(gid), ask).await;
            waiting.push((key.clone(), rx));
        }
        let mut responses = Map::new();
        for (key, rx) in waiting {
            let answer = match tokio::time::timeout(INPUT_TIMEOUT, rx).await {
                Ok(Ok(a)) => a,
                Ok(Err(_)) => return Err("the connection ended while the client was asked for input".into()),
                Err(_) => return Err("the client did not answer the server's request for input in time".into()),
            };
            match answer.result().and_then(|r| serde_json::from_str::<Value>(r.get()).ok()) {
                Some(r) => responses.insert(key, r),
                None => {
                    let msg = answer
                        .error_object()
                        .and_then(|e| serde_json::from_str::<Value>(e.get()).ok())
                        .and_then(|e| e.get("message").and_then(Value::as_str).map(str::to_owned))
                        .unwrap_or_else(|| "an error".into());
                    return Err(format!("the client refused the server's request for input: {msg}"));
                }
            };
        }
        Ok(Some(Value::Object(responses)))
    }

    /// A request whose input rounds failed ends like the TypeScript SDK's shim ends it: a tool
    /// error result for `tools/call`, an internal error otherwise.
    pub(super) async fn input_failed(&self, exchange: &Exchange, why: &str) {
        warn!(method = %exchange.method, reason = why, "a request for input could not be completed");
        if exchange.method == m::TOOLS_CALL {
            self.answer(exchange.gid, json!({"content": [{"type": "text", "text": why}], "isError": true})).await;
        } else {
            let m = crate::error::GatewayError::InputFailed(why.to_owned()).to_message(Some(&numeric_id(exchange.gid)));
            self.deliver(Origin::Request(exchange.gid), m).await;
        }
    }

    /// The client's answer to one of our questions.
    pub(super) fn input_answer(&self, msg: Message) {
        let key = msg.id().map(|i| i.get().to_owned()).unwrap_or_default();
        match self.state().inputs.remove(&key) {
            Some(tx) => {
                let _ = tx.send(msg);
            }
            None => debug!(id = %key, "an answer to a question no longer asked; dropped"),
        }
    }
}
