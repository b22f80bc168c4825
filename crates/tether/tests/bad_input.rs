//! Every row of the error table: bad input gets the right HTTP status and JSON-RPC code, and
//! nothing hangs.

mod harness;

use harness::{Client, Front, JSON_POST, config, echo_gateway, init_params, raw_post, start, within};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tether::upstream::UpstreamSpec;

fn code(v: &Value) -> i64 {
    v["error"]["code"].as_i64().unwrap_or_else(|| panic!("no JSON-RPC error in {v}"))
}

fn initialize_body() -> String {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": init_params()}).to_string()
}

#[tokio::test]
async fn malformed_json_is_400_parse_error() {
    let gw = echo_gateway().await;
    let (status, body) = raw_post(&gw, &JSON_POST, "{\"jsonrpc\": \"2.0\", ").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(code(&body), -32700);
    assert_eq!(body["id"], Value::Null);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_batch_is_400_invalid_request() {
    let gw = echo_gateway().await;
    let batch = json!([{"jsonrpc": "2.0", "id": 1, "method": "ping"}]).to_string();
    let (status, body) = raw_post(&gw, &JSON_POST, batch).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(code(&body), -32600);
    gw.shutdown().await;
}

#[tokio::test]
async fn not_a_jsonrpc_message_is_400_invalid_request() {
    let gw = echo_gateway().await;
    for body in [r#"{"id":1,"method":"ping"}"#, r#""text""#, r#"{"jsonrpc":"2.0","id":{},"method":"x"}"#] {
        let (status, v) = raw_post(&gw, &JSON_POST, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(code(&v), -32600, "{body}");
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let mut c = config(UpstreamSpec::Stdio { command: harness::echo_command() });
    c.front.max_body = 1024;
    let gw = start(c).await;
    let big = json!({"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"pad": "x".repeat(4096)}}).to_string();
    let (status, v) = raw_post(&gw, &JSON_POST, big.clone()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(code(&v), -32600);
    // Without Content-Length (chunked), the limit holds too.
    let stream = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(big.into_bytes())]);
    let (status, _) = raw_post(&gw, &JSON_POST, reqwest::Body::wrap_stream(stream)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    gw.shutdown().await;
}

#[tokio::test]
async fn the_default_body_limit_is_4_mib() {
    let gw = echo_gateway().await;
    let big = json!({"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"pad": "x".repeat(4 << 20)}}).to_string();
    let (status, _) = raw_post(&gw, &JSON_POST, big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    gw.shutdown().await;
}

#[tokio::test]
async fn wrong_content_type_is_415() {
    let gw = echo_gateway().await;
    let (status, v) = raw_post(
        &gw,
        &[("content-type", "text/plain"), ("accept", "application/json, text/event-stream")],
        initialize_body(),
    )
    .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(code(&v), -32600);
    gw.shutdown().await;
}

#[tokio::test]
async fn missing_or_useless_accept_is_406() {
    let gw = echo_gateway().await;
    let body = initialize_body();
    let request = format!(
        "POST /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    assert_eq!(harness::raw_http(&gw, &request).await, 406, "no Accept header at all");
    let (status, _) =
        raw_post(&gw, &[("content-type", "application/json"), ("accept", "text/html")], initialize_body()).await;
    assert_eq!(status, StatusCode::NOT_ACCEPTABLE);
    gw.shutdown().await;
}

#[tokio::test]
async fn missing_session_id_is_400() {
    let gw = echo_gateway().await;
    let (status, v) = raw_post(&gw, &JSON_POST, r#"{"jsonrpc":"2.0","id":7,"method":"tools/list"}"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(code(&v), -32600);
    assert_eq!(v["id"], json!(7), "the error echoes the request id");
    gw.shutdown().await;
}

#[tokio::test]
async fn unknown_session_is_404_with_a_jsonrpc_error() {
    let gw = echo_gateway().await;
    for sid in ["0123456789abcdef0123456789abcdef", "not-even-hex"] {
        let headers = [JSON_POST[0], JSON_POST[1], ("mcp-session-id", sid)];
        let (status, v) = raw_post(&gw, &headers, r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{sid}");
        assert_eq!(code(&v), -32001);
        assert_eq!(v["error"]["message"], "Session not found");
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn a_closed_session_is_404_everywhere() {
    let gw = echo_gateway().await;
    let mut c = Client::new(&gw, Front::Streamable);
    c.connect().await;
    assert_eq!(c.close().await, StatusCode::OK);
    let r = c.request("tools/list", json!({})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(code(&r.answer), -32001);
    assert_eq!(c.close().await, StatusCode::NOT_FOUND, "a second DELETE");
    let get = within(
        reqwest::Client::new()
            .get(format!("http://{}/mcp", gw.addr))
            .header("accept", "text/event-stream")
            .header("mcp-session-id", c.session.as_deref().expect("sid"))
            .send(),
    )
    .await
    .expect("GET");
    assert_eq!(get.status(), StatusCode::NOT_FOUND);
    gw.shutdown().await;
}

#[tokio::test]
async fn an_upstream_that_cannot_start_is_503_and_leaves_no_session() {
    for command in [vec!["/nonexistent/mcp-server".to_owned()], vec!["false".to_owned()]] {
        let gw = start(config(UpstreamSpec::Stdio { command: command.clone() })).await;
        let (status, v) = raw_post(&gw, &JSON_POST, initialize_body()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{command:?}: {v}");
        assert_eq!(code(&v), -32010);
        assert_eq!(v["error"]["data"]["reason"], "upstream_unavailable");
        assert_eq!(v["id"], json!(1));
        assert_eq!(gw.manager.live_count(), 0, "no session is left behind");
        gw.shutdown().await;
    }
}

#[tokio::test]
async fn an_unreachable_http_upstream_is_503() {
    // A port nothing listens on: bind, learn the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    for spec in [
        UpstreamSpec::Streamable { url: format!("http://127.0.0.1:{port}/mcp") },
        UpstreamSpec::Sse { url: format!("http://127.0.0.1:{port}/sse") },
    ] {
        let gw = start(config(spec.clone())).await;
        let (status, v) = raw_post(&gw, &JSON_POST, initialize_body()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{spec:?}: {v}");
        assert_eq!(code(&v), -32010);
        gw.shutdown().await;
    }
}

#[tokio::test]
async fn a_foreign_origin_is_403_and_localhost_is_allowed() {
    let gw = echo_gateway().await;
    let evil = [JSON_POST[0], JSON_POST[1], ("origin", "http://evil.example.com")];
    let (status, v) = raw_post(&gw, &evil, initialize_body()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(code(&v), -32600);
    let local = [JSON_POST[0], JSON_POST[1], ("origin", "http://localhost:5173")];
    let (status, _) = raw_post(&gw, &local, initialize_body()).await;
    assert_eq!(status, StatusCode::OK);
    gw.shutdown().await;
}

#[tokio::test]
async fn allowed_origins_are_configurable() {
    let mut c = config(UpstreamSpec::Stdio { command: harness::echo_command() });
    c.front.allowed_origins = vec!["https://app.example.com".into()];
    let gw = start(c).await;
    let ok = [JSON_POST[0], JSON_POST[1], ("origin", "https://app.example.com")];
    assert_eq!(raw_post(&gw, &ok, initialize_body()).await.0, StatusCode::OK);
    let other = [JSON_POST[0], JSON_POST[1], ("origin", "https://other.example.com")];
    assert_eq!(raw_post(&gw, &other, initialize_body()).await.0, StatusCode::FORBIDDEN);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_foreign_host_is_refused_dns_rebinding() {
    let gw = echo_gateway().await;
    let headers = [JSON_POST[0], JSON_POST[1], ("host", "evil.example.com")];
    let (status, _) = raw_post(&gw, &headers, initialize_body()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    gw.shutdown().await;
}

#[tokio::test]
async fn an_unsupported_protocol_version_header_is_400() {
    let gw = echo_gateway().await;
    let mut c = Client::new(&gw, Front::Streamable);
    c.connect().await;
    let headers = [
        JSON_POST[0],
        JSON_POST[1],
        ("mcp-session-id", c.session.as_deref().expect("sid")),
        ("mcp-protocol-version", "1999-01-01"),
    ];
    let (status, v) = raw_post(&gw, &headers, r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["data"]["requested"], "1999-01-01");
    // An older handshake revision than negotiated is fine (clients send 2025-03-26 by default).
    let ok = [JSON_POST[0], JSON_POST[1], ("mcp-session-id", headers[2].1), ("mcp-protocol-version", "2025-03-26")];
    assert_eq!(raw_post(&gw, &ok, r#"{"jsonrpc":"2.0","id":3,"method":"tools/list"}"#).await.0, StatusCode::OK);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_2026_discover_is_answered_by_the_modern_front() {
    let gw = echo_gateway().await;
    let probe = json!({
        "jsonrpc": "2.0", "id": 1, "method": "server/discover",
        "params": {"_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {}}}
    });
    let headers =
        [JSON_POST[0], JSON_POST[1], ("mcp-protocol-version", "2026-07-28"), ("mcp-method", "server/discover")];
    let (status, v) = raw_post(&gw, &headers, probe.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["id"], json!(1));
    let supported: Vec<&str> =
        v["result"]["supportedVersions"].as_array().expect("list").iter().filter_map(Value::as_str).collect();
    assert!(supported.contains(&"2025-11-25") && supported.contains(&"2026-07-28"), "{supported:?}");
    gw.shutdown().await;
}

#[tokio::test]
async fn other_http_methods_are_405() {
    let gw = echo_gateway().await;
    let resp = within(reqwest::Client::new().put(format!("http://{}/mcp", gw.addr)).send()).await.expect("PUT");
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(resp.headers().contains_key("allow"));
    gw.shutdown().await;
}

#[tokio::test]
async fn get_without_event_stream_accept_is_406_and_without_session_is_400() {
    let gw = echo_gateway().await;
    let http = reqwest::Client::new();
    let url = format!("http://{}/mcp", gw.addr);
    let r = within(http.get(&url).header("accept", "application/json").header("mcp-session-id", "x").send())
        .await
        .expect("GET");
    assert_eq!(r.status(), StatusCode::NOT_ACCEPTABLE);
    let r = within(http.get(&url).header("accept", "text/event-stream").send()).await.expect("GET");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = within(http.delete(&url).send()).await.expect("DELETE");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    gw.shutdown().await;
}

#[tokio::test]
async fn legacy_posts_need_a_known_session() {
    let gw = echo_gateway().await;
    let http = reqwest::Client::new();
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    for path in ["/messages/", "/messages", "/message"] {
        let r = within(
            http.post(format!("http://{}{path}", gw.addr)).header("content-type", "application/json").body(body).send(),
        )
        .await
        .expect("POST");
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{path} without session");
        for q in ["session_id", "sessionId"] {
            let url = format!("http://{}{path}?{q}=0123456789abcdef0123456789abcdef", gw.addr);
            let r = within(http.post(url).header("content-type", "application/json").body(body).send())
                .await
                .expect("POST");
            assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}?{q}");
        }
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn a_malformed_legacy_post_is_400_and_the_session_lives_on() {
    let gw = echo_gateway().await;
    let mut c = Client::new(&gw, Front::LegacySse);
    c.connect().await;
    let sid = c.session.clone().expect("sid");
    let r = within(
        reqwest::Client::new()
            .post(format!("http://{}/messages/?session_id={sid}", gw.addr))
            .header("content-type", "application/json")
            .body("{oops")
            .send(),
    )
    .await
    .expect("POST");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let v: Value = serde_json::from_str(&within(r.text()).await.expect("body")).expect("json");
    assert_eq!(code(&v), -32700);
    let ok = c.request("tools/call", json!({"name": "echo", "arguments": {"message": "still here"}})).await;
    assert_eq!(ok.answer["result"]["content"][0]["text"], "still here");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_repeated_envelope_member_is_400_invalid_request_on_both_fronts() {
    let gw = echo_gateway().await;
    let bodies = [
        // Once classified as a ping by tether while the upstream (last key wins) ran the tool.
        r#"{"jsonrpc":"2.0","id":7,"method":"ping","method":"tools/call","params":{"name":"echo","arguments":{"message":"ran"}}}"#,
        // Once waited for the request timeout: the answer's id matched neither.
        r#"{"id":41,"jsonrpc":"2.0","method":"ping","id":42}"#,
        r#"{"jsonrpc":"2.0","jsonrpc":"2.0","id":1,"method":"ping"}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{},"params":{"cursor":"x"}}"#,
    ];
    let mut c = Client::new(&gw, Front::Streamable);
    c.connect().await;
    let sid = c.session.clone().expect("sid");
    let headers =
        [JSON_POST[0], JSON_POST[1], ("mcp-session-id", sid.as_str()), ("mcp-protocol-version", "2025-11-25")];
    for body in bodies {
        let (status, v) = raw_post(&gw, &headers, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert_eq!(code(&v), -32600, "{body}");
        assert!(v["error"]["message"].as_str().unwrap_or("").contains("duplicate member"), "{v}");
    }
    let mut legacy = Client::new(&gw, Front::LegacySse);
    legacy.connect().await;
    let lsid = legacy.session.clone().expect("sid");
    for body in bodies {
        let r = within(
            reqwest::Client::new()
                .post(format!("http://{}/messages/?session_id={lsid}", gw.addr))
                .header("content-type", "application/json")
                .body(body)
                .send(),
        )
        .await
        .expect("POST");
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{body}");
        let v: Value = serde_json::from_str(&within(r.text()).await.expect("body")).expect("json");
        assert_eq!(code(&v), -32600, "{body}");
    }
    // Both sessions are still served.
    let ok = c.request("tools/call", json!({"name": "echo", "arguments": {"message": "still here"}})).await;
    assert_eq!(ok.answer["result"]["content"][0]["text"], "still here");
    let ok = legacy.request("ping", json!({})).await;
    assert_eq!(ok.answer["result"], json!({}));
    gw.shutdown().await;
}

#[tokio::test]
async fn a_cut_off_body_is_400_not_413() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = echo_gateway().await;
    let mut sock = within(tokio::net::TcpStream::connect(gw.addr)).await.expect("connect");
    let head = format!(
        "POST /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n\
         accept: application/json, text/event-stream\r\ncontent-length: 200\r\n\r\n{}",
        r#"{"jsonrpc":"2.0","id":1,"method":"ping""#
    );
    within(sock.write_all(head.as_bytes())).await.expect("write");
    // 40 bytes of a declared 200, then the client stops sending.
    within(sock.shutdown()).await.expect("half-close");
    let mut answer = Vec::new();
    within(sock.read_to_end(&mut answer)).await.expect("read");
    let answer = String::from_utf8_lossy(&answer);
    let status: u16 = answer.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("a status line");
    assert_eq!(status, 400, "{answer}");
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("");
    let v: Value = serde_json::from_str(body).expect("a JSON-RPC error body");
    assert_eq!(code(&v), -32600, "{v}");
    gw.shutdown().await;
}
