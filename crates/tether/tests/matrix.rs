//! The transport matrix: every client-facing transport (Streamable HTTP, legacy SSE) × every
//! upstream kind (a stdio child, a Streamable HTTP server, a legacy SSE server), and the
//! 2026-07-28 front over each upstream kind. The HTTP
//! upstreams are a second tether in front of `tether-echo`, so that the whole matrix runs on
//! the Rust toolchain alone; the same matrix against real SDK peers is in `peers.rs`.

mod harness;

use harness::{Client, Front, config, echo_gateway, start, within};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tether::Gateway;
use tether::upstream::UpstreamSpec;

#[derive(Debug, Clone, Copy)]
enum Up {
    Stdio,
    Http,
    Sse,
}

/// The gateway under test and, for HTTP upstreams, the server behind it.
async fn setup(up: Up) -> (Gateway, Option<Gateway>) {
    match up {
        Up::Stdio => (echo_gateway().await, None),
        Up::Http | Up::Sse => {
            let inner = echo_gateway().await;
            let spec = match up {
                Up::Http => UpstreamSpec::Streamable { url: format!("http://{}/mcp", inner.addr) },
                _ => UpstreamSpec::Sse { url: format!("http://{}/sse", inner.addr) },
            };
            (start(config(spec)).await, Some(inner))
        }
    }
}

fn text_of(answer: &Value) -> &str {
    answer["result"]["content"][0]["text"].as_str().unwrap_or_else(|| panic!("no text result in {answer}"))
}

