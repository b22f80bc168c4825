//! Authentication in a real `tether serve` process: no token and no JWT in its logs (debug
//! level) or in its SQLite store file, the admin API shows principals only, SIGHUP re-reads the
//! token file, `check-config` redacts every credential (flags, `TETHER_*` variables and config
//! keys alike); and the official Python and TypeScript SDK clients work through a tether that
//! requires a bearer token, in front of the real server-everything.

mod auth_support;
mod harness;
mod peer_support;

use std::path::Path;
use std::time::Duration;

use auth_support::*;
use harness::{Client, Front, within};
use peer_support::*;
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use serde_json::json;
use tether::auth::Principal;
use tokio::process::Command;

const ALICE: &str = "tok-alice-Z7q9XbW3";
const BOB: &str = "tok-bob-K2m8RtY6";
const ADMIN: &str = "admin-secret-P4v1";

fn bearer_http(token: &str) -> reqwest::Client {
    let mut h = HeaderMap::new();
    h.insert(AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {token}")).expect("header"));
    reqwest::Client::builder().default_headers(h).build().expect("client")
}

/// Waits until `log` has a line containing `marker` (after `skip` bytes); returns that line.
async fn wait_for_line(log: &Path, marker: &str, skip: usize) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.get(skip..).unwrap_or("").lines().find(|l| l.contains(marker)) {
            return line.to_owned();
        }
        assert!(tokio::time::Instant::now() < deadline, "no {marker:?} in {}:\n{text}", log.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `http://…` address a log line announces after `prefix`.
fn addr_after(line: &str, prefix: &str) -> String {
    let rest = &line[line.find(prefix).expect("prefix") + prefix.len()..];
    rest.split(|c: char| c == '/' || c.is_whitespace() || c == '"').next().expect("addr").to_owned()
}

#[tokio::test]
async fn no_credential_in_logs_or_store_and_sighup_reloads_the_token_file() {
    let dir = temp_dir("auth-process");
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, format!("alice:{ALICE}\n")).expect("tokens");
    let key = TestKey::ec("ec-1");
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, jwks_json(&[&key])).expect("jwks");
    let log = dir.join("tether.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tether"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--log-level", "debug"])
        .arg("--store")
        .arg(format!("sqlite://{}", dir.join("sessions.db").display()))
        .arg("--auth-token-file")
        .arg(&tokens)
        .arg("--auth-jwks")
        .arg(&jwks)
        .args(["--auth-issuer", ISSUER, "--auth-audience", AUDIENCE])
        .args(["--", env!("CARGO_BIN_EXE_tether-echo")])
        .env("TETHER_ADMIN_TOKEN", ADMIN)
        .env("XDG_STATE_HOME", dir.join("state"))
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .env_remove("TETHER_CONFIG");
    let mut tether = Proc::spawn("tether", &mut cmd, &log, &log).expect("spawn tether");
    let serving = wait_for_line(&log, "tether serving MCP at http://", 0).await;
    let base = format!("http://{}", addr_after(&serving, "tether serving MCP at http://"));
    let admin = format!(
        "http://{}",
        addr_after(&wait_for_line(&log, "admin listening at http://", 0).await, "admin listening at http://")
    );

    // A session by token, one by JWT, and refusals of each kind.
    let mut alice = Client::for_base(base.clone(), Front::Streamable);
    alice.http = bearer_http(ALICE);
    alice.connect().await;
    let r = alice.request("tools/call", json!({"name": "echo", "arguments": {"message": "hello"}})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.answer);
    let jwt = key.sign(&claims("user-7"));
    let mut carol = Client::for_base(base.clone(), Front::Streamable);
    carol.http = bearer_http(&jwt);
    carol.connect().await;
    let mut expired_claims = claims("user-7");
    expired_claims["exp"] = json!(now() - 3600);
    let expired = key.sign(&expired_claims);
    let forged = tampered(&jwt);
    let http = reqwest::Client::new();
    for bad in [BOB, expired.as_str(), forged.as_str(), "tok-alice-Z7q9XbW4"] {
        let resp = within(
            http.post(format!("{base}/mcp"))
                .header(AUTHORIZATION, format!("Bearer {bad}"))
                .header("content-type", "application/json")
                .header("accept", "application/json")
                .body(
                    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": harness::init_params()})
                        .to_string(),
                )
                .send(),
        )
        .await
        .expect("POST");
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    }
    // alice's session used by carol: refused (and logged with carol's principal, not her JWT).
    let mut intruder = alice.same_session();
    intruder.http = bearer_http(&jwt);
    let r = intruder.request("tools/call", json!({"name": "echo", "arguments": {"message": "x"}})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // SIGHUP: bob's new token is read at once.
    let before = std::fs::read_to_string(&log).expect("log").len();
    std::fs::write(&tokens, format!("alice:{ALICE}\nbob:{BOB}\n")).expect("tokens");
    signal(tether.child.id().expect("pid") as i32, nix::sys::signal::Signal::SIGHUP);
    wait_for_line(&log, "sighup", before).await;
    let mut bob = Client::for_base(base.clone(), Front::Streamable);
    bob.http = bearer_http(BOB);
    bob.connect().await;

    // The admin API shows principals' fingerprints, never credentials.
    let listing =
        within(async { http.get(format!("{admin}/admin/sessions")).bearer_auth(ADMIN).send().await?.text().await })
            .await
            .expect("admin list");
    let listing: serde_json::Value = serde_json::from_str(&listing).expect("JSON");
    let owners: Vec<(String, String)> = listing["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .map(|s| {
            (s["principal"].as_str().unwrap_or("").to_owned(), s["principalName"].as_str().unwrap_or("").to_owned())
        })
        .collect();
    let want: Vec<(String, String)> =
        [Principal::token("alice"), Principal::jwt(ISSUER, "user-7"), Principal::token("bob")]
            .iter()
            .map(|p| (p.key().to_owned(), p.name().to_owned()))
            .collect();
    assert_eq!(owners, want, "{listing}");

    tether.terminate(Duration::from_secs(20)).await.expect("tether stops on SIGTERM");
    let logs = std::fs::read_to_string(&log).expect("log");
    assert!(
        logs.contains("principal=alice") || logs.contains("\"principal\":\"alice\""),
        "principals are logged:\n{logs}"
    );
    let secrets = [ALICE, BOB, ADMIN, jwt.as_str(), expired.as_str(), forged.as_str(), "tok-alice-Z7q9XbW4"];
    let signature = jwt.rsplit('.').next().expect("signature");
    for s in secrets.iter().chain([&signature]) {
        assert!(!logs.contains(s), "a credential is in the log: {s}\n{logs}");
    }
    // The store file (and its WAL) holds fingerprints only.
    let mut stored = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("dir").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("sessions.db") {
            stored.extend(std::fs::read(entry.path()).expect("read store"));
        }
    }
    assert!(!stored.is_empty());
    let stored = String::from_utf8_lossy(&stored);
    for s in secrets.iter().chain([&signature]) {
        assert!(!stored.contains(s), "a credential is in the store: {s}");
    }
    let db = rusqlite::Connection::open(dir.join("sessions.db")).expect("open store");
    let principals: Vec<Option<String>> = db
        .prepare("SELECT principal FROM sessions ORDER BY created_at")
        .expect("query")
        .query_map([], |r| r.get(0))
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("principals");
    let want: Vec<Option<String>> = ["alice", "user-7", "bob"]
        .iter()
        .map(|n| Some(if *n == "user-7" { Principal::jwt(ISSUER, n) } else { Principal::token(n) }.key().to_owned()))
        .collect();
    assert_eq!(principals, want);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn check_config_redacts_credentials_from_flags_environment_and_file() {
    let dir = temp_dir("auth-check-config");
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, format!("alice:{ALICE}\n")).expect("tokens");
    let file = dir.join("tether.toml");
    std::fs::write(
        &file,
        "upstream = \"http://127.0.0.1:1/mcp\"\nauth_issuer = \"https://idp.tether.test\"\nauth_audience = [\"tether-test\"]\n\
         forward_auth = true\n",
    )
    .expect("config");
    let out = within(
        Command::new(env!("CARGO_BIN_EXE_tether"))
            .arg("check-config")
            .arg("--config")
            .arg(&file)
            .args(["--upstream-header", "Authorization: Bearer ${UP_TOKEN}", "--upstream-header", "X-Team: blue"])
            .env("UP_TOKEN", "up-secret-9QwE")
            .env("TETHER_AUTH_TOKEN_FILE", &tokens)
            .env("TETHER_AUTH_JWKS", "https://svc:pw-8TyU@idp.tether.test/jwks.json")
            .env("TETHER_AUTH_RESOURCE", "https://mcp.tether.test/mcp")
            .env_remove("TETHER_CONFIG")
            .output(),
    )
    .await
    .expect("check-config runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    for secret in ["up-secret-9QwE", "pw-8TyU", ALICE, "blue"] {
        assert!(!text.contains(secret), "{secret} in:\n{text}");
    }
    for shown in [
        "authorization: ***",
        "x-team: ***",
        "auth_issuer = \"https://idp.tether.test\"",
        "auth_resource = \"https://mcp.tether.test/mcp\"",
        "forward_auth = true",
        "svc:***@idp.tether.test",
    ] {
        assert!(text.contains(shown), "{shown} missing from:\n{text}");
    }
    assert!(text.contains(&format!("auth_token_file = \"{}\"", tokens.display())), "{text}");

    // A JWKS without an audience is refused, naming the key, with the usage exit status.
    let out = within(
        Command::new(env!("CARGO_BIN_EXE_tether"))
            .args([
                "check-config",
                "--upstream",
                "http://127.0.0.1:1/mcp",
                "--auth-jwks",
                "https://idp.tether.test/jwks",
            ])
            .args(["--auth-issuer", "https://idp.tether.test"])
            .env_remove("TETHER_CONFIG")
            .output(),
    )
    .await
    .expect("check-config runs");
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`auth_audience`"));
    let _ = std::fs::remove_dir_all(dir);
}

