//! The dashboard in a real browser: Debian's Chromium, driven over WebDriver (chromedriver),
//! in front of a gateway whose session is opened by the official Python MCP client.
//!
//! Logging in (a wrong token is refused), the Python client's session appearing in the live
//! list within 2 s without a reload, its page showing its clientInfo, "Refresh" (the client's
//! next call still works and the revive count rises), "Terminate" (the client's next call gets
//! 404), the log filter and a drain from the overview, and no JavaScript error in the browser's
//! console. Screenshots are kept in `target/peer-logs/dashboard/run-<pid>/`. Needs
//! `scripts/setup-peers` (Chromium, chromedriver, the Python venv).

mod harness;
mod peer_support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use fantoccini::{Client as WebDriver, ClientBuilder, Locator};
use harness::{ADMIN_TOKEN, config, echo_command, within};
use peer_support::{Proc, free_port, peers, run_logs};
use serde_json::{Value, json};
use tether::upstream::UpstreamSpec;
use tether::{Gateway, Listeners};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// How long one browser step may take (a page load, an element appearing).
const STEP: Duration = Duration::from_secs(15);
/// The bound: a new session is on the live list within 2 s, without a reload.
const APPEARS_WITHIN: Duration = Duration::from_secs(2);
/// The flags that make Chromium work headless, as root, on a closed network: without the
/// background-networking ones its own connections out are refused and slow everything down.
const CHROMIUM_FLAGS: [&str; 9] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1200,860",
];

/// Finds `program` on PATH, or panics saying how to install it.
fn on_path(program: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).map(|d| d.join(program)).find(|p| p.is_file()).unwrap_or_else(|| {
        panic!("{program} is not installed: run scripts/setup-peers (Debian's chromium and chromium-driver)")
    })
}

