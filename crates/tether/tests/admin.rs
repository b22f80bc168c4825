//! The admin listener over real HTTP: health, readiness, deep health, Prometheus metrics parsed
//! with a real parser, and the token-protected session API — every endpoint and every way to
//! get the token wrong — plus the binary's side: a generated token file, refusing an exposed
//! admin without a token, and `check-config` redacting secrets.

mod harness;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::Duration;

use harness::{ADMIN_TOKEN, Client, Front, config, echo_command, eventually, only_child, within};
use prometheus_parse::{Sample, Scrape, Value as Metric};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tether::config::{Config, ConfigError, LogFormat, ServeArgs};
use tether::session::record::{SessionRecord, Transport, now_ms};
use tether::telemetry::LogControl;
use tether::upstream::UpstreamSpec;
use tether::{Gateway, Listeners};
use tokio::io::{AsyncBufReadExt, BufReader};

/// An admin client of one gateway.
struct Admin {
    http: reqwest::Client,
    base: String,
}

impl Admin {
    fn of(gw: &Gateway) -> Admin {
        Admin { http: reqwest::Client::new(), base: format!("http://{}", gw.admin_addr.expect("an admin listener")) }
    }

    /// A request with `authorization` as given (or none).
    async fn send(
        &self,
        method: Method,
        path: &str,
        authorization: Option<&str>,
        body: Option<&str>,
    ) -> reqwest::Response {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(a) = authorization {
            req = req.header("authorization", a);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b.to_owned());
        }
        within(req.send()).await.expect("admin request")
    }

    /// A request with the right token; the status and the JSON body.
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let body = body.map(|b| b.to_string());
        let resp = self.send(method, path, Some(&format!("Bearer {ADMIN_TOKEN}")), body.as_deref()).await;
        json_of(resp).await
    }

    /// An unauthenticated GET of a public endpoint.
    async fn get_public(&self, path: &str) -> (StatusCode, String) {
        let resp = self.send(Method::GET, path, None, None).await;
        let status = resp.status();
        (status, within(resp.text()).await.expect("body"))
    }

    /// `/metrics`, parsed by a Prometheus text parser.
    async fn metrics(&self) -> Metrics {
        let (status, text) = self.get_public("/metrics").await;
        assert_eq!(status, StatusCode::OK);
        Metrics::parse(text)
    }
}

async fn json_of(resp: reqwest::Response) -> (StatusCode, Value) {
    let status = resp.status();
    let text = within(resp.text()).await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// A scrape, parsed.
struct Metrics {
    text: String,
    scrape: Scrape,
}

impl Metrics {
    fn parse(text: String) -> Metrics {
        assert!(text.ends_with("# EOF\n"), "an OpenMetrics exposition ends with # EOF");
        let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("the exposition parses");
        Metrics { text, scrape }
    }

    fn sample(&self, name: &str, labels: &[(&str, &str)]) -> &Sample {
        self.scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .unwrap_or_else(|| panic!("no sample {name}{labels:?} in\n{}", self.text))
    }

    /// A counter's or gauge's value.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        match &self.sample(name, labels).value {
            Metric::Counter(v) | Metric::Gauge(v) | Metric::Untyped(v) => *v,
            other => panic!("{name} is not a single value: {other:?}"),
        }
    }

    /// A histogram's observation count, checked against its +Inf bucket.
    fn histogram_count(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let Metric::Histogram(buckets) = &self.sample(name, labels).value else { panic!("{name} is not a histogram") };
        let count = self.value(&format!("{name}_count"), labels);
        let inf = buckets.iter().find(|b| b.less_than.is_infinite()).expect("a +Inf bucket").count;
        assert_eq!(inf, count, "the +Inf bucket holds every observation");
        count
    }

    fn declares(&self, family: &str, kind: &str) -> bool {
        self.text.lines().any(|l| l == format!("# TYPE {family} {kind}"))
    }
}

async fn admin_gateway(config: Config, log: Option<LogControl>) -> (Gateway, Admin) {
    let mcp = within(tokio::net::TcpListener::bind("127.0.0.1:0")).await.expect("bind");
    let admin = within(tokio::net::TcpListener::bind("127.0.0.1:0")).await.expect("bind");
    let gw = within(Gateway::start_with(config, Listeners { mcp, admin: Some(admin) }, log)).await.expect("starts");
    let admin = Admin::of(&gw);
    (gw, admin)
}

