//! The 2026-07-28 front of `/mcp` in front of a handshake-era stdio upstream (`tether-echo`),
//! driven with raw HTTP: discover from the stored `initialize`, results made modern, one
//! binding per correlation key, and every row of the modern front's bad-input table with its
//! status and code. Real SDK clients are in `modern_front_peers.rs`.

mod harness;

use harness::{
    JSON_POST, config, echo_command, echo_gateway, eventually, eventually_async, kill9, only_child, raw_post, restart,
    start, within,
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tether::config::StoreSpec;
use tether::upstream::UpstreamSpec;

const V: &str = "2026-07-28";

fn code(v: &Value) -> i64 {
    v["error"]["code"].as_i64().unwrap_or_else(|| panic!("no JSON-RPC error in {v}"))
}

fn envelope() -> Value {
    json!({
        "io.modelcontextprotocol/protocolVersion": V,
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "raw-test", "version": "1"}
    })
}

fn request(id: u64, method: &str, mut params: Value) -> String {
    params["_meta"] = envelope();
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string()
}

/// The headers a conforming client sends for `method` (and `name`, for name-bearing ones).
fn headers<'a>(method: &'a str, name: Option<&'a str>) -> Vec<(&'a str, &'a str)> {
    let mut h = vec![JSON_POST[0], JSON_POST[1], ("mcp-protocol-version", V), ("mcp-method", method)];
    if let Some(n) = name {
        h.push(("mcp-name", n));
    }
    h
}

#[tokio::test]
async fn discover_list_and_call_are_served_modern_on_one_binding() {
    let gw = echo_gateway().await;
    let (status, v) = raw_post(&gw, &headers("server/discover", None), request(1, "server/discover", json!({}))).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let r = &v["result"];
    assert_eq!(v["id"], 1);
    assert_eq!(r["supportedVersions"][0], V, "{r}");
    assert!(r["supportedVersions"].as_array().is_some_and(|a| a.contains(&json!("2025-11-25"))));
    assert_eq!(r["resultType"], "complete");
    assert_eq!(r["ttlMs"], 0);
    assert_eq!(r["cacheScope"], "private");
    assert_eq!(r["_meta"]["io.modelcontextprotocol/serverInfo"]["name"], "tether-echo");
    assert!(r["capabilities"].is_object());

    let (status, v) = raw_post(&gw, &headers("tools/list", None), request(2, "tools/list", json!({}))).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert!(v["result"]["tools"].as_array().is_some_and(|t| t.iter().any(|t| t["name"] == "echo")));
    assert_eq!((v["result"]["resultType"].as_str(), v["result"]["ttlMs"].as_i64()), (Some("complete"), Some(0)));

    let call = request(3, "tools/call", json!({"name": "echo", "arguments": {"message": "hi"}}));
    let (status, v) = raw_post(&gw, &headers("tools/call", Some("echo")), call).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["id"], 3);
    assert_eq!(v["result"]["content"][0]["text"], "hi");
    assert_eq!(v["result"]["resultType"], "complete");
    assert!(v["result"].get("ttlMs").is_none(), "tools/call is not cacheable");

    // Three requests, one envelope: one binding, one upstream child.
    assert_eq!(gw.manager.live_count(), 1);
    let s = &gw.manager.live()[0];
    assert_eq!(s.transport().as_str(), "modern-http");
    let by_transport = gw.manager.live_by_transport();
    assert_eq!(
        by_transport[tether::session::record::Transport::Modern as usize],
        1,
        "counted as modern-http in metrics"
    );
    assert_eq!(by_transport.iter().sum::<usize>(), 1);
    assert_eq!(s.record().protocol_version.as_deref(), Some("2025-11-25"));
    gw.shutdown().await;
}