/// chromedriver on a free port, and a WebDriver session with a fresh Chromium profile.
async fn browser(dir: &Path) -> (Proc, WebDriver, String) {
    let port = free_port().expect("a free port");
    let log = dir.join("chromedriver.log");
    let mut cmd = Command::new(on_path("chromedriver"));
    cmd.arg(format!("--port={port}")).arg("--allowed-ips=127.0.0.1");
    let driver = Proc::spawn("chromedriver", &mut cmd, &log, &log).expect("chromedriver starts");
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let ready = tokio::time::timeout(STEP, async {
        loop {
            if let Ok(r) = http.get(format!("{url}/status")).send().await
                && r.status().is_success()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(ready.is_ok(), "chromedriver did not answer /status; see {}", log.display());
    let profile = dir.join("profile");
    let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|s| (*s).to_owned()).collect();
    args.push(format!("--user-data-dir={}", profile.display()));
    let caps = json!({
        "browserName": "chrome",
        "goog:chromeOptions": { "binary": on_path("chromium"), "args": args },
        "goog:loggingPrefs": { "browser": "ALL" },
    });
    let Value::Object(caps) = caps else { unreachable!("an object") };
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let client =
        tokio::time::timeout(Duration::from_secs(60), ClientBuilder::new(connector).capabilities(caps).connect(&url))
            .await
            .expect("Chromium starts in time")
            .expect("a WebDriver session");
    (driver, client, url)
}

/// The browser console's entries so far (chromedriver's log endpoint; it empties on read).
async fn console(client: &WebDriver, driver_url: &str) -> Vec<Value> {
    let sid = within(client.session_id()).await.expect("session id").expect("a session");
    let req = reqwest::Client::new()
        .post(format!("{driver_url}/session/{sid}/se/log"))
        .header("content-type", "application/json")
        .body(json!({"type": "browser"}).to_string());
    let r = within(req.send()).await.expect("the log endpoint");
    let text = within(r.text()).await.expect("log body");
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("log JSON ({e}): {text}"));
    v["value"].as_array().cloned().unwrap_or_default()
}

/// Waits until the text of the first element matching `css` satisfies `ok`; returns it. On a
/// timeout, the page's screenshot, source and console go to `dir` for the failure report.
async fn wait_text(c: &WebDriver, css: &str, ok: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < STEP {
        if let Ok(Ok(el)) = tokio::time::timeout(STEP, c.find(Locator::Css(css))).await
            && let Ok(Ok(t)) = tokio::time::timeout(STEP, el.text()).await
        {
            if ok(&t) {
                return t;
            }
            last = t;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dir = run_logs(Some("dashboard"));
    if let Ok(Ok(png)) = tokio::time::timeout(STEP, c.screenshot()).await {
        let _ = std::fs::write(dir.join("failure.png"), png);
    }
    if let Ok(Ok(html)) = tokio::time::timeout(STEP, c.source()).await {
        let _ = std::fs::write(dir.join("failure.html"), html);
    }
    panic!("{css}: never as expected; last text: {last:?} (see failure.png and failure.html in {})", dir.display());
}

async fn click(c: &WebDriver, css: &str) {
    let el =
        within(c.wait().at_most(STEP).for_element(Locator::Css(css))).await.unwrap_or_else(|e| panic!("{css}: {e}"));
    within(el.click()).await.unwrap_or_else(|e| panic!("click {css}: {e}"));
}

/// Clicks an action's button, checks the confirmation dialog asks `question`, confirms, and
/// returns what the page says of the outcome.
async fn confirmed(c: &WebDriver, button: &str, question: &str) -> String {
    // The flash of an earlier action on the same page may still show "done": wait for a new one.
    let before = match tokio::time::timeout(STEP, c.find(Locator::Css("#flash"))).await {
        Ok(Ok(el)) => tokio::time::timeout(STEP, el.text()).await.ok().and_then(Result::ok).unwrap_or_default(),
        _ => String::new(),
    };
    click(c, button).await;
    wait_text(c, "dialog#confirm[open] #confirm-text", |t| t.contains(question)).await;
    click(c, "dialog#confirm[open] #confirm-ok").await;
    wait_text(c, "#flash", |t| t != before && (t.contains("done") || t.contains("failed"))).await
}

async fn screenshot(c: &WebDriver, dir: &Path, name: &str) {
    let png = within(c.screenshot()).await.expect("a screenshot");
    std::fs::write(dir.join(name), png).expect("screenshot written");
}

/// The Python client's one session, driven line by line (`tests/peers/py_session.py`).
struct PySession {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl PySession {
    async fn start(python: &Path, script: &Path, url: &str, dir: &Path) -> PySession {
        let err = std::fs::File::create(dir.join("py_session.stderr")).expect("log file");
        let mut child = Command::new(python)
            .arg(script)
            .args(["--url", url, "--name", "dashboard-e2e-client", "--version", "4.5.6"])
            .env("NO_PROXY", "127.0.0.1,localhost")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .expect("the Python driver starts");
        let stdin = child.stdin.take().expect("stdin");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        PySession { child, stdin, lines }
    }

    async fn next(&mut self) -> Value {
        let line = tokio::time::timeout(Duration::from_secs(40), self.lines.next_line())
            .await
            .expect("the Python driver answers in time")
            .expect("read")
            .expect("the Python driver is still running");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }

    async fn call(&mut self, message: &str) -> Value {
        within(self.stdin.write_all(format!("call {message}\n").as_bytes())).await.expect("write");
        within(self.stdin.flush()).await.expect("flush");
        self.next().await
    }

    async fn quit(mut self) {
        let _ = within(self.stdin.write_all(b"quit\n")).await;
        let _ = tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_watches_refreshes_and_terminates_a_python_clients_session() {
    let dir = run_logs(Some("dashboard"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("log dir");
    let peers = peers(dir.clone(), &[]);
    let script = peers.workspace.join("tests/peers/py_session.py");

    let mcp = within(tokio::net::TcpListener::bind("127.0.0.1:0")).await.expect("bind");
    let admin = within(tokio::net::TcpListener::bind("127.0.0.1:0")).await.expect("bind");
    let cfg = config(UpstreamSpec::Stdio { command: echo_command() });
    // This test binary has the process's logging to itself: the log filter can be changed.
    let log = tether::telemetry::init("warn", tether::config::LogFormat::Plain);
    let gw = within(Gateway::start_with(cfg, Listeners { mcp, admin: Some(admin) }, Some(log.clone())))
        .await
        .expect("starts");
    let base = format!("http://{}", gw.admin_addr.expect("admin"));
    let (mut chromedriver, c, driver_url) = browser(&dir).await;

    // Log in: a wrong token is refused, the right one lands on the overview.
    within(c.goto(&format!("{base}/"))).await.expect("open the dashboard");
    // A deliberate uncaught error: the console check below must see it, or it could not fail.
    let probe = "setTimeout(function () { throw new Error('tether-console-probe'); }, 0); return null;";
    within(c.execute(probe, vec![])).await.expect("the probe runs");
    let token = within(c.wait().at_most(STEP).for_element(Locator::Id("token"))).await.expect("the login form");
    within(token.send_keys("wrong-token")).await.expect("type");
    click(&c, "#login").await;
    wait_text(&c, "#login-error", |t| t.contains("not the admin token")).await;
    assert!(within(c.current_url()).await.expect("url").path().ends_with("/ui/login"));
    let token = within(c.wait().at_most(STEP).for_element(Locator::Id("token"))).await.expect("the login form");
    within(token.send_keys(ADMIN_TOKEN)).await.expect("type");
    click(&c, "#login").await;
    wait_text(&c, "h1", |t| t == "Overview").await;
    wait_text(&c, "#replicas", |t| t.contains("single replica")).await;

    // The sessions page is open when the Python client connects: its row appears, live.
    within(c.goto(&format!("{base}/ui/sessions"))).await.expect("sessions page");
    wait_text(&c, "#live.on", |_| true).await; // the event stream is open
    wait_text(&c, "#sessions tbody", |t| t.contains("no session")).await;
    let mut py = PySession::start(&peers.python, &script, &format!("http://{}/mcp", gw.addr), &dir).await;
    let ready = py.next().await;
    let opened = Instant::now();
    assert_eq!(ready["event"], "ready", "{ready}");
    assert_eq!(ready["ok"], true, "the first call works: {ready}");
    let row = wait_text(&c, "#sessions tbody", |t| t.contains("dashboard-e2e-client")).await;
    let took = opened.elapsed();
    assert!(took <= APPEARS_WITHIN, "the session appeared after {took:?}, not within {APPEARS_WITHIN:?}");
    eprintln!("dashboard: the new session was on the live list {} ms after its first call", took.as_millis());
    assert!(row.contains("4.5.6") && row.contains("streamable-http"), "{row}");
    let id = gw.manager.live().first().expect("the session").id().to_owned();
    screenshot(&c, &dir, "sessions.png").await;

    // Its page shows its clientInfo.
    click(&c, &format!("tr[data-session=\"{id}\"] a.session-link")).await;
    let info = wait_text(&c, "#client-info", |t| t.contains("dashboard-e2e-client")).await;
    assert!(info.contains("4.5.6"), "{info}");
    let pid_before = wait_text(&c, "#pid", |t| !t.is_empty()).await;
    assert_eq!(wait_text(&c, "#revives", |_| true).await, "0");

    // Refresh, confirmed in the dialog: a new child, one more revive, and the client's next
    // call still works.
    let flash = confirmed(&c, "#refresh", "Refresh session").await;
    assert!(flash.contains("generation: 2") && flash.contains("revives: 1"), "{flash}");
    wait_text(&c, "#revives", |t| t == "1").await;
    let pid_after = wait_text(&c, "#pid", |t| t != pid_before).await;
    assert_ne!(pid_after, pid_before);
    let after = py.call("after-refresh").await;
    assert_eq!(after["ok"], true, "the call after the refresh works: {after}");
    assert_eq!(after["text"], "after-refresh");
    screenshot(&c, &dir, "session.png").await;

    // The overview shows the revive, and some traffic on the plots (kept as the README's
    // screenshot): a second client calls for a few seconds.
    within(c.goto(&format!("{base}/"))).await.expect("overview");
    wait_text(&c, "#revives-total", |t| t == "1").await;
    wait_text(&c, "#sessions-active", |t| t == "1").await;
    let mut load = harness::Client::for_base(format!("http://{}", gw.addr), harness::Front::Streamable);
    load.connect().await;
    for i in 0..120 {
        let call = json!({"name": "echo", "arguments": {"message": format!("load {i}")}});
        assert!(load.request("tools/call", call).await.answer["result"].is_object());
        tokio::time::sleep(Duration::from_millis(30 + (i % 40) as u64)).await;
    }
    wait_text(&c, "#sessions-active", |t| t == "2").await;
    tokio::time::sleep(Duration::from_secs(2)).await; // the plots catch up
    screenshot(&c, &dir, "overview.png").await;
    load.close().await;

    within(c.goto(&format!("{base}/ui/upstreams"))).await.expect("upstreams");
    wait_text(&c, "#upstreams tbody", |t| t.contains(&pid_after)).await;
    screenshot(&c, &dir, "upstreams.png").await;

    // Terminate, confirmed: the client's next call gets 404. This is the sixth page with a live
    // stream: had the pages left behind kept theirs (the back/forward cache keeps a page, and
    // its EventSource, unless the script closes it on pagehide), the browser's six connections
    // per host would be taken and this action would never be sent.
    within(c.goto(&format!("{base}/ui/sessions/{id}"))).await.expect("session page");
    let flash = confirmed(&c, "#terminate", "Terminate session").await;
    assert!(flash.contains("terminated: true"), "{flash}");
    wait_text(&c, "#session-kv", |t| t.contains("closed (terminated)")).await;
    let after = py.call("after-terminate").await;
    assert_eq!(after["ok"], false, "{after}");
    assert!(after["statuses"].as_array().is_some_and(|s| s.contains(&json!(404))), "the next call got 404: {after}");

    // The log filter, then a drain, confirmed, from the overview.
    within(c.goto(&format!("{base}/"))).await.expect("overview");
    let input = within(c.wait().at_most(STEP).for_element(Locator::Id("log-filter"))).await.expect("the filter");
    within(input.clear()).await.expect("clear");
    within(input.send_keys("warn,tether::admin=info")).await.expect("type");
    let flash = confirmed(&c, "#set-log-level", "log filter").await;
    assert!(flash.contains("filter: warn,tether::admin=info"), "{flash}");
    assert_eq!(log.filter(), "warn,tether::admin=info");
    let flash = confirmed(&c, "#drain", "Drain this replica").await;
    assert!(flash.contains("draining: true"), "{flash}");
    assert!(gw.manager.is_draining());
    wait_text(&c, "#cards", |t| t.contains("draining")).await;

    // No JavaScript error, no blocked script or style, on any page; the one expected failure is
    // the wrong token's 401.
    let entries = console(&c, &driver_url).await;
    std::fs::write(dir.join("console.json"), serde_json::to_vec_pretty(&entries).expect("json")).expect("write");
    let is_probe = |e: &Value| e["message"].as_str().is_some_and(|m| m.contains("tether-console-probe"));
    assert!(
        entries.iter().any(|e| e["source"] == "javascript" && is_probe(e)),
        "the probe error was not seen: {entries:#?}"
    );
    let bad: Vec<&Value> = entries
        .iter()
        .filter(|e| !is_probe(e))
        .filter(|e| e["level"] == "SEVERE" || e["source"] == "javascript" || e["source"] == "security")
        .filter(|e| !(e["source"] == "network" && e["message"].as_str().is_some_and(|m| m.contains("401"))))
        .collect();
    assert!(bad.is_empty(), "browser console errors: {bad:#?}");

    py.quit().await;
    let _ = within(c.close()).await;
    let _ = chromedriver.terminate(Duration::from_secs(10)).await;
    within(gw.shutdown()).await;
    let _ = std::fs::remove_dir_all(dir.join("profile"));
    eprintln!("dashboard: screenshots in {}", dir.display());
}
