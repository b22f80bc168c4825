//! The dashboard over real HTTP, without a browser: logging in (and being refused), the login
//! cookie's flags, CSRF refusals on the JSON API and on logout, the live-update stream, HTML
//! escaping of what clients send, and `POST /admin/sessions/{id}/refresh` (a revive by replay
//! forced by an operator). The browser test is `dashboard_browser.rs`.

mod harness;

use harness::{ADMIN_TOKEN, Client, Front, config, echo_command, within};
use reqwest::header::{HeaderMap, LOCATION, SET_COOKIE};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tether::upstream::UpstreamSpec;
use tether::{Gateway, Listeners};

/// A gateway in front of `tether-echo`, with an admin listener.
async fn echo_gateway() -> Gateway {
    let mcp = within(tokio::net::TcpListener::bind("127.0.0.1:0")).await.expect("bind");
    let admin = within(tokio::net::TcpListener::bind("127.0.0.1:0")).await.expect("bind");
    let config = config(UpstreamSpec::Stdio { command: echo_command() });
    within(Gateway::start_with(config, Listeners { mcp, admin: Some(admin) }, None)).await.expect("starts")
}

/// A browser-like client of the admin listener: no redirects followed, cookies by hand.
struct Browser {
    http: reqwest::Client,
    base: String,
    cookie: Option<String>,
}

impl Browser {
    fn of(gw: &Gateway) -> Browser {
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
        Browser { http, base: format!("http://{}", gw.admin_addr.expect("admin")), cookie: None }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<String>,
    ) -> reqwest::Response {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(c) = &self.cookie {
            req = req.header("cookie", c);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        within(req.send()).await.expect("admin request")
    }

    async fn login(&mut self, token: &str) -> reqwest::Response {
        let body = format!("token={token}");
        let r = self
            .send(Method::POST, "/ui/login", &[("content-type", "application/x-www-form-urlencoded")], Some(body))
            .await;
        if let Some(c) = r.headers().get(SET_COOKIE) {
            let c = c.to_str().expect("ascii");
            self.cookie = Some(c.split(';').next().expect("pair").to_owned());
        }
        r
    }

    /// The CSRF token of the logged-in page.
    async fn csrf(&self) -> String {
        let r = self.send(Method::GET, "/", &[], None).await;
        assert_eq!(r.status(), StatusCode::OK);
        let html = within(r.text()).await.expect("body");
        let pattern = r#"<meta name="csrf-token" content=""#;
        let at = html.find(pattern).expect("a csrf meta tag") + pattern.len();
        html[at..at + 64].to_owned()
    }
}

async fn json_of(r: reqwest::Response) -> (StatusCode, Value) {
    let status = r.status();
    let text = within(r.text()).await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

#[tokio::test]
async fn login_refuses_a_wrong_token_and_sets_a_strict_http_only_cookie() {
    let gw = echo_gateway().await;
    let mut b = Browser::of(&gw);

    let r = b.send(Method::GET, "/", &[], None).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "a page without a login goes to the login form");
    assert_eq!(header(r.headers(), "location"), "/ui/login");
    let r = b.send(Method::GET, "/ui/login", &[], None).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(header(r.headers(), "content-security-policy").contains("script-src 'self'"));
    assert_eq!(header(r.headers(), "x-frame-options"), "DENY");

    let r = b.login("not-the-token").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers().get(SET_COOKIE).is_none(), "no cookie for a wrong token");
    assert!(within(r.text()).await.expect("body").contains("not the admin token"));
    assert!(b.cookie.is_none());

    let r = b.login(ADMIN_TOKEN).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers().get(LOCATION).map(|v| v.to_str().expect("ascii")), Some("/"));
    let set = header(r.headers(), "set-cookie").to_owned();
    assert!(set.starts_with("tether_admin="), "{set}");
    assert!(set.contains("; HttpOnly") && set.contains("; SameSite=Strict") && set.contains("; Path=/"), "{set}");
    assert!(!set.contains(ADMIN_TOKEN), "the token itself is never the cookie");

    let r = b.send(Method::GET, "/", &[], None).await;
    assert_eq!(r.status(), StatusCode::OK);
    let html = within(r.text()).await.expect("body");
    assert!(html.contains("single replica") && html.contains("Sessions"), "the overview renders");
    assert!(!html.contains(ADMIN_TOKEN));
    // A forged cookie is no login.
    let forged = Browser { cookie: Some(format!("tether_admin={}", "0".repeat(64))), ..Browser::of(&gw) };
    assert_eq!(forged.send(Method::GET, "/", &[], None).await.status(), StatusCode::SEE_OTHER);
    let forged = Browser { cookie: Some(format!("tether_admin={ADMIN_TOKEN}")), ..Browser::of(&gw) };
    assert_eq!(forged.send(Method::GET, "/admin/sessions", &[], None).await.status(), StatusCode::UNAUTHORIZED);
    within(gw.shutdown()).await;
}

