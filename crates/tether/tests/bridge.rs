//! `tether bridge` in process: a client on a duplex pipe, a tether gateway as the remote. The
//! same with the official SDK clients and server-everything is in `bridge_peers.rs`.

mod harness;

use std::time::Duration;

use harness::{config, echo_command, start, within};
use serde_json::{Value, json};
use tether::Gateway;
use tether::bridge::{BridgeConfig, ProtocolChoice, TransportChoice};
use tether::upstream::UpstreamSpec;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream, Lines};

struct Pipe {
    to_bridge: DuplexStream,
    from_bridge: Lines<BufReader<DuplexStream>>,
    bridge: tokio::task::JoinHandle<anyhow::Result<()>>,
    next_id: u64,
}

fn bridge_config(url: String, transport: TransportChoice) -> BridgeConfig {
    BridgeConfig {
        url,
        headers: Default::default(),
        transport,
        protocol: ProtocolChoice::Auto,
        connect_timeout: Duration::from_secs(10),
        retry_attempts: None,
        retry_delay: Duration::from_millis(50),
        timeout: Duration::from_secs(15),
    }
}

impl Pipe {
    fn start(cfg: BridgeConfig) -> Pipe {
        let (client_in, bridge_in) = tokio::io::duplex(1 << 20);
        let (bridge_out, client_out) = tokio::io::duplex(1 << 20);
        let bridge = tokio::spawn(tether::bridge::run(cfg, bridge_in, bridge_out));
        Pipe { to_bridge: client_in, from_bridge: BufReader::new(client_out).lines(), bridge, next_id: 1 }
    }

    async fn send(&mut self, v: &Value) {
        let mut line = v.to_string().into_bytes();
        line.push(b'\n');
        within(self.to_bridge.write_all(&line)).await.expect("write");
    }

    async fn recv(&mut self, id: u64) -> (Value, Vec<Value>) {
        let mut other = Vec::new();
        loop {
            let line = within(self.from_bridge.next_line()).await.expect("read").expect("the pipe stays open");
            let v: Value = serde_json::from_str(&line).expect("JSON line");
            if v["id"] == json!(id) && v.get("method").is_none() {
                return (v, other);
            }
            other.push(v);
        }
    }

    async fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})).await;
        self.recv(id).await.0
    }

    async fn initialize(&mut self) -> Value {
        let r = self.request("initialize", harness::init_params()).await;
        self.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).await;
        r
    }
}

fn text_of(answer: &Value) -> String {
    answer["result"]["content"][0]["text"].as_str().unwrap_or_else(|| panic!("no text in {answer}")).to_owned()
}

#[tokio::test]
async fn the_bridge_heals_a_remote_restart_for_both_transports() {
    for (path, transport) in
        [("/mcp", TransportChoice::Auto), ("/sse", TransportChoice::Auto), ("/mcp", TransportChoice::StreamableHttp)]
    {
        let remote = start(config(UpstreamSpec::Stdio { command: echo_command() })).await;
        let mut p = Pipe::start(bridge_config(format!("http://{}{path}", remote.addr), transport));
        let init = p.initialize().await;
        assert_eq!(init["result"]["serverInfo"]["name"], "tether-echo", "{path}: {init}");
        assert_eq!(p.request("logging/setLevel", json!({"level": "debug"})).await["result"], json!({}));
        assert_eq!(
            text_of(&p.request("tools/call", json!({"name": "echo", "arguments": {"message": "a"}})).await),
            "a"
        );

        // The remote restarts and forgets every session (memory store).
        let remote = harness::restart(remote, config(UpstreamSpec::Stdio { command: echo_command() })).await;
        assert_eq!(
            text_of(&p.request("tools/call", json!({"name": "echo", "arguments": {"message": "b"}})).await),
            "b"
        );
        let logged = p.request("tools/call", json!({"name": "log", "arguments": {}})).await;
        assert_eq!(text_of(&logged), "logged at debug", "{path}: the level was replayed");
        drop(p.to_bridge);
        within(p.bridge).await.expect("join").expect("the bridge ends cleanly when stdin closes");
        remote.shutdown().await;
    }
}