#[tokio::test]
async fn the_issued_key_is_returned_and_echoing_it_keeps_the_binding() {
    let gw = echo_gateway().await;
    let resp = within(
        reqwest::Client::new()
            .post(format!("http://{}/mcp", gw.addr))
            .headers(to_map(&headers("tools/list", None)))
            .body(request(1, "tools/list", json!({})))
            .send(),
    )
    .await
    .expect("POST");
    assert_eq!(resp.status(), StatusCode::OK);
    let key = resp.headers().get("tether-correlation-key").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let key = key.expect("a correlation key");
    assert_eq!(key, gw.manager.live()[0].id());
    // Another clientInfo would make another binding by digest; the echoed key keeps this one.
    let mut other = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {"_meta": envelope()}});
    other["params"]["_meta"]["io.modelcontextprotocol/clientInfo"]["name"] = json!("someone-else");
    let mut h = headers("tools/list", None);
    h.push(("tether-correlation-key", &key));
    let (status, _) = raw_post(&gw, &h, other.to_string()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(gw.manager.live_count(), 1);
    let (status, _) = raw_post(&gw, &headers("tools/list", None), other.to_string()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(gw.manager.live_count(), 2, "a different envelope without the key is another binding");
    gw.shutdown().await;
}

fn to_map(h: &[(&str, &str)]) -> reqwest::header::HeaderMap {
    let mut m = reqwest::header::HeaderMap::new();
    for (k, v) in h {
        m.append(
            reqwest::header::HeaderName::from_bytes(k.as_bytes()).expect("name"),
            reqwest::header::HeaderValue::from_str(v).expect("value"),
        );
    }
    m
}

#[tokio::test]
async fn bad_modern_input_gets_its_status_and_code() {
    let gw = echo_gateway().await;
    let call = request(7, "tools/call", json!({"name": "echo", "arguments": {"message": "x"}}));

    // Mcp-Method disagrees with the body.
    let (status, v) = raw_post(&gw, &headers("tools/list", Some("echo")), call.clone()).await;
    assert_eq!((status, code(&v)), (StatusCode::BAD_REQUEST, -32020), "{v}");
    assert_eq!(v["id"], 7);
    assert_eq!(v["error"]["data"]["mismatch"]["header"], "mcp-method");

    // Mcp-Method missing.
    let h = [JSON_POST[0], JSON_POST[1], ("mcp-protocol-version", V), ("mcp-name", "echo")];
    let (status, v) = raw_post(&gw, &h, call.clone()).await;
    assert_eq!((status, code(&v)), (StatusCode::BAD_REQUEST, -32020), "{v}");

    // Mcp-Name names another tool.
    let (status, v) = raw_post(&gw, &headers("tools/call", Some("add")), call.clone()).await;
    assert_eq!((status, code(&v)), (StatusCode::BAD_REQUEST, -32020), "{v}");
    assert_eq!(v["error"]["data"]["mismatch"]["header"], "mcp-name");

    // MCP-Protocol-Version disagrees with the envelope.
    let h = [JSON_POST[0], JSON_POST[1], ("mcp-protocol-version", "2025-11-25"), ("mcp-method", "tools/list")];
    let (status, v) = raw_post(&gw, &h, request(8, "tools/list", json!({}))).await;
    assert_eq!((status, code(&v)), (StatusCode::BAD_REQUEST, -32020), "{v}");

    // An envelope without clientCapabilities.
    let body = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/list",
        "params": {"_meta": {"io.modelcontextprotocol/protocolVersion": V}}});
    let (status, v) = raw_post(&gw, &headers("tools/list", None), body.to_string()).await;
    assert_eq!((status, code(&v)), (StatusCode::BAD_REQUEST, -32602), "{v}");

    // A revision tether does not serve.
    let mut body = json!({"jsonrpc": "2.0", "id": 10, "method": "tools/list", "params": {"_meta": envelope()}});
    body["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] = json!("2027-01-01");
    let h = [JSON_POST[0], JSON_POST[1], ("mcp-protocol-version", "2027-01-01"), ("mcp-method", "tools/list")];
    let (status, v) = raw_post(&gw, &h, body.to_string()).await;
    assert_eq!((status, code(&v)), (StatusCode::BAD_REQUEST, -32022), "{v}");
    assert_eq!(v["error"]["data"]["requested"], "2027-01-01");
    assert_eq!(v["error"]["data"]["supported"][0], V);

    // A removed method.
    let (status, v) = raw_post(&gw, &headers("ping", None), request(11, "ping", json!({}))).await;
    assert_eq!((status, code(&v)), (StatusCode::NOT_FOUND, -32601), "{v}");

    // A request whose header names 2026-07-28 but whose body has no envelope: the revision's
    // -32602, not the handshake era's "Mcp-Session-Id required".
    let bare = json!({"jsonrpc": "2.0", "id": 15, "method": "tools/list", "params": {}});
    let (status, v) = raw_post(&gw, &headers("tools/list", None), bare.to_string()).await;
    assert_eq!((status, code(&v)), (StatusCode::BAD_REQUEST, -32602), "{v}");
    assert_eq!(v["id"], 15);

    // `initialize` from a 2026-07-28 client is a removed method.
    let init = request(16, "initialize", json!({}));
    let (status, v) = raw_post(&gw, &headers("initialize", None), init).await;
    assert_eq!((status, code(&v)), (StatusCode::NOT_FOUND, -32601), "{v}");

    // A method the upstream does not know: its -32601 comes with the revision's 404.
    let (status, v) = raw_post(&gw, &headers("no/such-method", None), request(17, "no/such-method", json!({}))).await;
    assert_eq!((status, code(&v)), (StatusCode::NOT_FOUND, -32601), "{v}");
    assert_eq!(v["id"], 17);

    // A forged requestState, and one whose params were changed since it was issued.
    let forged = request(
        12,
        "tools/call",
        json!({"name": "echo", "arguments": {"message": "x"},
        "inputResponses": {"a": {"action": "accept"}}, "requestState": "t1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}),
    );
    let (status, v) = raw_post(&gw, &headers("tools/call", Some("echo")), forged).await;
    assert_eq!((status, code(&v)), (StatusCode::BAD_REQUEST, -32602), "{v}");
    assert_eq!(v["error"]["data"]["reason"], "invalid_request_state");
    let stateless = request(13, "tools/call", json!({"name": "echo", "arguments": {}, "inputResponses": {}}));
    let (status, v) = raw_post(&gw, &headers("tools/call", Some("echo")), stateless).await;
    assert_eq!((status, code(&v)), (StatusCode::BAD_REQUEST, -32602), "{v}");

    // subscriptions/listen without an SSE Accept.
    let h = [
        JSON_POST[0],
        ("accept", "application/json"),
        ("mcp-protocol-version", V),
        ("mcp-method", "subscriptions/listen"),
    ];
    let (status, v) = raw_post(&gw, &h, request(14, "subscriptions/listen", json!({"notifications": {}}))).await;
    assert_eq!((status, code(&v)), (StatusCode::NOT_ACCEPTABLE, -32600), "{v}");

    // GET and DELETE from a modern client: 405, POST only.
    for m in [reqwest::Method::GET, reqwest::Method::DELETE] {
        let resp = within(
            reqwest::Client::new()
                .request(m.clone(), format!("http://{}/mcp", gw.addr))
                .header("mcp-protocol-version", V)
                .header("accept", "text/event-stream")
                .send(),
        )
        .await
        .expect("request");
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED, "{m}");
        assert_eq!(resp.headers().get("allow").and_then(|v| v.to_str().ok()), Some("POST"));
    }

    // A notification is accepted and dropped.
    let note = json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}});
    let (status, _) = raw_post(&gw, &headers("notifications/cancelled", None), note.to_string()).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    gw.shutdown().await;
}