#[tokio::test]
async fn guessing_tokens_closes_the_login_for_a_while() {
    let gw = echo_gateway().await;
    let mut b = Browser::of(&gw);
    for i in 0..tether::admin::dashboard::login::MAX_FAILURES {
        assert_eq!(b.login(&format!("guess-{i}")).await.status(), StatusCode::UNAUTHORIZED);
    }
    // Now even the right token is not compared: a guess would teach nothing.
    let r = b.login(ADMIN_TOKEN).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(header(r.headers(), "retry-after").parse::<u64>().is_ok_and(|s| (1..=60).contains(&s)));
    assert!(b.cookie.is_none());
    // The bearer API is not affected.
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let r = b.send(Method::GET, "/admin/sessions", &[("authorization", &bearer)], None).await;
    assert_eq!(r.status(), StatusCode::OK);
    within(gw.shutdown()).await;
}

#[tokio::test]
async fn state_changes_from_a_login_need_the_csrf_token_and_our_origin() {
    let gw = echo_gateway().await;
    let mut b = Browser::of(&gw);
    b.login(ADMIN_TOKEN).await;
    let csrf = b.csrf().await;

    // Reads need only the cookie.
    let (status, body) = json_of(b.send(Method::GET, "/admin/sessions", &[], None).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = json_of(b.send(Method::GET, "/admin/overview", &[], None).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["replicas"][0]["role"], "single replica");

    // Changes without the token, with a wrong one, or from another origin are refused.
    let (status, body) = json_of(b.send(Method::POST, "/admin/drain", &[], None).await).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"]["code"], "forbidden");
    let wrong = "f".repeat(64);
    let r = b.send(Method::POST, "/admin/drain", &[("x-csrf-token", &wrong)], None).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r =
        b.send(Method::POST, "/admin/drain", &[("x-csrf-token", &csrf), ("origin", "http://evil.example")], None).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(!gw.manager.is_draining(), "nothing was drained by the refused requests");
    let body = r#"{"filter":"debug"}"#.to_owned();
    let r = b.send(Method::PUT, "/admin/log-level", &[("content-type", "application/json")], Some(body)).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // With the token and our own origin it works.
    let origin = b.base.clone();
    let (status, body) =
        json_of(b.send(Method::POST, "/admin/drain", &[("x-csrf-token", &csrf), ("origin", &origin)], None).await)
            .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(gw.manager.is_draining());

    // Logout is CSRF-checked too; afterwards the cookie is worthless.
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let r = b.send(Method::POST, "/ui/logout", &form, Some("csrf=nope".into())).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = b.send(Method::POST, "/ui/logout", &form, Some(format!("csrf={csrf}"))).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(header(r.headers(), "set-cookie").contains("Max-Age=0"));
    assert_eq!(b.send(Method::GET, "/admin/sessions", &[], None).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(b.send(Method::GET, "/", &[], None).await.status(), StatusCode::SEE_OTHER);
    within(gw.shutdown()).await;
}

#[tokio::test]
async fn refresh_revives_a_session_by_replay_through_the_json_api() {
    let gw = echo_gateway().await;
    let mut client = Client::new(&gw, Front::Streamable);
    client.connect().await;
    let call = json!({"name": "echo", "arguments": {"message": "before"}});
    assert!(client.request("tools/call", call).await.answer["result"].is_object());
    let id = client.session.clone().expect("a session");
    let pid = harness::only_child(&gw);
    let b = Browser::of(&gw);
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let auth = [("authorization", bearer.as_str())];

    let path = format!("/admin/sessions/{id}/refresh");
    assert_eq!(b.send(Method::POST, &path, &[], None).await.status(), StatusCode::UNAUTHORIZED);
    let (status, body) = json_of(b.send(Method::POST, &path, &auth, None).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["refreshed"], true);
    assert_eq!(body["generation"], 2, "a new binding");
    assert_eq!(body["revives"], 1);
    assert_ne!(body["pid"].as_u64(), Some(u64::from(pid)), "a new child: {body}");
    assert_eq!(gw.manager.deps().stats.revives.get(), 1);

    // The client did nothing and its next call works, on the same session.
    let call = json!({"name": "echo", "arguments": {"message": "after"}});
    let answer = client.request("tools/call", call).await.answer;
    assert_eq!(answer["result"]["content"][0]["text"], "after", "{answer}");
    assert_eq!(client.session.as_deref(), Some(id.as_str()));
    let (_, shown) = json_of(b.send(Method::GET, &format!("/admin/sessions/{id}"), &auth, None).await).await;
    assert_eq!(shown["upstream"]["revives"], 1);

    // A session that has not completed its handshake has nothing to replay: a legacy SSE
    // session exists from its GET /sse on.
    let sse = within(client.http.get(format!("{}/sse", client.base)).header("accept", "text/event-stream").send())
        .await
        .expect("GET /sse");
    let mut events = harness::SseStream::new(sse);
    let endpoint = events.next_event().await.expect("the endpoint event");
    let fresh = endpoint.data.split("session_id=").nth(1).expect("a session id").to_owned();
    let (status, body) =
        json_of(b.send(Method::POST, &format!("/admin/sessions/{fresh}/refresh"), &auth, None).await).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("nothing to replay")), "{body}");
    drop(events);

    // Unknown and closed sessions.
    let unknown = format!("/admin/sessions/{}/refresh", "a".repeat(32));
    assert_eq!(b.send(Method::POST, &unknown, &auth, None).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(b.send(Method::DELETE, &format!("/admin/sessions/{id}"), &auth, None).await.status(), StatusCode::OK);
    let (status, body) = json_of(b.send(Method::POST, &path, &auth, None).await).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    within(gw.shutdown()).await;
}

#[tokio::test]
async fn the_live_stream_sends_rendered_fragments_and_client_text_is_escaped() {
    let gw = echo_gateway().await;
    let mut client = Client::new(&gw, Front::Streamable);
    let evil = json!({
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "<img src=x onerror=alert(1)>", "version": "\"><script>alert(2)</script>"}
    });
    let init = client.request("initialize", evil).await;
    assert_eq!(init.status, StatusCode::OK);
    let mut b = Browser::of(&gw);
    assert_eq!(
        b.send(Method::GET, "/ui/events?view=overview", &[], None).await.status(),
        StatusCode::UNAUTHORIZED,
        "no stream without a login"
    );
    b.login(ADMIN_TOKEN).await;

    let html = within(b.send(Method::GET, "/ui/sessions", &[], None).await.text()).await.expect("page");
    assert!(html.contains("&lt;img src=x onerror=alert(1)&gt;"), "the name is shown, escaped");
    assert!(!html.contains("<img src=x") && !html.contains("<script>alert"), "and never as markup");

    assert_eq!(b.send(Method::GET, "/ui/events?view=nope", &[], None).await.status(), StatusCode::BAD_REQUEST);
    let mut r = b.send(Method::GET, "/ui/events?view=sessions&q=onerror", &[], None).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(r.headers(), "content-type"), "text/event-stream");
    let mut text = String::new();
    while !text.contains("event: fragment") || !text.contains("</table>") {
        let chunk = within(r.chunk()).await.expect("stream").expect("a chunk");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.contains("data: session-table"), "{text}");
    assert!(text.contains("&lt;img src=x"), "the filtered table has the session: {text}");
    assert!(!text.contains("<img src=x"));

    // The session's own page.
    let id = client.session.clone().expect("a session");
    let html = within(b.send(Method::GET, &format!("/ui/sessions/{id}"), &[], None).await.text()).await.expect("page");
    assert!(html.contains("clientInfo") && html.contains(r#"data-url="/admin/sessions/"#), "details and actions");
    assert!(!html.contains("<script>alert"));
    let r = b.send(Method::GET, &format!("/ui/sessions/{}", "b".repeat(32)), &[], None).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // The upstreams page lists the session's child, with its breaker closed.
    let pid = harness::only_child(&gw);
    let html = within(b.send(Method::GET, "/ui/upstreams", &[], None).await.text()).await.expect("page");
    assert!(html.contains(&format!("pid {pid}")) && html.contains("crash-loop breaker"), "{html}");
    assert!(html.contains(&format!(r#"href="/ui/sessions/{id}""#)));
    within(gw.shutdown()).await;
}

#[tokio::test]
async fn a_refresh_settles_requests_in_flight_like_a_crash_does() {
    let gw = echo_gateway().await;
    let mut client = Client::new(&gw, Front::Streamable);
    client.connect().await;
    // The annotations are known: `sleep` is idempotent, `work` is not.
    assert!(client.request("tools/list", json!({})).await.answer["result"]["tools"].is_array());
    let id = client.session.clone().expect("a session");
    let mut safe = client.same_session();
    let mut unsafe_ = client.same_session();
    let safe =
        tokio::spawn(
            async move { safe.request("tools/call", json!({"name": "sleep", "arguments": {"ms": 1500}})).await },
        );
    let unsafe_ =
        tokio::spawn(
            async move { unsafe_.request("tools/call", json!({"name": "work", "arguments": {"ms": 1500}})).await },
        );
    let session = gw.manager.live_session(&id).expect("live");
    harness::eventually_async("both calls in flight", || {
        let s = session.clone();
        async move { s.pending_requests().await == 2 }
    })
    .await;

    let b = Browser::of(&gw);
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let path = format!("/admin/sessions/{id}/refresh");
    let (status, body) = json_of(b.send(Method::POST, &path, &[("authorization", &bearer)], None).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let safe = within(safe).await.expect("task").answer;
    assert!(safe["result"].is_object(), "the idempotent call is sent again and answered: {safe}");
    let unsafe_ = within(unsafe_).await.expect("task").answer;
    assert_eq!(unsafe_["error"]["code"], -32011, "{unsafe_}");
    assert_eq!(unsafe_["error"]["data"]["reason"], "upstream_restarted", "{unsafe_}");
    within(gw.shutdown()).await;
}

/// Reads a live stream until `what` has arrived; panics when the stream ends first.
async fn read_until(r: &mut reqwest::Response, what: &str) -> String {
    let mut text = String::new();
    while !text.contains(what) {
        match within(r.chunk()).await.expect("stream") {
            Some(chunk) => text.push_str(&String::from_utf8_lossy(&chunk)),
            None => panic!("the stream ended before {what:?}: {text}"),
        }
    }
    text
}

#[tokio::test]
async fn live_streams_are_bounded_and_end_with_their_login() {
    let gw = echo_gateway().await;
    let mut b = Browser::of(&gw);
    b.login(ADMIN_TOKEN).await;
    let csrf = b.csrf().await;
    let mut open = Vec::new();
    for _ in 0..tether::admin::dashboard::MAX_STREAMS {
        let mut r = b.send(Method::GET, "/ui/events?view=upstreams", &[], None).await;
        assert_eq!(r.status(), StatusCode::OK);
        read_until(&mut r, "event: fragment").await;
        open.push(r);
    }
    let (status, body) = json_of(b.send(Method::GET, "/ui/events?view=overview", &[], None).await).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "one stream too many: {body}");
    // One closes: there is room again.
    drop(open.pop());
    let mut again = None;
    for _ in 0..100 {
        let r = b.send(Method::GET, "/ui/events?view=overview", &[], None).await;
        if r.status() == StatusCode::OK {
            again = Some(r);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut again = again.expect("a closed stream frees its place");
    read_until(&mut again, "data: cards").await;

    // Logging out ends every stream of that login, with a `logout` event.
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let r = b.send(Method::POST, "/ui/logout", &form, Some(format!("csrf={csrf}"))).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    read_until(&mut again, "event: logout").await;
    assert!(within(again.chunk()).await.expect("stream").is_none(), "the stream ends after the logout event");
    within(gw.shutdown()).await;
}

#[tokio::test]
async fn refresh_replaces_an_http_upstreams_session() {
    // The upstream is another tether (in front of tether-echo), spoken to over Streamable HTTP.
    let inner = harness::start(config(UpstreamSpec::Stdio { command: echo_command() })).await;
    let mcp = within(tokio::net::TcpListener::bind("127.0.0.1:0")).await.expect("bind");
    let admin = within(tokio::net::TcpListener::bind("127.0.0.1:0")).await.expect("bind");
    let outer = config(UpstreamSpec::Streamable { url: format!("http://{}/mcp", inner.addr) });
    let gw = within(Gateway::start_with(outer, Listeners { mcp, admin: Some(admin) }, None)).await.expect("starts");
    let mut client = Client::new(&gw, Front::Streamable);
    client.connect().await;
    let id = client.session.clone().expect("a session");
    let upstream_ids = || inner.manager.live().iter().map(|s| s.id().to_owned()).collect::<Vec<_>>();
    let before = upstream_ids();
    assert_eq!(before.len(), 1);

    let mut b = Browser::of(&gw);
    b.login(ADMIN_TOKEN).await;
    let page = within(b.send(Method::GET, &format!("/ui/sessions/{id}"), &[], None).await.text()).await.expect("page");
    assert!(page.contains(&format!("upstream session <code>{}</code>", before[0])), "the binding names it: {page}");

    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let path = format!("/admin/sessions/{id}/refresh");
    let (status, body) = json_of(b.send(Method::POST, &path, &[("authorization", &bearer)], None).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["pid"], Value::Null, "no child here");
    let after = upstream_ids();
    assert_eq!(after.len(), 1, "the old upstream session was deleted: {after:?}");
    assert_ne!(after, before, "a new upstream session was initialized by replay");
    let call = json!({"name": "echo", "arguments": {"message": "still here"}});
    assert_eq!(client.request("tools/call", call).await.answer["result"]["content"][0]["text"], "still here");
    within(gw.shutdown()).await;
    within(inner.shutdown()).await;
}