#[tokio::test]
async fn a_remote_that_is_down_at_first_is_waited_for_up_to_the_connect_timeout() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let mut p = Pipe::start(bridge_config(format!("http://127.0.0.1:{port}/mcp"), TransportChoice::Auto));
    let id = 1;
    p.send(&json!({"jsonrpc": "2.0", "id": id, "method": "initialize", "params": harness::init_params()})).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let listener = within(tokio::net::TcpListener::bind(("127.0.0.1", port))).await.expect("bind");
    let remote =
        within(Gateway::start(config(UpstreamSpec::Stdio { command: echo_command() }), listener)).await.expect("start");
    let (init, _) = p.recv(id).await;
    assert_eq!(init["result"]["serverInfo"]["name"], "tether-echo", "{init}");
    remote.shutdown().await;
}

#[tokio::test]
async fn before_initialize_requests_are_refused_but_ping_is_answered() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let mut p = Pipe::start(bridge_config(format!("http://127.0.0.1:{port}/mcp"), TransportChoice::Auto));
    assert_eq!(p.request("ping", json!({})).await["result"], json!({}));
    let r = p.request("tools/list", json!({})).await;
    assert_eq!(r["error"]["code"], -32600, "{r}");
}

#[tokio::test]
async fn after_the_connect_timeout_the_client_gets_a_clear_error_and_keeps_its_pipe() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let mut cfg = bridge_config(format!("http://127.0.0.1:{port}/mcp"), TransportChoice::StreamableHttp);
    cfg.connect_timeout = Duration::from_millis(400);
    let mut p = Pipe::start(cfg);
    let r = p.request("initialize", harness::init_params()).await;
    assert_eq!(r["error"]["code"], -32010, "{r}");
    assert_eq!(r["error"]["data"]["class"], "transport_error");
    // Bad input gets an error too; the pipe stays open.
    p.to_bridge.write_all(b"{not json\n").await.expect("write");
    let line = within(p.from_bridge.next_line()).await.expect("read").expect("open");
    let v: Value = serde_json::from_str(&line).expect("json");
    assert_eq!(v["error"]["code"], -32700);
    let r = p.request("tools/list", json!({})).await;
    assert_eq!(r["error"]["data"]["class"], "transport_error", "the remote is still away: {r}");
    assert!(!p.bridge.is_finished());
}

#[tokio::test]
async fn a_repeated_envelope_member_on_stdin_gets_invalid_request() {
    let remote = start(config(UpstreamSpec::Stdio { command: echo_command() })).await;
    let mut p = Pipe::start(bridge_config(format!("http://{}/mcp", remote.addr), TransportChoice::Auto));
    p.initialize().await;
    p.to_bridge.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":41,\"method\":\"ping\",\"id\":42}\n").await.expect("write");
    let line = within(p.from_bridge.next_line()).await.expect("read").expect("open");
    let v: Value = serde_json::from_str(&line).expect("json");
    assert_eq!(v["error"]["code"], -32600, "{v}");
    assert_eq!(v["id"], Value::Null, "{v}");
    assert_eq!(text_of(&p.request("tools/call", json!({"name": "echo", "arguments": {"message": "a"}})).await), "a");
    remote.shutdown().await;
}

#[tokio::test]
async fn a_line_over_the_limit_or_not_utf8_on_stdin_gets_an_error_and_the_bridge_reads_on() {
    let remote = start(config(UpstreamSpec::Stdio { command: echo_command() })).await;
    let mut p = Pipe::start(bridge_config(format!("http://{}/mcp", remote.addr), TransportChoice::Auto));
    p.initialize().await;
    // 17 MiB without a newline, written while the bridge reads (the pipe holds 1 MiB).
    let writer = async {
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..17 {
            p.to_bridge.write_all(&chunk).await.expect("write");
        }
        p.to_bridge.write_all(b"\n\xff\xfe\n").await.expect("write");
    };
    within(writer).await;
    for code in [-32600, -32700] {
        let line = within(p.from_bridge.next_line()).await.expect("read").expect("open");
        let v: Value = serde_json::from_str(&line).expect("json");
        assert_eq!(v["error"]["code"], code, "{v}");
    }
    assert_eq!(text_of(&p.request("tools/call", json!({"name": "echo", "arguments": {"message": "on"}})).await), "on");
    remote.shutdown().await;
}