#[tokio::test]
async fn logs_come_only_at_the_requests_level_on_its_stream() {
    let gw = echo_gateway().await;
    let mut params = json!({"name": "log", "arguments": {"message": "hello"}});
    params["_meta"] = envelope();
    params["_meta"]["io.modelcontextprotocol/logLevel"] = json!("debug");
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}).to_string();
    let resp = within(
        reqwest::Client::new()
            .post(format!("http://{}/mcp", gw.addr))
            .headers(to_map(&headers("tools/call", Some("log"))))
            .body(body)
            .send(),
    )
    .await
    .expect("POST");
    assert_eq!(resp.status(), StatusCode::OK);
    let sse =
        resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").starts_with("text/event-stream");
    let text = within(resp.text()).await.expect("body");
    assert!(sse, "a log before the answer makes the answer a stream: {text}");
    assert!(text.contains("notifications/message") && text.contains("hello"), "{text}");
    assert!(text.contains("\"resultType\":\"complete\""), "{text}");
    // The binding's level was applied (and is replayed on a revive).
    assert_eq!(gw.manager.live()[0].record().state.log_level.as_deref(), Some("debug"));

    // Without logLevel, the same call gets no log and a plain JSON answer.
    let call = request(2, "tools/call", json!({"name": "log", "arguments": {"message": "quiet"}}));
    let (status, v) = raw_post(&gw, &headers("tools/call", Some("log")), call).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["id"], 2, "{v}");
    gw.shutdown().await;
}

