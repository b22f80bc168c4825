//! `tether-echo`: a small, fast MCP server on stdio that ships with tether, so that the gateway
//! can be run, tested and benchmarked with nothing but the Rust toolchain.
//!
//! Tools: `echo` (returns its `message`), `add` (`a` + `b`), `sleep` (waits `ms`, then answers;
//! annotated idempotent), `work` (the same, unannotated: for in-flight tests), `log` (sends a `notifications/message` at the client's level, then
//! answers), `later` (answers, then logs outside any request) and `burst` (answers, then logs
//! `count` numbered messages outside any request). Resources: `echo://counter` (subscribable; `bump` updates it). Handles
//! `logging/setLevel`, `resources/subscribe`, `ping`.
//!
//! Two test hooks make a restart look like an upgrade: if the file named by
//! `TETHER_ECHO_EXTRA_TOOL_FILE` exists, `tools/list` also offers a tool named by its content;
//! if the file named by `TETHER_ECHO_VERSION_FILE` exists, `initialize` answers with the
//! protocol version it holds.
//!
//! One hook lets a test see what ran: if `TETHER_ECHO_EXEC_LOG` names a file, the server
//! appends a JSON line when it starts (`{"pid": P, "start": true}`) and one for every request
//! it executes (`{"pid": P, "id": ID, "method": M, "tool": T, "key": arguments.message}`), so a
//! test can tell whether a request ran twice, and which process served which session.

use std::io::{BufRead, BufWriter, Write};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

const VERSIONS: [&str; 4] = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];

struct Out(Mutex<BufWriter<std::io::Stdout>>);

impl Out {
    fn send(&self, v: &Value) {
        let mut w = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // A closed stdout means the gateway is gone; the read loop ends on stdin EOF.
        let _ = serde_json::to_writer(&mut *w, v);
        let _ = w.write_all(b"\n");
        let _ = w.flush();
    }
}

struct State {
    counter: u64,
    subscribed: bool,
    level: String,
}

fn main() {
    let out = Arc::new(Out(Mutex::new(BufWriter::new(std::io::stdout()))));
    let state = Arc::new(Mutex::new(State { counter: 0, subscribed: false, level: "info".into() }));
    let exec_log = ExecLog::open();
    exec_log.write(&json!({"pid": std::process::id(), "start": true}));
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        if line.trim().is_empty() {
            continue;
        }
        let Ok(msg) = serde_json::from_str::<Value>(&line) else {
            eprintln!("tether-echo: not JSON: {line}");
            continue;
        };
        let (Some(id), Some(method)) = (msg.get("id").cloned(), msg.get("method").and_then(Value::as_str)) else {
            continue; // notifications and responses need no answer
        };
        let params = msg.get("params").cloned().unwrap_or(Value::Null);
        exec_log.write(&json!({
            "pid": std::process::id(),
            "id": id,
            "method": method,
            "tool": params.get("name"),
            "key": params.get("arguments").and_then(|a| a.get("message")),
        }));
        let reply = |result: Result<Value, (i64, String)>| match result {
            Ok(r) => json!({"jsonrpc": "2.0", "id": id, "result": r}),
            Err((code, message)) => {
                json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
            }
        };
        let result = match method {
            "initialize" => {
                let asked = params.get("protocolVersion").and_then(Value::as_str).unwrap_or("");
                let forced = hook_file("TETHER_ECHO_VERSION_FILE");
                let v = match forced.as_deref() {
                    Some(f) => f,
                    None if VERSIONS.contains(&asked) => asked,
                    None => VERSIONS[3],
                };
                Ok(json!({
                    "protocolVersion": v,
                    "capabilities": {"tools": {"listChanged": true}, "logging": {}, "resources": {"subscribe": true, "listChanged": true}},
                    "serverInfo": {"name": "tether-echo", "version": env!("CARGO_PKG_VERSION")},
                    "instructions": "An echo server that ships with tether."
                }))
            }
            "ping" => Ok(json!({})),
            "tools/list" => {
                let mut list = tools();
                if let (Some(name), Some(arr)) = (hook_file("TETHER_ECHO_EXTRA_TOOL_FILE"), list.as_array_mut()) {
                    arr.push(json!({"name": name, "description": "An extra tool.", "inputSchema": {"type": "object"}}));
                }
                Ok(json!({"tools": list}))
            }
            "tools/call" => {
                let name = params.get("name").and_then(Value::as_str).unwrap_or("");
                let args = params.get("arguments").cloned().unwrap_or(json!({}));
                match name {
                    "sleep" | "work" => {
                        let ms = args.get("ms").and_then(Value::as_u64).unwrap_or(1000);
                        let out = out.clone();
                        let id = id.clone();
                        std::thread::spawn(move || {
                            std::thread::sleep(std::time::Duration::from_millis(ms));
                            out.send(&json!({"jsonrpc": "2.0", "id": id, "result": text(format!("slept {ms} ms"))}));
                        });
                        continue;
                    }
                    "later" => {
                        // Answers now; sends a log message `ms` later, outside any request.
                        let ms = args.get("ms").and_then(Value::as_u64).unwrap_or(100);
                        let data = args.get("message").cloned().unwrap_or(json!("later"));
                        let out = out.clone();
                        std::thread::spawn(move || {
                            std::thread::sleep(std::time::Duration::from_millis(ms));
                            out.send(&json!({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "logger": "tether-echo", "data": data}}));
                        });
                        Ok(text(format!("will log in {ms} ms")))
                    }
                    "burst" => {
                        // Answers now; then sends `count` log messages, `ms` apart, outside any request.
                        let count = args.get("count").and_then(Value::as_u64).unwrap_or(5);
                        let ms = args.get("ms").and_then(Value::as_u64).unwrap_or(10);
                        let out = out.clone();
                        std::thread::spawn(move || {
                            std::thread::sleep(std::time::Duration::from_millis(50));
                            for i in 1..=count {
                                out.send(&json!({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "logger": "burst", "data": i}}));
                                std::thread::sleep(std::time::Duration::from_millis(ms));
                            }
                        });
                        Ok(text(format!("bursting {count}")))
                    }
                    "log" => {
                        let level = lock(&state).level.clone();
                        let data = args.get("message").cloned().unwrap_or(json!("log"));
                        out.send(&json!({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": level, "logger": "tether-echo", "data": data}}));
                        Ok(text(format!("logged at {level}")))
                    }
                    "bump" => {
                        let mut s = lock(&state);
                        s.counter += 1;
                        if s.subscribed {
                            out.send(&json!({"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": "echo://counter"}}));
                        }
                        Ok(text(format!("counter is {}", s.counter)))
                    }
                    _ => call(name, &args),
                }
            }
            "resources/list" => {
                Ok(json!({"resources": [{"uri": "echo://counter", "name": "counter", "mimeType": "text/plain"}]}))
            }
            "resources/read" => {
                let c = lock(&state).counter;
                Ok(json!({"contents": [{"uri": "echo://counter", "mimeType": "text/plain", "text": c.to_string()}]}))
            }
            "resources/subscribe" => {
                lock(&state).subscribed = true;
                Ok(json!({}))
            }
            "resources/unsubscribe" => {
                lock(&state).subscribed = false;
                Ok(json!({}))
            }
            "logging/setLevel" => {
                lock(&state).level = params.get("level").and_then(Value::as_str).unwrap_or("info").to_owned();
                Ok(json!({}))
            }
            "prompts/list" => Ok(json!({"prompts": []})),
            other => Err((-32601, format!("Method not found: {other}"))),
        };
        out.send(&reply(result));
    }
}