async fn exercise(front: Front, up: Up) {
    let (gw, inner) = setup(up).await;
    let label = format!("{front:?} × {up:?}");
    let mut c = Client::new(&gw, front);
    let init = c.connect().await;
    assert_eq!(init["serverInfo"]["name"], "tether-echo", "{label}");
    let sid = c.session.clone().expect("a session id");
    assert_eq!(sid.len(), 32, "tether issues its own 128-bit ids ({label})");

    let tools = c.request("tools/list", json!({})).await;
    let names: Vec<&str> =
        tools.answer["result"]["tools"].as_array().expect("tools").iter().filter_map(|t| t["name"].as_str()).collect();
    assert!(names.contains(&"echo"), "{label}: {names:?}");

    let msg = format!("hello through {label}");
    let r = c.request("tools/call", json!({"name": "echo", "arguments": {"message": msg}})).await;
    assert_eq!(text_of(&r.answer), msg);

    // Logging: the level set by the client holds, and the log travels with the request.
    let r = c.request("logging/setLevel", json!({"level": "debug"})).await;
    assert!(r.answer["result"].is_object(), "{label}: {}", r.answer);
    let r = c.request("tools/call", json!({"name": "log", "arguments": {"message": "m-1"}})).await;
    assert_eq!(text_of(&r.answer), "logged at debug");
    let log = r
        .related
        .iter()
        .find(|m| m["method"] == "notifications/message")
        .unwrap_or_else(|| panic!("{label}: no log in {:?}", r.related));
    assert_eq!(log["params"]["data"], "m-1");

    // Subscriptions: the update reaches the client.
    let r = c.request("resources/subscribe", json!({"uri": "echo://counter"})).await;
    assert!(r.answer["result"].is_object(), "{label}: {}", r.answer);
    let r = c.request("tools/call", json!({"name": "bump", "arguments": {}})).await;
    assert_eq!(text_of(&r.answer), "counter is 1");
    assert!(
        r.related
            .iter()
            .any(|m| m["method"] == "notifications/resources/updated" && m["params"]["uri"] == "echo://counter"),
        "{label}: no update in {:?}",
        r.related
    );

    // Upstream errors pass through untouched.
    let r = c.request("no/such/method", json!({})).await;
    assert_eq!(r.answer["error"]["code"], -32601, "{label}: {}", r.answer);

    let pid = gw.manager.live().first().and_then(|s| s.upstream_pid());
    assert_eq!(c.close().await, StatusCode::OK);
    if front == Front::LegacySse {
        // The session ends with its stream; give the gateway a moment to notice.
        within(async {
            while gw.manager.live_count() > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await;
    }
    assert_eq!(gw.manager.live_count(), 0, "{label}: the session is gone");
    if let Some(pid) = pid {
        // The session leaves the registry first, then its child is stopped (stdin closed, waited
        // for, killed after a grace period): the child goes within the harness's timeout.
        let proc = std::path::PathBuf::from(format!("/proc/{pid}"));
        tokio::time::timeout(harness::WAIT, async {
            while proc.exists() {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{label}: the stdio child {pid} was not stopped"));
    }
    if let Some(inner) = inner {
        // Closing the client session closes the upstream session too (DELETE, or the SSE stream).
        within(async {
            while inner.manager.live_count() > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await;
        inner.shutdown().await;
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn streamable_over_stdio() {
    exercise(Front::Streamable, Up::Stdio).await;
}

#[tokio::test]
async fn streamable_over_streamable_http() {
    exercise(Front::Streamable, Up::Http).await;
}

#[tokio::test]
async fn streamable_over_legacy_sse() {
    exercise(Front::Streamable, Up::Sse).await;
}

#[tokio::test]
async fn legacy_sse_over_stdio() {
    exercise(Front::LegacySse, Up::Stdio).await;
}

#[tokio::test]
async fn legacy_sse_over_streamable_http() {
    exercise(Front::LegacySse, Up::Http).await;
}

#[tokio::test]
async fn legacy_sse_over_legacy_sse() {
    exercise(Front::LegacySse, Up::Sse).await;
}

/// Messages outside any request go to the standalone GET stream, and what arrived before the
/// stream was open is delivered when it opens.
#[tokio::test]
async fn unrelated_server_messages_use_the_get_stream() {
    for up in [Up::Stdio, Up::Http] {
        let (gw, inner) = setup(up).await;
        let mut c = Client::new(&gw, Front::Streamable);
        c.connect().await;
        let r = c.request("tools/call", json!({"name": "later", "arguments": {"ms": 50, "message": "queued"}})).await;
        assert_eq!(text_of(&r.answer), "will log in 50 ms");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let mut stream = c.open_stream().await;
        let m = stream.next_message().await.expect("the queued message");
        assert_eq!(m["params"]["data"], "queued", "{up:?}");
        c.request("tools/call", json!({"name": "later", "arguments": {"ms": 50, "message": "live"}})).await;
        let m = stream.next_message().await.expect("the live message");
        assert_eq!(m["params"]["data"], "live", "{up:?}");
        assert!(!stream.ids.is_empty(), "events carry ids");
        if let Some(inner) = inner {
            inner.shutdown().await;
        }
        gw.shutdown().await;
    }
}

/// Ids are rewritten on the upstream leg and restored for the client, whatever their type.
#[tokio::test]
async fn client_ids_of_any_type_come_back_unchanged() {
    let gw = echo_gateway().await;
    let mut c = Client::new(&gw, Front::Streamable);
    c.connect().await;
    for id in [json!("req-1"), json!(0), json!(-5), json!("1"), json!(9007199254740993u64)] {
        let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": "echo", "arguments": {"message": "x"}}});
        let resp = c.post(&body).await;
        let mut s = harness::SseStream::new(resp);
        let m = s.next_message().await.expect("answer");
        assert_eq!(m["id"], id);
        assert_eq!(text_of(&m), "x");
    }
    gw.shutdown().await;
}

/// 2025-11-25 streams start with a priming event (an id and a `retry` hint, no data).
#[tokio::test]
async fn streams_are_primed_for_2025_11_25() {
    let gw = echo_gateway().await;
    let mut c = Client::new(&gw, Front::Streamable);
    c.connect().await;
    let resp = c.post(&json!({"jsonrpc": "2.0", "id": 5, "method": "ping"})).await;
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut s = harness::SseStream::new(resp);
    let first = s.next_event().await.expect("priming event");
    assert!(first.data.is_empty() && first.id.is_some(), "{first:?}");
    assert!(s.retry.is_some());
    let answer = s.next_message().await.expect("answer");
    assert_eq!(answer["id"], 5);
    assert_ne!(s.ids[0], s.ids[1], "event ids are unique");
    gw.shutdown().await;
}

/// A request stream's priming event leaves in the same write as the response headers, never a
/// moment after them: a client that sees the stream open already holds an id to resume it from.
/// The TypeScript SDK resumes a POST's stream only after an event id; a stream cut between the
/// headers and the priming event (tether killed) left its call waiting out its own timeout —
/// the one hung call of the soak. Read over a raw socket: the first bytes that complete the
/// headers must also carry the priming id. (Before the fix, about half the streams sent their
/// headers alone; 50 streams make a pass by luck impossible.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_priming_event_leaves_with_the_headers() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = echo_gateway().await;
    let mut c = Client::new(&gw, Front::Streamable);
    c.connect().await;
    let sid = c.session.clone().expect("session id");
    for i in 0..50 {
        let body = json!({"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"name": "echo", "arguments": {"message": "p"}}})
            .to_string();
        let request = format!(
            "POST /mcp HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\n\
             Mcp-Session-Id: {sid}\r\nMCP-Protocol-Version: 2025-11-25\r\nContent-Length: {}\r\n\r\n{body}",
            gw.addr,
            body.len()
        );
        let mut sock = within(tokio::net::TcpStream::connect(gw.addr)).await.expect("connect");
        within(sock.write_all(request.as_bytes())).await.expect("write");
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        let end = loop {
            let n = within(sock.read(&mut buf)).await.expect("read");
            assert!(n > 0, "stream {i}: closed before its headers: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
        };
        let (head, rest) = (String::from_utf8_lossy(&got[..end]), String::from_utf8_lossy(&got[end..]));
        assert!(head.starts_with("HTTP/1.1 200") && head.contains("text/event-stream"), "stream {i}: {head}");
        assert!(rest.contains("id: "), "stream {i}: the headers came without the priming event: {head}{rest:?}");
    }
    gw.shutdown().await;
}

/// A client that accepts only JSON gets JSON.
#[tokio::test]
async fn json_only_clients_get_json() {
    let gw = echo_gateway().await;
    let mut c = Client::new(&gw, Front::Streamable);
    c.connect().await;
    let resp = within(
        c.http
            .post(format!("http://{}/mcp", gw.addr))
            .header("content-type", "application/json")
            .header("accept", "application/json")
            .header("mcp-session-id", c.session.as_deref().expect("sid"))
            .body(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo", "arguments": {"message": "j"}}}).to_string())
            .send(),
    )
    .await
    .expect("POST");
    assert_eq!(resp.headers()["content-type"], "application/json");
    let v: Value = serde_json::from_str(&within(resp.text()).await.expect("body")).expect("json");
    assert_eq!(text_of(&v), "j");
    gw.shutdown().await;
}

/// The 2026-07-28 front over every upstream kind: a modern client (raw HTTP, the envelope in
/// each request) discovers, lists, calls and gets its request's logs, whatever the upstream.
/// The HTTP upstream is a tether that itself serves both eras, so the binding speaks 2026-07-28
/// to it (forwarded); stdio and legacy SSE are translated to a handshake-era session.
async fn modern_exercise(up: Up) {
    let (gw, inner) = setup(up).await;
    let label = format!("modern over {up:?}");
    let meta = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "matrix", "version": "1"},
    });
    let post = |id: u64, method: &'static str, name: Option<&'static str>, mut params: Value| {
        let mut meta = meta.clone();
        if let Some(level) = params.get("logLevel").cloned() {
            meta["io.modelcontextprotocol/logLevel"] = level;
            params.as_object_mut().map(|p| p.remove("logLevel"));
        }
        params["_meta"] = meta;
        let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string();
        let mut req = reqwest::Client::new()
            .post(format!("http://{}/mcp", gw.addr))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", method);
        if let Some(n) = name {
            req = req.header("mcp-name", n);
        }
        async move {
            let resp = within(req.body(body).send()).await.expect("POST");
            let status = resp.status();
            let text = within(resp.text()).await.expect("body");
            let messages: Vec<Value> = text
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .chain(std::iter::once(text.as_str()))
                .filter_map(|d| serde_json::from_str(d.trim()).ok())
                .collect();
            (status, messages)
        }
    };
    let answer = |ms: &[Value]| ms.iter().find(|m| m.get("id").is_some()).cloned().unwrap_or(Value::Null);

    let (status, ms) = post(1, "server/discover", None, json!({})).await;
    let d = answer(&ms);
    assert_eq!(status, StatusCode::OK, "{label}: {d}");
    assert_eq!(d["result"]["_meta"]["io.modelcontextprotocol/serverInfo"]["name"], "tether-echo", "{label}: {d}");
    assert!(d["result"]["supportedVersions"].as_array().is_some_and(|v| v.contains(&json!("2026-07-28"))), "{d}");

    let (_, ms) = post(2, "tools/list", None, json!({})).await;
    let l = answer(&ms);
    assert!(l["result"]["tools"].as_array().is_some_and(|t| t.iter().any(|t| t["name"] == "echo")), "{label}: {l}");

    let (status, ms) =
        post(3, "tools/call", Some("echo"), json!({"name": "echo", "arguments": {"message": "modern"}})).await;
    let c = answer(&ms);
    assert_eq!(status, StatusCode::OK, "{label}: {c}");
    assert_eq!(text_of(&c), "modern", "{label}");
    assert_eq!(c["result"]["resultType"], "complete", "{label}: {c}");

    let call = json!({"name": "log", "arguments": {"message": "seen"}, "logLevel": "debug"});
    let (_, ms) = post(4, "tools/call", Some("log"), call).await;
    let logs: Vec<&Value> = ms.iter().filter(|m| m["method"] == "notifications/message").collect();
    assert!(logs.iter().any(|m| m["params"]["data"] == "seen"), "{label}: the request's log on its stream: {ms:?}");
    assert_eq!(answer(&ms)["id"], 4, "{label}: {ms:?}");

    assert_eq!(gw.manager.live_count(), 1, "{label}: one binding");
    if let Some(inner) = inner {
        // The inner tether saw what the binding spoke: 2026-07-28 (a modern binding of its own)
        // when the upstream serves it, the handshake era behind legacy SSE.
        let spoken: Vec<&str> = inner.manager.live().iter().map(|s| s.transport().as_str()).collect();
        let expected = if matches!(up, Up::Http) { "modern-http" } else { "sse" };
        assert_eq!(spoken, [expected], "{label}");
        inner.shutdown().await;
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn modern_over_stdio() {
    modern_exercise(Up::Stdio).await;
}

#[tokio::test]
async fn modern_over_streamable_http() {
    modern_exercise(Up::Http).await;
}

#[tokio::test]
async fn modern_over_legacy_sse() {
    modern_exercise(Up::Sse).await;
}