fn echo_config() -> Config {
    config(UpstreamSpec::Stdio { command: echo_command() })
}

async fn echo(c: &mut Client, message: &str) -> Value {
    c.request("tools/call", json!({"name": "echo", "arguments": {"message": message}})).await.answer
}

/// Every endpoint under /admin/, including one that does not exist.
const ADMIN_ENDPOINTS: [(&str, &str); 10] = [
    ("GET", "/admin/sessions"),
    ("GET", "/admin/sessions/0123456789abcdef0123456789abcdef"),
    ("DELETE", "/admin/sessions/0123456789abcdef0123456789abcdef"),
    ("POST", "/admin/sessions/cleanup"),
    ("POST", "/admin/sessions/0123456789abcdef0123456789abcdef/refresh"),
    ("GET", "/admin/overview"),
    ("POST", "/admin/drain"),
    ("GET", "/admin/log-level"),
    ("PUT", "/admin/log-level"),
    ("GET", "/admin/no-such-endpoint"),
];

#[tokio::test]
async fn every_admin_endpoint_refuses_a_missing_a_wrong_or_a_non_bearer_token() {
    let (gw, admin) = admin_gateway(echo_config(), None).await;
    let wrong = [
        (None, "unauthorized"),
        (Some("Bearer not-the-token".to_owned()), "invalid_token"),
        (Some(format!("Bearer {ADMIN_TOKEN}x")), "invalid_token"),
        (Some(format!("Basic {ADMIN_TOKEN}")), "unauthorized"),
        (Some(ADMIN_TOKEN.to_owned()), "unauthorized"),
        (Some("Bearer".to_owned()), "unauthorized"),
    ];
    for (method, path) in ADMIN_ENDPOINTS {
        for (auth, code) in &wrong {
            let m = Method::from_bytes(method.as_bytes()).expect("method");
            let resp = admin.send(m, path, auth.as_deref(), Some(r#"{"filter":"trace"}"#)).await;
            let challenge = resp.headers().get("www-authenticate").map(|v| v.to_str().expect("ascii").to_owned());
            let (status, body) = json_of(resp).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path} with {auth:?}: {body}");
            assert_eq!(body["error"]["code"], *code, "{method} {path} with {auth:?}");
            assert!(challenge.is_some_and(|c| c.starts_with("Bearer realm=")), "{method} {path}: a Bearer challenge");
        }
    }
    // Nothing an unauthenticated request asked for happened.
    assert!(!gw.manager.is_draining(), "an unauthenticated drain is refused");
    // The right token opens them (the unknown endpoint is then a plain 404).
    let (status, _) = admin.call(Method::GET, "/admin/sessions", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = admin.call(Method::GET, "/admin/no-such-endpoint", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    // Health and metrics are for probes and scrapers: no token.
    for path in ["/healthz", "/readyz", "/health/deep", "/metrics"] {
        assert_eq!(admin.get_public(path).await.0, StatusCode::OK, "{path}");
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn a_session_is_listed_inspected_counted_and_terminated_and_the_client_then_gets_404() {
    let (gw, admin) = admin_gateway(echo_config(), None).await;
    let mut c = Client::new(&gw, Front::Streamable);
    c.connect().await;
    let sid = c.session.clone().expect("a session id");
    assert_eq!(echo(&mut c, "hello").await["result"]["content"][0]["text"], "hello");
    let pid = only_child(&gw);

    let (status, list) = admin.call(Method::GET, "/admin/sessions", None).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let listed = list["sessions"].as_array().expect("sessions");
    assert_eq!(listed.len(), 1, "{list}");
    let s = &listed[0];
    assert_eq!(s["id"], sid.as_str());
    assert_eq!(
        (s["state"].as_str(), s["live"].as_bool(), s["upstream"].as_str()),
        (Some("active"), Some(true), Some("alive"))
    );
    assert_eq!(s["transport"], "streamable-http");
    assert_eq!(s["client"]["name"], "tether-tests");
    assert_eq!(s["toolCalls"], 1);
    assert_eq!(list["nextCursor"], Value::Null);

    let (status, detail) = admin.call(Method::GET, &format!("/admin/sessions/{sid}"), None).await;
    assert_eq!(status, StatusCode::OK, "{detail}");
    assert_eq!(detail["record"]["id"], sid.as_str());
    assert_eq!(detail["record"]["protocol_version"], "2025-11-25");
    assert_eq!(detail["upstream"]["alive"], true);
    assert_eq!(detail["upstream"]["pid"], pid);
    assert_eq!(detail["upstream"]["revives"], 0);
    assert_eq!(detail["upstream"]["kind"], "stdio");
    assert_eq!(detail["streams"]["standaloneOpen"], false);
    assert!(detail["streams"]["opened"].as_u64().expect("opened") >= 2, "{detail}");
    assert_eq!(detail["lastError"], Value::Null);

    let m = admin.metrics().await;
    assert!(m.declares("tether_sessions_created", "counter"), "{}", m.text);
    assert_eq!(m.value("tether_sessions_created_total", &[]), 1.0);
    assert_eq!(m.value("tether_sessions_active", &[]), 1.0);
    assert_eq!(m.value("tether_sessions_live", &[("transport", "streamable-http")]), 1.0);
    assert_eq!(m.value("tether_sessions_live", &[("transport", "modern-http")]), 0.0);
    assert_eq!(m.value("tether_upstreams", &[("state", "alive")]), 1.0);
    let ok = |class| [("method_class", class), ("outcome", "ok")];
    assert_eq!(m.value("tether_requests_total", &ok("initialize")), 1.0);
    assert_eq!(m.value("tether_requests_total", &ok("notification")), 1.0);
    assert_eq!(m.value("tether_requests_total", &ok("tools")), 1.0);
    assert_eq!(m.histogram_count("tether_request_duration_seconds", &[("method_class", "tools")]), 1.0);
    assert_eq!(m.value("tether_tool_calls_total", &[]), 1.0);
    assert!(m.histogram_count("tether_store_write_duration_seconds", &[("op", "create")]) >= 1.0);
    assert!(!m.text.contains(&sid), "no session id in any label");

    let (status, body) = admin.call(Method::DELETE, &format!("/admin/sessions/{sid}"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["terminated"], true);
    // The upstream is closed: the child is gone.
    eventually("the stdio child exits", || {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_err()
    })
    .await;
    // The client's next request is answered 404, as for any unknown session.
    let after = c.request("tools/call", json!({"name": "echo", "arguments": {"message": "late"}})).await;
    assert_eq!(after.status, StatusCode::NOT_FOUND, "{:?}", after.answer);
    assert_eq!(c.request("ping", json!({})).await.status, StatusCode::NOT_FOUND);

    let (_, detail) = admin.call(Method::GET, &format!("/admin/sessions/{sid}"), None).await;
    assert_eq!(detail["session"]["state"], "closed", "{detail}");
    assert_eq!(detail["session"]["closeReason"], "terminated");
    assert_eq!(detail["session"]["live"], false);
    let (status, body) = admin.call(Method::DELETE, &format!("/admin/sessions/{sid}"), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "terminating twice: {body}");
    let (status, _) = admin.call(Method::DELETE, "/admin/sessions/ffffffffffffffffffffffffffffffff", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (_, active) = admin.call(Method::GET, "/admin/sessions?state=active", None).await;
    assert_eq!(active["sessions"], json!([]));
    let (_, closed) = admin.call(Method::GET, "/admin/sessions?state=closed", None).await;
    assert_eq!(closed["sessions"][0]["id"], sid.as_str(), "{closed}");

    let m = admin.metrics().await;
    assert_eq!(m.value("tether_sessions_closed_total", &[]), 1.0);
    assert_eq!(m.value("tether_sessions_active", &[]), 0.0);
    assert_eq!(m.value("tether_requests_total", &[("method_class", "tools"), ("outcome", "rejected")]), 1.0);
    assert_eq!(m.value("tether_requests_total", &[("method_class", "ping"), ("outcome", "rejected")]), 1.0);
    gw.shutdown().await;
}

#[tokio::test]
async fn the_list_pages_with_a_cursor_filters_by_state_and_sees_sessions_only_in_the_store() {
    let (gw, admin) = admin_gateway(echo_config(), None).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let mut c = Client::new(&gw, Front::Streamable);
        c.connect().await;
        ids.push(c.session.clone().expect("id"));
        // Distinct creation times keep the order unambiguous.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A session open in the store but not live here (another replica's, or from before a restart).
    let stored = SessionRecord::new(Transport::StreamableHttp);
    within(gw.manager.deps().store.create(&stored)).await.expect("stored");

    let (status, page1) = admin.call(Method::GET, "/admin/sessions?limit=2", None).await;
    assert_eq!(status, StatusCode::OK, "{page1}");
    let got1: Vec<&str> = page1["sessions"].as_array().expect("list").iter().filter_map(|s| s["id"].as_str()).collect();
    assert_eq!(got1, ids[..2].iter().map(String::as_str).collect::<Vec<_>>());
    let cursor = page1["nextCursor"].as_str().expect("a next page").to_owned();
    let (_, page2) = admin.call(Method::GET, &format!("/admin/sessions?limit=2&cursor={cursor}"), None).await;
    let got2: Vec<&str> = page2["sessions"].as_array().expect("list").iter().filter_map(|s| s["id"].as_str()).collect();
    assert_eq!(got2, vec![ids[2].as_str(), stored.id.as_str()]);
    assert_eq!(page2["nextCursor"], Value::Null, "{page2}");
    assert_eq!(page2["sessions"][1]["live"], false);
    assert_eq!(page2["sessions"][1]["upstream"], Value::Null);

    // Terminating a session that is only in the store closes its record.
    let (status, _) = admin.call(Method::DELETE, &format!("/admin/sessions/{}", stored.id), None).await;
    assert_eq!(status, StatusCode::OK);
    let (_, all) = admin.call(Method::GET, "/admin/sessions?state=all", None).await;
    assert_eq!(all["sessions"].as_array().expect("list").len(), 4, "{all}");
    let (_, closed) = admin.call(Method::GET, "/admin/sessions?state=closed", None).await;
    assert_eq!(closed["sessions"].as_array().expect("list").len(), 1);
    assert_eq!(closed["sessions"][0]["closeReason"], "terminated");

    for bad in ["state=open-ish", "limit=0", "limit=1001", "limit=many", "colour=red"] {
        let (status, body) = admin.call(Method::GET, &format!("/admin/sessions?{bad}"), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "bad_request");
    }
    let (status, _) = admin.call(Method::GET, "/admin/sessions/ffffffffffffffffffffffffffffffff", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    gw.shutdown().await;
}

#[tokio::test]
async fn cleanup_closes_expired_sessions_and_leaves_the_rest() {
    let (gw, admin) = admin_gateway(echo_config(), None).await;
    let mut c = Client::new(&gw, Front::Streamable);
    c.connect().await;
    let two_days_ago = now_ms() - 2 * 86_400_000;
    let mut old = SessionRecord::new(Transport::StreamableHttp);
    old.created_at = two_days_ago;
    old.last_active = two_days_ago;
    within(gw.manager.deps().store.create(&old)).await.expect("stored");

    let (_, listed) = admin.call(Method::GET, "/admin/sessions", None).await;
    let stale = listed["sessions"].as_array().expect("list").iter().find(|s| s["id"] == old.id.as_str()).cloned();
    assert_eq!(stale.expect("listed")["expired"], true, "an expired record awaiting cleanup says so");

    let (status, body) = admin.call(Method::POST, "/admin/sessions/cleanup", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["closed"], 1);
    let (_, detail) = admin.call(Method::GET, &format!("/admin/sessions/{}", old.id), None).await;
    assert_eq!(detail["session"]["closeReason"], "expired", "{detail}");
    // The live, fresh session is untouched and still serves.
    assert_eq!(echo(&mut c, "still here").await["result"]["content"][0]["text"], "still here");
    let (_, again) = admin.call(Method::POST, "/admin/sessions/cleanup", None).await;
    assert_eq!(again["closed"], 0);

    let m = admin.metrics().await;
    assert_eq!(m.value("tether_sessions_expired_total", &[]), 1.0);
    assert_eq!(m.value("tether_sessions_active", &[]), 1.0);
    gw.shutdown().await;
}

#[tokio::test]
async fn drain_refuses_new_sessions_with_503_and_turns_readiness_off() {
    let (gw, admin) = admin_gateway(echo_config(), None).await;
    let mut c = Client::new(&gw, Front::Streamable);
    c.connect().await;
    let (status, ready) = admin.get_public("/readyz").await;
    assert_eq!(status, StatusCode::OK, "{ready}");

    let (status, body) = admin.call(Method::POST, "/admin/drain", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["draining"], true);
    assert_eq!(body["activeSessions"], 1);

    let resp = admin.send(Method::GET, "/readyz", None, None).await;
    let (status, ready) = json_of(resp).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{ready}");
    assert_eq!(ready["ready"], false);
    assert_eq!(ready["checks"]["draining"]["ok"], false);
    assert_eq!(ready["checks"]["store"]["ok"], true);

    let mut late = Client::new(&gw, Front::Streamable);
    let init = late.request("initialize", harness::init_params()).await;
    assert_eq!(init.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", init.answer);
    // Sessions already open keep being served.
    assert_eq!(echo(&mut c, "during drain").await["result"]["content"][0]["text"], "during drain");

    let (_, deep) = admin.get_public("/health/deep").await;
    let deep: Value = serde_json::from_str(&deep).expect("json");
    assert_eq!(deep["status"], "draining");
    let m = admin.metrics().await;
    assert_eq!(m.value("tether_draining", &[]), 1.0);
    assert_eq!(m.value("tether_requests_total", &[("method_class", "initialize"), ("outcome", "unavailable")]), 1.0);
    gw.shutdown().await;
}

#[tokio::test]
async fn readiness_names_an_upstream_that_cannot_be_started() {
    let (gw, admin) =
        admin_gateway(config(UpstreamSpec::Stdio { command: vec!["tether-no-such-server".into()] }), None).await;
    let (status, body) = admin.get_public("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(body["checks"]["upstream"]["ok"], false);
    assert!(body["checks"]["upstream"]["error"].as_str().expect("error").contains("tether-no-such-server"), "{body}");
    assert_eq!(admin.get_public("/healthz").await.0, StatusCode::OK, "alive all the same");
    gw.shutdown().await;

    // An HTTP upstream that refuses connections.
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let url = format!("http://127.0.0.1:{port}/mcp");
    let (gw, admin) = admin_gateway(config(UpstreamSpec::Streamable { url }), None).await;
    let (status, body) = admin.get_public("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("cannot connect"), "{body}");
    gw.shutdown().await;
}

#[tokio::test]
async fn deep_health_reports_sessions_upstreams_the_store_and_the_version() {
    let (gw, admin) = admin_gateway(echo_config(), None).await;
    let mut c = Client::new(&gw, Front::Streamable);
    c.connect().await;
    echo(&mut c, "one").await;
    echo(&mut c, "two").await;
    let stream = c.open_stream().await;

    let deep = || async {
        let (status, body) = admin.get_public("/health/deep").await;
        assert_eq!(status, StatusCode::OK);
        serde_json::from_str::<Value>(&body).expect("json")
    };
    let d = deep().await;
    assert_eq!(d["status"], "ok", "{d}");
    assert_eq!(d["version"], env!("CARGO_PKG_VERSION"));
    assert!(d["uptimeSeconds"].as_f64().expect("uptime") >= 0.0);
    assert_eq!(d["sessions"]["total"], 1);
    assert_eq!(d["sessions"]["active"], 1);
    assert_eq!(d["sessions"]["expired"], 0);
    assert_eq!(d["sessions"]["totalToolCalls"], 2);
    assert_eq!(d["upstreams"]["alive"], 1);
    assert_eq!((d["upstreams"]["restarting"].as_u64(), d["upstreams"]["broken"].as_u64()), (Some(0), Some(0)));
    assert_eq!(d["store"], json!({"backend": "memory", "status": "ok"}));

    // An open standalone stream is counted while it lasts.
    let mut m = admin.metrics().await;
    for _ in 0..200 {
        if m.value("tether_sse_streams_open", &[]) == 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        m = admin.metrics().await;
    }
    assert_eq!(m.value("tether_sse_streams_open", &[]), 1.0, "the GET stream");
    drop(stream);

    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(c.close().await, StatusCode::OK);
    let d = deep().await;
    assert_eq!(d["sessions"]["active"], 0);
    assert_eq!(d["sessions"]["closed"], 1);
    assert!(d["sessions"]["avgDurationSeconds"].as_f64().expect("avg") > 0.0, "{d}");
    let mut open = admin.metrics().await.value("tether_sse_streams_open", &[]);
    for _ in 0..200 {
        if open == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        open = admin.metrics().await.value("tether_sse_streams_open", &[]);
    }
    assert_eq!(open, 0.0, "every stream ended");
    gw.shutdown().await;
}

#[tokio::test]
async fn the_log_filter_changes_at_runtime_and_a_bad_one_is_refused() {
    let log = tether::telemetry::init("warn", LogFormat::Plain);
    let (gw, admin) = admin_gateway(echo_config(), Some(log)).await;
    let (status, body) = admin.call(Method::GET, "/admin/log-level", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["filter"].is_string());

    let (status, body) =
        admin.call(Method::PUT, "/admin/log-level", Some(json!({"filter": "tether=debug,warn"}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["filter"], "tether=debug,warn");
    assert!(tracing::enabled!(target: "tether::admin", tracing::Level::DEBUG), "debug is on for tether");
    assert!(!tracing::enabled!(target: "hyper", tracing::Level::DEBUG), "and off for the rest");

    for bad in [json!({"filter": "tether=loud"}), json!({"filter": ""}), json!({"level": "debug"}), json!("debug")] {
        let (status, body) = admin.call(Method::PUT, "/admin/log-level", Some(bad.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    let (_, body) = admin.call(Method::GET, "/admin/log-level", None).await;
    assert_eq!(body["filter"], "tether=debug,warn", "a refused filter changes nothing");

    let (status, _) = admin.call(Method::PUT, "/admin/log-level", Some(json!({"filter": "warn"}))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!tracing::enabled!(target: "tether::admin", tracing::Level::DEBUG));
    gw.shutdown().await;

    // A gateway without log control says so.
    let (gw, admin) = admin_gateway(echo_config(), None).await;
    let (status, _) = admin.call(Method::PUT, "/admin/log-level", Some(json!({"filter": "debug"}))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    gw.shutdown().await;
}

/// The admin has its own thread and runtime: it answers while the data plane's runtime is
/// blocked solid. (This test's runtime is the data plane, and it is blocked on purpose.)
#[tokio::test(flavor = "current_thread")]
async fn the_admin_answers_while_the_data_plane_is_blocked() {
    let (gw, _admin) = admin_gateway(echo_config(), None).await;
    let addr = gw.admin_addr.expect("admin");
    let prober = std::thread::spawn(move || {
        ["/healthz", "/metrics"].map(|path| {
            let mut s = std::net::TcpStream::connect(addr).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(4))).expect("timeout");
            write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").expect("write");
            let mut head = [0u8; 12];
            s.read_exact(&mut head).map(|()| String::from_utf8_lossy(&head).into_owned()).unwrap_or_default()
        })
    });
    // Longer than the prober's read timeout: were the admin on this runtime, it would time out.
    std::thread::sleep(Duration::from_secs(5));
    let heads = prober.join().expect("prober");
    assert_eq!(heads, ["HTTP/1.1 200".to_owned(), "HTTP/1.1 200".to_owned()]);
    gw.shutdown().await;
}

#[test]
fn a_non_loopback_admin_without_a_token_is_refused_at_load() {
    let args = ServeArgs {
        admin_listen: Some("0.0.0.0:9090".into()),
        command: vec!["server".into()],
        store: Some("memory".into()),
        ..ServeArgs::default()
    };
    let e = Config::load(&args).expect_err("refused");
    assert!(matches!(e, ConfigError::AdminTokenRequired { .. }), "{e}");
    assert!(e.to_string().contains("admin_token"), "the error names the key: {e}");
}

/// Runs the `tether` binary with `args`; its exit code, stdout and stderr.
async fn tether(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_tether"));
    cmd.args(args).env_remove("TETHER_ADMIN_TOKEN").env_remove("TETHER_ADMIN_LISTEN").kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = within(cmd.output()).await.expect("runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_binary_refuses_an_exposed_admin_without_a_token_with_exit_64() {
    let (code, _, err) =
        tether(&["serve", "--store", "memory", "--admin-listen", "0.0.0.0:0", "--", "server"], &[]).await;
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("admin_token") && err.contains("0.0.0.0"), "{err}");
}

#[tokio::test]
async fn check_config_prints_the_effective_config_with_the_token_redacted() {
    let (code, out, err) = tether(
        &[
            "check-config",
            "--store",
            "memory",
            "--session-ttl",
            "2h",
            "--admin-token",
            "s3cret-admin-token",
            "--",
            "srv",
        ],
        &[],
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    assert!(!out.contains("s3cret-admin-token") && !err.contains("s3cret-admin-token"), "{out}");
    let effective: toml::Table = toml::from_str(&out).expect("the output is TOML");
    assert_eq!(effective["admin_token"].as_str(), Some("***"));
    assert_eq!(effective["session_ttl"].as_str(), Some("2h"));
    assert_eq!(effective["admin_listen"].as_str(), Some("127.0.0.1:9090"));
    assert_eq!(effective["request_timeout"].as_str(), Some("5m"), "defaults are filled in");
    assert_eq!(effective["command"].as_array().map(Vec::len), Some(1));

    // From the environment too.
    let (code, out, _) =
        tether(&["check-config", "--store", "memory", "--", "srv"], &[("TETHER_ADMIN_TOKEN", "env-s3cret")]).await;
    assert_eq!(code, Some(0));
    assert!(out.contains("admin_token = \"***\"") && !out.contains("env-s3cret"), "{out}");

    // Errors name the key; usage errors exit 64.
    let (code, _, err) = tether(&["check-config", "--session-ttl", "forever", "--", "srv"], &[]).await;
    assert_eq!(code, Some(64));
    assert!(err.contains("`session_ttl`"), "{err}");
    let (code, _, err) = tether(&["check-config", "--log-level", "tether=loud", "--", "srv"], &[]).await;
    assert_eq!(code, Some(64));
    assert!(err.contains("`log_level`"), "{err}");
    let (code, _, _) = tether(&["check-config", "--no-such-flag"], &[]).await;
    assert_eq!(code, Some(64));
}

#[tokio::test]
async fn without_a_configured_token_one_is_generated_into_a_private_file_and_never_logged() {
    let state =
        std::env::temp_dir().join(format!("tether-admin-state-{}-{}", std::process::id(), rand::random::<u32>()));
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["serve", "--store", "memory", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--"])
        .arg(env!("CARGO_BIN_EXE_tether-echo"))
        .env("XDG_STATE_HOME", &state)
        .env("RUST_LOG", "info")
        .env_remove("TETHER_ADMIN_TOKEN")
        .env_remove("TETHER_ADMIN_TOKEN_FILE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn tether");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut log = String::new();
    let admin = within(async {
        while let Some(line) = lines.next_line().await.expect("read") {
            log.push_str(&line);
            log.push('\n');
            if let Some(rest) = line.split("admin listening at http://").nth(1) {
                return rest.split_whitespace().next().expect("an address").to_owned();
            }
        }
        panic!("tether exited before the admin listened:\n{log}");
    })
    .await;
    // Keep reading the log, so it can be checked for the token and the pipe never fills.
    let rest = tokio::spawn(async move {
        let mut more = String::new();
        while let Ok(Some(l)) = lines.next_line().await {
            more.push_str(&l);
            more.push('\n');
        }
        more
    });

    let path = state.join("tether").join("admin.token");
    let token = std::fs::read_to_string(&path).expect("the token file").trim().to_owned();
    assert_eq!(token.len(), 64, "256 random bits");
    assert_eq!(std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777, 0o600);
    assert!(log.contains(&path.display().to_string()), "the path is logged:\n{log}");

    let http = reqwest::Client::new();
    let url = format!("http://{admin}/admin/sessions");
    let ok = within(http.get(&url).bearer_auth(&token).send()).await.expect("GET");
    assert_eq!(ok.status(), StatusCode::OK);
    let refused = within(http.get(&url).send()).await.expect("GET");
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);

    let pid = child.id().expect("running");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM).expect("signal");
    let status = within(child.wait()).await.expect("exits");
    assert!(status.success(), "a clean stop: {status:?}");
    let more = within(rest).await.expect("log reader");
    assert!(!log.contains(&token) && !more.contains(&token), "the token is never logged");
    let _ = std::fs::remove_dir_all(state);
}
