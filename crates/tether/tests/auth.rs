//! Authentication on the MCP endpoint, in process: static tokens and JWTs (keys made here,
//! a JWKS served from here) each with its status; the 401 challenge and the Protected Resource
//! Metadata document; sessions bound to their principal on every endpoint of both fronts; and
//! the credentials tether gives an upstream — a second tether that requires a token — while a
//! client's own never go upstream unless `forward_auth` is on.

mod auth_support;
mod harness;

use std::time::Duration;

use auth_support::*;
use harness::*;
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue, WWW_AUTHENTICATE};
use serde_json::{Value, json};
use tether::Gateway;
use tether::auth::{AuthConfig, JwksSource, Principal};
use tether::upstream::UpstreamSpec;

async fn gateway_with(auth: AuthConfig) -> Gateway {
    let mut c = config(UpstreamSpec::Stdio { command: echo_command() });
    c.auth = auth;
    start(c).await
}

fn token_file(dir: &std::path::Path, text: &str) -> std::path::PathBuf {
    let p = dir.join("tokens");
    std::fs::write(&p, text).expect("write tokens");
    p
}

/// A reqwest client that sends `Authorization: Bearer token`.
fn bearer_http(token: &str) -> reqwest::Client {
    let mut h = HeaderMap::new();
    h.insert(AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {token}")).expect("header"));
    reqwest::Client::builder().default_headers(h).build().expect("client")
}

/// A harness client of `gw` over `front` that presents `token`.
fn client_as(gw: &Gateway, front: Front, token: &str) -> Client {
    let mut c = Client::new(gw, front);
    c.http = bearer_http(token);
    c
}

/// POSTs `initialize` with the given `Authorization` value; the status, headers and body.
async fn initialize_with(gw: &Gateway, authorization: Option<&str>) -> (StatusCode, HeaderMap, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("http://{}/mcp", gw.addr))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": init_params()}).to_string());
    if let Some(a) = authorization {
        req = req.header(AUTHORIZATION, a);
    }
    let resp = within(req.send()).await.expect("POST");
    let (status, headers) = (resp.status(), resp.headers().clone());
    let text = within(resp.text()).await.expect("body");
    (status, headers, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn status_of(gw: &Gateway, token: &str) -> StatusCode {
    initialize_with(gw, Some(&format!("Bearer {token}"))).await.0
}

fn challenge(h: &HeaderMap) -> String {
    h.get(WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned()
}

#[tokio::test]
async fn tokens_from_the_file_name_principals_and_everything_else_gets_401() {
    let dir = temp_dir("auth-tokens");
    let path = token_file(&dir, "# the team\nalice:tok-alice-1\nbob:tok-bob-1\n");
    let gw = gateway_with(AuthConfig { token_file: Some(path.clone()), ..AuthConfig::default() }).await;
    let meta = format!("http://{}/.well-known/oauth-protected-resource", gw.addr);

    let (status, h, body) = initialize_with(&gw, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(challenge(&h), format!("Bearer resource_metadata=\"{meta}\""));
    assert_eq!(body["error"]["data"]["reason"], "unauthorized", "{body}");
    for bad in ["Bearer tok-alice-", "Bearer tok-alice-12", "Bearer ", "Basic YWxpY2U6dG9r", "tok-alice-1"] {
        let (status, h, _) = initialize_with(&gw, Some(bad)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{bad}");
        assert!(challenge(&h).contains(&meta), "{bad}: {}", challenge(&h));
        assert!(challenge(&h).contains("error=\"invalid_token\""), "{bad}: {}", challenge(&h));
    }
    assert_eq!(status_of(&gw, "tok-alice-1").await, StatusCode::OK);
    assert_eq!(initialize_with(&gw, Some("bearer tok-bob-1")).await.0, StatusCode::OK, "the scheme is case-blind");

    // The file changes: carol's token works, bob's no longer does, without a restart.
    std::fs::write(&path, "alice:tok-alice-1\ncarol:tok-carol-1\n").expect("rewrite");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while status_of(&gw, "tok-carol-1").await != StatusCode::OK {
        assert!(tokio::time::Instant::now() < deadline, "the changed token file was not read again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(status_of(&gw, "tok-bob-1").await, StatusCode::UNAUTHORIZED);
    // A broken file keeps the tokens in force.
    std::fs::write(&path, "this line has no colon\n").expect("rewrite");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(status_of(&gw, "tok-carol-1").await, StatusCode::OK);
    gw.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn jwts_are_checked_each_refusal_with_its_status() {
    let (rsa, ec, ed) = (TestKey::rsa("rsa-1"), TestKey::ec("ec-1"), TestKey::ed("ed-1"));
    let jwks = JwksServer::start(&[&rsa, &ec, &ed]).await;
    let gw = gateway_with(AuthConfig {
        jwks: Some(JwksSource::Url(jwks.url.clone())),
        issuer: Some(ISSUER.into()),
        audience: vec![AUDIENCE.into()],
        ..AuthConfig::default()
    })
    .await;

    let mut expired = claims("u1");
    expired["exp"] = json!(now() - 3600);
    let mut skewed = claims("u1");
    skewed["exp"] = json!(now() - 20);
    let mut early = claims("u1");
    early["nbf"] = json!(now() + 3600);
    let mut wrong_aud = claims("u1");
    wrong_aud["aud"] = json!("another-service");
    let mut wrong_iss = claims("u1");
    wrong_iss["iss"] = json!("https://evil.test");
    let mut no_sub = claims("u1");
    no_sub.as_object_mut().expect("object").remove("sub");
    let mut string_exp = claims("u1");
    string_exp["exp"] = json!("9999999999");
    let cases: Vec<(&str, String, StatusCode)> = vec![
        ("valid RS256", rsa.sign(&claims("u1")), StatusCode::OK),
        ("valid ES256", ec.sign(&claims("u1")), StatusCode::OK),
        ("valid EdDSA", ed.sign(&claims("u1")), StatusCode::OK),
        ("expired a little (clock skew)", rsa.sign(&skewed), StatusCode::OK),
        ("expired", rsa.sign(&expired), StatusCode::UNAUTHORIZED),
        ("not valid yet", rsa.sign(&early), StatusCode::UNAUTHORIZED),
        ("wrong audience", rsa.sign(&wrong_aud), StatusCode::UNAUTHORIZED),
        ("wrong issuer", ec.sign(&wrong_iss), StatusCode::UNAUTHORIZED),
        ("no subject", ed.sign(&no_sub), StatusCode::UNAUTHORIZED),
        ("exp of the wrong type", rsa.sign(&string_exp), StatusCode::UNAUTHORIZED),
        ("bad signature", tampered(&rsa.sign(&claims("u1"))), StatusCode::UNAUTHORIZED),
        (
            "signed by another key with this kid",
            TestKey::ec("x").sign_as("ec-1", &claims("u1")),
            StatusCode::UNAUTHORIZED,
        ),
        ("alg none", alg_none("rsa-1", &claims("u1")), StatusCode::UNAUTHORIZED),
        ("HS256 with the public key", hmac_with_public_key(&rsa, &claims("u1")), StatusCode::UNAUTHORIZED),
        ("not a JWT", "a.b.c".into(), StatusCode::UNAUTHORIZED),
    ];
    for (what, token, want) in &cases {
        let (status, h, body) = initialize_with(&gw, Some(&format!("Bearer {token}"))).await;
        assert_eq!(status, *want, "{what}: {body}");
        if *want == StatusCode::UNAUTHORIZED {
            assert!(challenge(&h).contains("error=\"invalid_token\""), "{what}: {}", challenge(&h));
        }
    }

    // The issuer rotates in a new key: a token naming its kid makes one refresh, and works.
    let before = jwks.fetches();
    assert!(before >= 1, "the JWKS is fetched at start");
    let rotated = TestKey::rsa("rsa-2");
    jwks.add(&rotated);
    assert_eq!(status_of(&gw, &rotated.sign(&claims("u2"))).await, StatusCode::OK);
    assert_eq!(jwks.fetches(), before + 1, "an unknown kid refreshes the JWKS once");
    // More unknown kids right after are refused without hammering the issuer.
    for i in 0..5 {
        let forged = rotated.sign_as(&format!("nope-{i}"), &claims("u2"));
        assert_eq!(status_of(&gw, &forged).await, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(jwks.fetches(), before + 1, "refreshes for unknown kids are rate-limited");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_jwks_that_is_down_at_start_is_fetched_when_a_token_needs_it() {
    let key = TestKey::ed("ed-1");
    let jwks = JwksServer::start(&[&key]).await;
    jwks.set_failing(true);
    let gw = gateway_with(AuthConfig {
        jwks: Some(JwksSource::Url(jwks.url.clone())),
        issuer: Some(ISSUER.into()),
        audience: vec![AUDIENCE.into()],
        ..AuthConfig::default()
    })
    .await;
    assert_eq!(jwks.fetches(), 1, "tether starts although the JWKS is down");
    jwks.set_failing(false);
    // No kid: any key of the token's algorithm would do, and there is none cached yet.
    let mut h = jsonwebtoken::Header::new(key.alg);
    h.kid = None;
    let token = jsonwebtoken::encode(&h, &claims("u1"), &key.encoding).expect("signs");
    assert_eq!(status_of(&gw, &token).await, StatusCode::OK);
    assert_eq!(jwks.fetches(), 2);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_jwks_file_works_and_the_principal_is_issuer_and_subject() {
    let dir = temp_dir("auth-jwks-file");
    let ec = TestKey::ec("ec-1");
    let file = dir.join("jwks.json");
    std::fs::write(&file, jwks_json(&[&ec])).expect("write");
    let gw = gateway_with(AuthConfig {
        jwks: Some(JwksSource::File(file)),
        issuer: Some(ISSUER.into()),
        audience: vec!["other".into(), AUDIENCE.into()],
        ..AuthConfig::default()
    })
    .await;
    let mut alice = client_as(&gw, Front::Streamable, &ec.sign(&claims("alice")));
    alice.connect().await;
    let sid = alice.session.clone().expect("session");
    let record = gw.manager.deps().store.get(&sid).await.expect("store").expect("record");
    assert_eq!(record.principal.as_deref(), Some(Principal::jwt(ISSUER, "alice").key()));

    // A fresh token for the same subject keeps the session: it is bound to the principal, not
    // to one credential.
    let mut refreshed = alice.same_session();
    let mut later = claims("alice");
    later["exp"] = json!(now() + 600);
    refreshed.http = bearer_http(&ec.sign(&later));
    let r = refreshed.request("tools/call", json!({"name": "echo", "arguments": {"message": "hi"}})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.answer);
    // Another subject of the same issuer is someone else.
    let mut mallory = alice.same_session();
    mallory.http = bearer_http(&ec.sign(&claims("mallory")));
    let r = mallory.request("tools/call", json!({"name": "echo", "arguments": {"message": "hi"}})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.answer);
    gw.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn the_metadata_document_describes_the_resource() {
    let dir = temp_dir("auth-metadata");
    let path = token_file(&dir, "alice:tok-alice-1\n");
    let gw = gateway_with(AuthConfig { token_file: Some(path.clone()), ..AuthConfig::default() }).await;
    let (_, h, _) = initialize_with(&gw, None).await;
    let url = challenge(&h).split('"').nth(1).expect("a quoted URL").to_owned();
    let http = reqwest::Client::new();
    for u in [url.clone(), format!("{url}/mcp")] {
        let resp = within(http.get(&u).send()).await.expect("GET metadata");
        assert_eq!(resp.status(), StatusCode::OK, "{u}");
        assert!(resp.headers()["content-type"].to_str().expect("ascii").starts_with("application/json"));
        let doc: Value = serde_json::from_str(&within(resp.text()).await.expect("body")).expect("JSON");
        assert_eq!(doc["resource"], format!("http://{}/mcp", gw.addr), "{doc}");
        assert_eq!(doc["bearer_methods_supported"], json!(["header"]), "{doc}");
        assert!(doc.get("authorization_servers").is_none(), "static tokens have no authorization server: {doc}");
    }
    gw.shutdown().await;

    // Configured: the public URL and the authorization servers.
    let ec = TestKey::ec("ec-1");
    let file = dir.join("jwks.json");
    std::fs::write(&file, jwks_json(&[&ec])).expect("write");
    let gw = gateway_with(AuthConfig {
        token_file: Some(path),
        jwks: Some(JwksSource::File(file)),
        issuer: Some(ISSUER.into()),
        audience: vec![AUDIENCE.into()],
        authorization_servers: vec!["https://login.tether.test".into()],
        resource: Some("https://mcp.tether.test/mcp".into()),
    })
    .await;
    let (status, h, _) = initialize_with(&gw, Some("Bearer nope")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        challenge(&h)
            .starts_with("Bearer resource_metadata=\"https://mcp.tether.test/.well-known/oauth-protected-resource\""),
        "{}",
        challenge(&h)
    );
    let text = within(async {
        http.get(format!("http://{}/.well-known/oauth-protected-resource", gw.addr)).send().await?.text().await
    })
    .await
    .expect("metadata");
    let doc: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(doc["resource"], "https://mcp.tether.test/mcp");
    assert_eq!(doc["authorization_servers"], json!(["https://login.tether.test"]));
    assert_eq!(doc["resource_signing_alg_values_supported"], json!(["RS256", "ES256", "EdDSA"]));
    // Both kinds of credential work side by side.
    assert_eq!(status_of(&gw, "tok-alice-1").await, StatusCode::OK);
    assert_eq!(status_of(&gw, &ec.sign(&claims("u1"))).await, StatusCode::OK);
    gw.shutdown().await;

    // Without authentication there is no document.
    let gw = echo_gateway().await;
    let resp =
        within(http.get(format!("http://{}/.well-known/oauth-protected-resource", gw.addr)).send()).await.expect("GET");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    gw.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// A raw request on `/mcp` for session `sid`, as `token` (or anonymous).
async fn raw_mcp(
    gw: &Gateway,
    method: reqwest::Method,
    sid: &str,
    token: Option<&str>,
    last_event_id: Option<&str>,
) -> StatusCode {
    let mut req = reqwest::Client::new()
        .request(method.clone(), format!("http://{}/mcp", gw.addr))
        .header("mcp-session-id", sid)
        .header("mcp-protocol-version", "2025-11-25")
        .header("accept", "application/json, text/event-stream");
    if method == reqwest::Method::POST {
        let body = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "echo", "arguments": {"message": "x"}}});
        req = req.header("content-type", "application/json").body(body.to_string());
    }
    if let Some(t) = token {
        req = req.header(AUTHORIZATION, format!("Bearer {t}"));
    }
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id);
    }
    within(req.send()).await.expect("request").status()
}

#[tokio::test]
async fn a_session_is_bound_to_its_principal_on_every_endpoint() {
    let dir = temp_dir("auth-binding");
    let path = token_file(&dir, "alice:tok-alice-1\nbob:tok-bob-1\n");
    let gw = gateway_with(AuthConfig { token_file: Some(path), ..AuthConfig::default() }).await;
    use reqwest::Method as M;

    // Streamable HTTP: alice's session, and an event id of its standalone stream.
    let mut alice = client_as(&gw, Front::Streamable, "tok-alice-1");
    alice.connect().await;
    let sid = alice.session.clone().expect("session");
    let record = gw.manager.deps().store.get(&sid).await.expect("store").expect("record");
    assert_eq!(record.principal.as_deref(), Some(Principal::token("alice").key()));
    let mut stream = alice.open_stream().await;
    let priming = stream.next_event().await.expect("priming event");
    let event_id = priming.id.expect("the priming event has an id");
    drop(stream);

    // bob knows the id: every endpoint answers as for an unknown session.
    let mut bob = alice.same_session();
    bob.http = bearer_http("tok-bob-1");
    let r = bob.request("tools/call", json!({"name": "echo", "arguments": {"message": "mine now"}})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "POST request: {}", r.answer);
    assert_eq!(r.answer["error"]["message"], "Session not found", "{}", r.answer);
    assert_eq!(bob.notify("notifications/roots/list_changed", None).await, StatusCode::NOT_FOUND, "POST notification");
    assert_eq!(raw_mcp(&gw, M::GET, &sid, Some("tok-bob-1"), None).await, StatusCode::NOT_FOUND, "GET");
    assert_eq!(
        raw_mcp(&gw, M::GET, &sid, Some("tok-bob-1"), Some(&event_id)).await,
        StatusCode::NOT_FOUND,
        "GET resume"
    );
    assert_eq!(raw_mcp(&gw, M::DELETE, &sid, Some("tok-bob-1"), None).await, StatusCode::NOT_FOUND, "DELETE");
    // Without credentials: 401 everywhere.
    for m in [M::POST, M::GET, M::DELETE] {
        assert_eq!(raw_mcp(&gw, m.clone(), &sid, None, None).await, StatusCode::UNAUTHORIZED, "{m} anonymous");
    }
    assert_eq!(raw_mcp(&gw, M::GET, &sid, None, Some(&event_id)).await, StatusCode::UNAUTHORIZED);

    // alice's session is untouched: it resumes, answers and ends only at her word.
    drop(alice.resume_stream(Some(&event_id)).await);
    let r = alice.request("tools/call", json!({"name": "echo", "arguments": {"message": "still mine"}})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.answer);
    assert_eq!(r.answer["result"]["content"][0]["text"], "still mine", "{}", r.answer);
    assert_eq!(alice.close().await, StatusCode::OK);

    // Legacy HTTP+SSE: GET /sse and POST /messages/.
    let anonymous = within(
        reqwest::Client::new().get(format!("http://{}/sse", gw.addr)).header("accept", "text/event-stream").send(),
    )
    .await
    .expect("GET /sse");
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert!(challenge(anonymous.headers()).starts_with("Bearer resource_metadata="));
    let mut alice_sse = client_as(&gw, Front::LegacySse, "tok-alice-1");
    alice_sse.connect().await;
    let legacy_sid = alice_sse.session.clone().expect("legacy session");
    let body = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "echo", "arguments": {"message": "x"}}});
    for (who, token, want) in
        [("bob", Some("tok-bob-1"), StatusCode::NOT_FOUND), ("anonymous", None, StatusCode::UNAUTHORIZED)]
    {
        let mut req = reqwest::Client::new()
            .post(format!("http://{}/messages/?session_id={legacy_sid}", gw.addr))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(t) = token {
            req = req.header(AUTHORIZATION, format!("Bearer {t}"));
        }
        assert_eq!(within(req.send()).await.expect("POST").status(), want, "legacy POST as {who}");
    }
    let r = alice_sse.request("tools/call", json!({"name": "echo", "arguments": {"message": "legacy"}})).await;
    assert_eq!(r.answer["result"]["content"][0]["text"], "legacy", "{}", r.answer);
    // A session id of one front is not a session of the other.
    assert_eq!(raw_mcp(&gw, M::POST, &legacy_sid, Some("tok-alice-1"), None).await, StatusCode::NOT_FOUND);
    gw.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// A gateway in front of `upstream` with the given upstream credentials.
async fn front_of(upstream: UpstreamSpec, header: Option<&str>, forward_auth: bool) -> Gateway {
    let mut c = config(upstream);
    if let Some(h) = header {
        c.session.upstream.headers.insert(AUTHORIZATION, HeaderValue::from_str(h).expect("header"));
    }
    c.session.upstream.forward_auth = forward_auth;
    c.session.request_timeout = Duration::from_secs(5);
    start(c).await
}

#[tokio::test]
async fn upstream_credentials_reach_the_upstream_and_client_credentials_only_when_forwarded() {
    // The upstream is another tether that requires a token: a real MCP server that refuses
    // requests without it, on both its Streamable HTTP and its legacy SSE endpoint.
    let dir = temp_dir("auth-upstream");
    let path = token_file(&dir, "gateway:up-token-42\n");
    let upstream = gateway_with(AuthConfig { token_file: Some(path), ..AuthConfig::default() }).await;
    let mcp = UpstreamSpec::Streamable { url: format!("http://{}/mcp", upstream.addr) };
    let sse = UpstreamSpec::Sse { url: format!("http://{}/sse", upstream.addr) };
    let echo = json!({"name": "echo", "arguments": {"message": "through"}});

    // Configured headers reach HTTP and SSE upstreams.
    for spec in [mcp.clone(), sse.clone()] {
        let gw = front_of(spec.clone(), Some("Bearer up-token-42"), false).await;
        let mut c = Client::new(&gw, Front::Streamable);
        c.connect().await;
        let r = c.request("tools/call", echo.clone()).await;
        assert_eq!(r.answer["result"]["content"][0]["text"], "through", "{spec:?}: {}", r.answer);
        gw.shutdown().await;
    }

    // A client's own Authorization does not go upstream by default…
    for spec in [mcp.clone(), sse.clone()] {
        let gw = front_of(spec.clone(), None, false).await;
        let (status, _, body) = initialize_with(&gw, Some("Bearer up-token-42")).await;
        assert_ne!(status, StatusCode::OK, "{spec:?}: the client's token reached the upstream: {body}");
        assert!(body.get("error").is_some(), "{spec:?}: {body}");
        gw.shutdown().await;
    }
    // …and does with forward_auth, where it also replaces a configured one.
    for spec in [mcp, sse] {
        let gw = front_of(spec.clone(), Some("Bearer wrong-token"), true).await;
        let mut c = client_as(&gw, Front::Streamable, "up-token-42");
        c.connect().await;
        let r = c.request("tools/call", echo.clone()).await;
        assert_eq!(r.answer["result"]["content"][0]["text"], "through", "{spec:?}: {}", r.answer);
        gw.shutdown().await;
    }
    upstream.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn env_reaches_a_stdio_upstream() {
    // tether-echo offers an extra tool named by the file its TETHER_ECHO_EXTRA_TOOL_FILE names.
    let dir = temp_dir("auth-env");
    let file = dir.join("tool");
    std::fs::write(&file, "from-env").expect("write");
    let mut c = config(UpstreamSpec::Stdio { command: echo_command() });
    c.session.upstream.env = vec![("TETHER_ECHO_EXTRA_TOOL_FILE".into(), file.display().to_string())];
    let gw = start(c).await;
    let mut client = Client::new(&gw, Front::Streamable);
    client.connect().await;
    let r = client.request("tools/list", json!({})).await;
    let names: Vec<&str> =
        r.answer["result"]["tools"].as_array().expect("tools").iter().filter_map(|t| t["name"].as_str()).collect();
    assert!(names.contains(&"from-env"), "{names:?}");
    gw.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_session_stays_bound_across_a_gateway_restart() {
    let dir = temp_dir("auth-restart");
    let path = token_file(&dir, "alice:tok-alice-1\nbob:tok-bob-1\n");
    let mut c = config(UpstreamSpec::Stdio { command: echo_command() });
    c.store = tether::config::StoreSpec::Sqlite {
        path: dir.join("sessions.db"),
        commit_window: tether::store::DEFAULT_COMMIT_WINDOW,
    };
    c.auth = AuthConfig { token_file: Some(path), ..AuthConfig::default() };
    let gw = start(c.clone()).await;
    let mut alice = client_as(&gw, Front::Streamable, "tok-alice-1");
    alice.connect().await;
    gw.shutdown().await;

    // The next tether loads the record from the store, with its principal.
    let gw = start(c).await;
    alice.base = format!("http://{}", gw.addr);
    let mut bob = alice.same_session();
    bob.http = bearer_http("tok-bob-1");
    let r = bob.request("tools/call", json!({"name": "echo", "arguments": {"message": "x"}})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.answer);
    let r = alice.request("tools/call", json!({"name": "echo", "arguments": {"message": "back"}})).await;
    assert_eq!(r.answer["result"]["content"][0]["text"], "back", "{}", r.answer);
    gw.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}
