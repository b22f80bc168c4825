//! Connection limits on the client listener: a slow request head, a stalled body and an idle
//! keep-alive connection are closed; past the connection cap new connections wait.

mod harness;

use std::time::Duration;

use harness::{WAIT, config, echo_command, start, within};
use tether::upstream::UpstreamSpec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn gateway_config() -> tether::config::Config {
    let mut c = config(UpstreamSpec::Stdio { command: echo_command() });
    c.front.header_timeout = Duration::from_secs(1);
    c.front.body_timeout = Duration::from_secs(1);
    c
}

const PING: &str = "POST /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n\
                    accept: application/json, text/event-stream\r\ncontent-length: 40\r\n\r\n";

/// Reads until the server closes the connection; what it sent before.
async fn read_until_closed(sock: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match sock.read(&mut buf).await {
            Ok(0) | Err(_) => return String::from_utf8_lossy(&out).into_owned(),
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn a_request_head_sent_a_byte_at_a_time_is_cut_off() {
    let gw = start(gateway_config()).await;
    let mut sock = within(TcpStream::connect(gw.addr)).await.expect("connect");
    // A slowloris: a head that never ends, one byte every 100 ms for up to 20 s, far longer
    // than the 1 s head timeout (no body ever starts, so the body timeout has no part here).
    within(sock.write_all(b"POST /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\nx-pad: ")).await.expect("write");
    let slow = async {
        for _ in 0..200 {
            if sock.write_all(b"a").await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut probe = [0u8; 1];
            if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(1), sock.peek(&mut probe)).await {
                return true;
            }
        }
        false
    };
    assert!(within(slow).await, "the connection was still open after 20 s of a trickled head");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_stalled_body_gets_408_and_the_connection_closes() {
    let gw = start(gateway_config()).await;
    let mut sock = within(TcpStream::connect(gw.addr)).await.expect("connect");
    within(sock.write_all(PING.as_bytes())).await.expect("head");
    within(sock.write_all(br#"{"jsonrpc":"2.0","#)).await.expect("part of the body");
    // The rest never comes, and the socket stays open.
    let answer = within(read_until_closed(&mut sock)).await;
    let status: u16 = answer.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    assert_eq!(status, 408, "{answer}");
    assert!(answer.contains("-32600"), "{answer}");
    gw.shutdown().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let gw = start(gateway_config()).await;
    let mut sock = within(TcpStream::connect(gw.addr)).await.expect("connect");
    // A whole request (no session: 400) and its answer; then the connection idles.
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    let req = PING.replace("content-length: 40", &format!("content-length: {}", body.len())) + body;
    within(sock.write_all(req.as_bytes())).await.expect("request");
    let mut buf = [0u8; 4096];
    let n = within(sock.read(&mut buf)).await.expect("answer");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 400"), "{}", String::from_utf8_lossy(&buf[..n]));
    let rest = within(read_until_closed(&mut sock)).await;
    assert!(rest.is_empty() || rest.starts_with("HTTP/1.1 408"), "{rest}");
    gw.shutdown().await;
}

#[tokio::test]
async fn past_the_connection_cap_new_connections_wait_for_a_free_slot() {
    let mut c = config(UpstreamSpec::Stdio { command: echo_command() });
    c.front.max_connections = 2;
    let gw = start(c).await;
    let first = within(TcpStream::connect(gw.addr)).await.expect("connect");
    let _second = within(TcpStream::connect(gw.addr)).await.expect("connect");
    // Make sure both are accepted (they hold the two slots) before the third arrives.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = within(TcpStream::connect(gw.addr)).await.expect("the backlog takes it");
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    let req = PING.replace("content-length: 40", &format!("content-length: {}", body.len())) + body;
    within(third.write_all(req.as_bytes())).await.expect("request");
    let mut buf = [0u8; 4096];
    let early = tokio::time::timeout(Duration::from_millis(700), third.read(&mut buf)).await;
    assert!(early.is_err(), "a third connection was served while two held the cap");
    drop(first);
    let n = tokio::time::timeout(WAIT, third.read(&mut buf)).await.expect("served once a slot frees").expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 400"), "{}", String::from_utf8_lossy(&buf[..n]));
    gw.shutdown().await;
}

/// Starts `tether serve` under `sh -c "ulimit …; exec tether …"` and returns its pid and what it
/// logged until it served.
async fn serve_with_ulimit(ulimit: &str, extra: &str) -> (tokio::process::Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let script = format!(
        "{ulimit} && exec \"$0\" serve --listen 127.0.0.1:{port} --admin-listen 127.0.0.1:0 --store memory {extra} -- \"$1\""
    );
    // Its own state directory: the admin token generated there is refused to a second tether
    // (the tests of this binary run at once).
    let state = std::env::temp_dir().join(format!("tether-limits-{}-{port}", std::process::id()));
    let mut child = tokio::process::Command::new("sh")
        .args(["-c", &script, env!("CARGO_BIN_EXE_tether"), env!("CARGO_BIN_EXE_tether-echo")])
        .env_remove("RUST_LOG")
        .env("XDG_STATE_HOME", &state)
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let mut stderr = child.stderr.take().expect("stderr");
    let mut log = Vec::new();
    within(async {
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&log).contains("serving MCP") {
            let n = stderr.read(&mut buf).await.expect("read");
            assert!(n > 0, "tether exited: {}", String::from_utf8_lossy(&log));
            log.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    (child, String::from_utf8_lossy(&log).into_owned())
}

fn open_files_limit(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits.lines().find(|l| l.starts_with("Max open files")).expect("a nofile line");
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(3)
        .take(2)
        .map(|w| if w == "unlimited" { u64::MAX } else { w.parse().unwrap_or(0) })
        .collect();
    (v[0], v[1])
}

#[tokio::test]
async fn the_open_file_limit_is_raised_to_the_hard_one_and_a_short_one_is_warned_about() {
    let (mut child, log) = serve_with_ulimit("ulimit -Sn 256", "").await;
    let (soft, hard) = open_files_limit(child.id().expect("running"));
    // (An unlimited hard limit is capped at Linux's default fs.nr_open.)
    assert!(soft == hard || (hard == u64::MAX && soft == 1 << 20), "soft {soft}, hard {hard}: {log}");
    assert!(log.contains("raised the open-file limit"), "{log}");
    child.kill().await.expect("kill");

    // A hard limit of 300 cannot hold 100 stdio sessions (5 each, plus 64).
    let (mut child, log) = serve_with_ulimit("ulimit -n 300", "--max-sessions 100").await;
    assert!(log.contains("the open-file limit cannot hold --max-sessions"), "{log}");
    assert!(log.contains("needed=564"), "{log}");
    child.kill().await.expect("kill");
}