/// The file named by `TETHER_ECHO_EXEC_LOG`, opened for appending: one `write` per line, so
/// the lines of several processes do not interleave.
struct ExecLog(Option<std::fs::File>);

impl ExecLog {
    fn open() -> ExecLog {
        let file = std::env::var_os("TETHER_ECHO_EXEC_LOG")
            .and_then(|path| std::fs::OpenOptions::new().create(true).append(true).open(path).ok());
        ExecLog(file)
    }

    fn write(&self, v: &Value) {
        if let Some(mut f) = self.0.as_ref() {
            let _ = f.write_all(format!("{v}\n").as_bytes());
        }
    }
}

/// The trimmed content of the file named by the environment variable `var`, if it exists.
fn hook_file(var: &str) -> Option<String> {
    let path = std::env::var_os(var)?;
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_owned())
}

fn lock(s: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    s.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn text(s: String) -> Value {
    json!({"content": [{"type": "text", "text": s}]})
}

fn call(name: &str, args: &Value) -> Result<Value, (i64, String)> {
    match name {
        "echo" => Ok(text(args.get("message").and_then(Value::as_str).unwrap_or("").to_owned())),
        "add" => {
            let a = args.get("a").and_then(Value::as_f64).unwrap_or(0.0);
            let b = args.get("b").and_then(Value::as_f64).unwrap_or(0.0);
            Ok(text(format!("{}", a + b)))
        }
        other => Err((-32602, format!("Unknown tool: {other}"))),
    }
}

fn tools() -> Value {
    let obj = |props: Value, req: &[&str]| json!({"type": "object", "properties": props, "required": req});
    json!([
        {"name": "echo", "description": "Returns its message.", "inputSchema": obj(json!({"message": {"type": "string"}}), &["message"]),
         "annotations": {"readOnlyHint": true}},
        {"name": "add", "description": "Adds two numbers.", "inputSchema": obj(json!({"a": {"type": "number"}, "b": {"type": "number"}}), &["a", "b"]),
         "annotations": {"readOnlyHint": true}},
        {"name": "sleep", "description": "Waits ms milliseconds, then answers.", "inputSchema": obj(json!({"ms": {"type": "integer"}}), &[]),
         "annotations": {"idempotentHint": true}},
        {"name": "work", "description": "Waits ms milliseconds, then answers (not idempotent).", "inputSchema": obj(json!({"ms": {"type": "integer"}}), &[])},
        {"name": "log", "description": "Sends a log message, then answers.", "inputSchema": obj(json!({"message": {"type": "string"}}), &[])},
        {"name": "later", "description": "Answers now; logs `message` after `ms` milliseconds.", "inputSchema": obj(json!({"ms": {"type": "integer"}, "message": {"type": "string"}}), &[])},
        {"name": "burst", "description": "Answers now; then logs 1..count, ms apart.", "inputSchema": obj(json!({"count": {"type": "integer"}, "ms": {"type": "integer"}}), &[])},
        {"name": "bump", "description": "Increments echo://counter (not idempotent).", "inputSchema": obj(json!({}), &[])}
    ])
}