/// The official clients through a tether that requires a bearer token (server-everything over
/// stdio behind it). Each driver runs all its checks and must pass them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_sdk_clients_through_tether_with_a_bearer_token() {
    let peers = peers(run_logs(Some("auth")), &[]);
    let token = "tok-sdk-N5c2HwQ8";
    // (label, program, script, endpoint, transport, Python mode)
    type Run<'a> = (&'a str, &'a Path, &'a Path, &'a str, &'a str, Option<&'a str>);
    let runs: [Run; 4] = [
        ("py-streamable-http", &peers.python, &peers.py_client, "mcp", "streamable-http", Some("legacy")),
        ("py-sse", &peers.python, &peers.py_client, "sse", "sse", Some("legacy")),
        ("ts-streamable-http", &peers.node, &peers.ts_client, "mcp", "streamable-http", None),
        ("ts-sse", &peers.node, &peers.ts_client, "sse", "sse", None),
    ];
    let mut failures = Vec::new();
    for (name, program, script, path, transport, mode) in runs {
        let _slot = slots().acquire().await.expect("semaphore");
        let dir = peers.logs.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("log dir");
        let tokens = dir.join("tokens");
        std::fs::write(&tokens, format!("sdk-client:{token}\n")).expect("tokens");
        let args = [
            "--auth-token-file".to_owned(),
            path_arg(&tokens),
            "--store".into(),
            "memory".into(),
            "--".into(),
            path_arg(&peers.node),
            path_arg(&peers.everything),
            "stdio".into(),
        ];
        let log = dir.join("tether.log");
        let started = start_tether(&peers, &args, &dir).await;
        let (mut tether, port) = match started {
            Ok(t) => t,
            Err(e) => {
                failures.push(format!("{name}: tether did not start: {e}"));
                continue;
            }
        };
        let mut cmd = Command::new(program);
        cmd.arg(script)
            .args(["--url", &format!("http://127.0.0.1:{port}/{path}"), "--transport", transport])
            .args(["--check-timeout", "30"])
            .env("MCP_BEARER_TOKEN", token)
            .env("PYTHONUNBUFFERED", "1")
            .current_dir(&peers.workspace);
        if let Some(m) = mode {
            cmd.args(["--mode", m]);
        }
        let out = dir.join("driver.out");
        let mut driver = Proc::spawn("driver", &mut cmd, &out, &dir.join("driver.err")).expect("spawn driver");
        let status = tokio::time::timeout(Duration::from_secs(300), driver.child.wait()).await;
        let output = std::fs::read_to_string(&out).unwrap_or_default();
        let summary = output.lines().rev().map(str::trim).find(|l| !l.is_empty()).unwrap_or("").to_owned();
        let passed =
            matches!(status, Ok(Ok(s)) if s.success()) && matches!(parse_summary(&summary), Some((n, 0)) if n > 0);
        let tether_log = std::fs::read_to_string(&log).unwrap_or_default();
        let authenticated = tether_log.contains("session bound to its principal");
        if passed && authenticated {
            eprintln!("auth peers: ok [{name}] {summary}");
        } else {
            let files = [dir.join("driver.err"), out.clone(), log.clone()];
            failures.push(report(
                name,
                &dir,
                &format!("summary {summary:?}, authenticated: {authenticated}"),
                &files,
                false,
            ));
        }
        if let Err(e) = tether.terminate(SHUTDOWN_TIMEOUT).await {
            failures.push(format!("{name}: {e}"));
        }
        assert!(!tether_log.contains(token), "{name}: the token is in tether's log");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
