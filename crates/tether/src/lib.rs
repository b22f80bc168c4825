//! tether: the reliability layer for Model Context Protocol sessions.
//!
//! `tether serve` is a gateway whose client sessions are records it owns; the connection to the
//! upstream MCP server is a cache rebuilt by replaying `initialize` and the session state.
//! Layers, each depending only on those before it: [`tether_protocol`] (the wire) ←
//! [`session`] (records, routing, revive) ← [`upstream`] / [`downstream`] (transports) ←
//! [`admin`] (health, metrics, the session API, on its own listener) ← [`app`] (wiring). See
//! `docs/architecture.md` and `docs/operations.md`.

// One clock (`clock.rs`, `clippy.toml`): no wall clock or std `Instant` read elsewhere here.
#![warn(clippy::disallowed_methods)]

pub mod admin;
pub mod app;
pub mod auth;
pub mod bridge;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod downstream;
pub mod error;
pub mod fdlimit;
#[cfg(test)]
mod fuzz_targets;
pub mod session;
pub mod stats;
pub mod store;
pub mod telemetry;
pub mod upstream;

pub use app::{Gateway, Listeners, run};
pub use config::Config;

/// The protocol vocabulary is spelled in one place (`tether_protocol::method`).
#[cfg(test)]
mod vocabulary {
    use std::path::Path;

    use tether_protocol::method::*;

    /// Files that are tests or fixtures: they speak MCP as a peer would, in its own words.
    const EXEMPT: [&str; 4] = ["session/tests.rs", "upstream/fake.rs", "fuzz_targets.rs", "bin/tether-echo.rs"];

    fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("the source folder").flatten() {
            let path = entry.path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// A method name written as a string literal outside `tether_protocol` (tests aside) fails
    /// here: the gateway reads and writes them only through the constants.
    #[test]
    fn method_names_are_spelled_only_in_tether_protocol() {
        let mut names: Vec<String> = [
            INITIALIZE,
            PING,
            TOOLS_CALL,
            TOOLS_LIST,
            RESOURCES_READ,
            RESOURCES_TEMPLATES_LIST,
            RESOURCES_SUBSCRIBE,
            RESOURCES_UNSUBSCRIBE,
            PROMPTS_GET,
            COMPLETION_COMPLETE,
            LOGGING_SET_LEVEL,
            ELICITATION_CREATE,
            SAMPLING_CREATE_MESSAGE,
            ROOTS_LIST,
            SERVER_DISCOVER,
            SUBSCRIPTIONS_LISTEN,
            NOTIFICATION_INITIALIZED,
            NOTIFICATION_CANCELLED,
            NOTIFICATION_PROGRESS,
            NOTIFICATION_RESOURCES_UPDATED,
            NOTIFICATION_SUBSCRIPTIONS_ACKNOWLEDGED,
            NOTIFICATION_MESSAGE,
        ]
        .iter()
        .map(|m| format!("\"{m}\""))
        .collect();
        names.extend(
            LIST_KINDS.iter().flat_map(|k| [format!("\"{}\"", list_of(k)), format!("\"{}\"", list_changed(k))]),
        );
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        sources(&root, &mut files);
        assert!(files.len() > 50, "the sources were found: {}", files.len());
        let mut found = Vec::new();
        for path in files {
            let rel = path.strip_prefix(&root).expect("below src").to_string_lossy().replace('\\', "/");
            if EXEMPT.contains(&rel.as_str()) {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("a source file");
            // A file's unit tests come last, in `#[cfg(test)] mod tests`.
            let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or_default();
            for (n, line) in code.lines().enumerate() {
                found.extend(
                    names.iter().filter(|m| line.contains(m.as_str())).map(|m| format!("{rel}:{}: {m}", n + 1)),
                );
            }
        }
        assert!(found.is_empty(), "method names spelled outside tether_protocol::method:\n{}", found.join("\n"));
    }
}