/// A modern binding is a stored session: after the upstream is killed, and after tether itself
/// restarts (SQLite store), the same envelope finds the same binding, revived.
#[tokio::test]
async fn the_binding_survives_an_upstream_kill_and_a_tether_restart() {
    let dir = std::env::temp_dir().join(format!("tether-modern-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let cfg = || {
        let mut c = config(UpstreamSpec::Stdio { command: echo_command() });
        c.store =
            StoreSpec::Sqlite { path: dir.join("sessions.db"), commit_window: tether::store::DEFAULT_COMMIT_WINDOW };
        c
    };
    let gw = start(cfg()).await;
    let call = |n: u64| request(n, "tools/call", json!({"name": "echo", "arguments": {"message": format!("m{n}")}}));
    let (status, v) = raw_post(&gw, &headers("tools/call", Some("echo")), call(1)).await;
    assert_eq!((status, v["result"]["content"][0]["text"].as_str()), (StatusCode::OK, Some("m1")), "{v}");
    let id = gw.manager.live()[0].id().to_owned();

    kill9(only_child(&gw));
    let (status, v) = raw_post(&gw, &headers("tools/call", Some("echo")), call(2)).await;
    assert_eq!((status, v["result"]["content"][0]["text"].as_str()), (StatusCode::OK, Some("m2")), "{v}");
    assert_eq!(gw.manager.live()[0].id(), id);
    assert!(gw.manager.live()[0].revive_count() >= 1, "the binding was revived");

    let gw = restart(gw, cfg()).await;
    let (status, v) = raw_post(&gw, &headers("tools/call", Some("echo")), call(3)).await;
    assert_eq!((status, v["result"]["content"][0]["text"].as_str()), (StatusCode::OK, Some("m3")), "{v}");
    let live = gw.manager.live();
    assert_eq!(live.len(), 1, "no second binding after the restart");
    assert_eq!(live[0].id(), id, "the stored binding was found by its key");
    gw.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// In 2026-07-28 closing the response is the cancellation: the request stops waiting upstream.
#[tokio::test]
async fn a_response_the_client_closes_cancels_the_request_upstream() {
    let gw = echo_gateway().await;
    // A first request makes the binding, so that the slow one below is the only one pending.
    let (status, _) = raw_post(&gw, &headers("tools/list", None), request(1, "tools/list", json!({}))).await;
    assert_eq!(status, StatusCode::OK);
    let session = gw.manager.live()[0].clone();
    let slow = request(2, "tools/call", json!({"name": "sleep", "arguments": {"ms": 15000}}));
    let post = reqwest::Client::new()
        .post(format!("http://{}/mcp", gw.addr))
        .headers(to_map(&headers("tools/call", Some("sleep"))))
        .body(slow)
        .send();
    let task = tokio::spawn(post);
    let s = session.clone();
    eventually_async("the slow request is pending upstream", move || {
        let s = s.clone();
        async move { s.pending_requests().await == 1 }
    })
    .await;
    task.abort();
    // The client is gone: the request ends at the gateway (and a cancel goes upstream) well
    // before the upstream would have answered it.
    let s = session.clone();
    eventually_async("the abandoned request is no longer pending", move || {
        let s = s.clone();
        async move { s.pending_requests().await == 0 }
    })
    .await;
    gw.shutdown().await;
}

/// A listen's resource subscriptions last while a listen holds them: the binding stays
/// subscribed while one of two listens on a URI is open, and is unsubscribed (in its record,
/// so a revive does not bring the subscription back) when the last one ends.
#[tokio::test]
async fn a_subscription_ends_with_the_last_listen_that_holds_it() {
    let gw = echo_gateway().await;
    let (status, _) = raw_post(&gw, &headers("tools/list", None), request(1, "tools/list", json!({}))).await;
    assert_eq!(status, StatusCode::OK);
    let session = gw.manager.live()[0].clone();
    let uri = "echo://counter";
    let listen = |id: u64| {
        let body = request(id, "subscriptions/listen", json!({"notifications": {"resourceSubscriptions": [uri]}}));
        reqwest::Client::new()
            .post(format!("http://{}/mcp", gw.addr))
            .headers(to_map(&headers("subscriptions/listen", None)))
            .body(body)
            .send()
    };
    let mut first = harness::SseStream::new(within(listen(10)).await.expect("listen"));
    let ack = within(first.next_message()).await.expect("an acknowledgement");
    assert_eq!(ack["params"]["notifications"]["resourceSubscriptions"], json!([uri]), "{ack}");
    assert!(session.record().state.subscriptions.contains(uri), "subscribed on the binding");
    let mut second = harness::SseStream::new(within(listen(11)).await.expect("listen"));
    within(second.next_message()).await.expect("an acknowledgement");

    drop(first);
    // The second listen still holds the URI: an update reaches it.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let bump = request(12, "tools/call", json!({"name": "bump", "arguments": {}}));
    let (status, _) = raw_post(&gw, &headers("tools/call", Some("bump")), bump).await;
    assert_eq!(status, StatusCode::OK);
    let update = within(second.next_message()).await.expect("an update");
    assert_eq!(update["method"], "notifications/resources/updated", "{update}");
    assert_eq!(update["params"]["uri"], uri);
    assert!(session.record().state.subscriptions.contains(uri), "still subscribed");

    drop(second);
    let s = session.clone();
    eventually("the last listen's URI is unsubscribed", move || !s.record().state.subscriptions.contains(uri)).await;
    gw.shutdown().await;
}

/// First requests that arrive together: one binding per correlation key, however many requests
/// carry it at once (creation is serialised per key, not across keys).
#[tokio::test]
async fn first_requests_at_once_make_one_binding_per_key() {
    let gw = echo_gateway().await;
    let post = |id: u64, client: &str| {
        let mut params = json!({});
        params["_meta"] = envelope();
        params["_meta"]["io.modelcontextprotocol/clientInfo"]["name"] = json!(client);
        let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/list", "params": params}).to_string();
        let h = headers("tools/list", None);
        let gw = &gw;
        async move { raw_post(gw, &h, body).await }
    };
    let answers = within(futures_util::future::join_all(
        (0..8u64).map(|i| post(i, if i % 2 == 0 { "client-a" } else { "client-b" })),
    ))
    .await;
    for (status, v) in &answers {
        assert_eq!(*status, StatusCode::OK, "{v}");
        assert!(v["result"]["tools"].is_array(), "{v}");
    }
    assert_eq!(gw.manager.live_count(), 2, "one binding for each of the two envelopes");
    gw.shutdown().await;
}
