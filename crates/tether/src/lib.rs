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
