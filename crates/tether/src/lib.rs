//! tether: the reliability layer for Model Context Protocol sessions.
//!
//! `tether serve` is a gateway whose client sessions are records it owns; the connection to the
//! upstream MCP server is a cache rebuilt by replaying `initialize` and the session state.
//! Layers, each depending only on those before it: [`tether_protocol`] (the wire) ←
//! [`session`] (records, routing, revive) ← [`upstream`] / [`downstream`] (transports) ← [`app`]
//! (wiring). See `docs/architecture.md`.

pub mod app;
pub mod config;
pub mod downstream;
pub mod error;
pub mod session;
pub mod stats;
pub mod telemetry;
pub mod upstream;

pub use app::{Gateway, run};
pub use config::Config;
