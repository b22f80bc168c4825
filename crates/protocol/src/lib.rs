//! The MCP wire, without I/O: the JSON-RPC envelope kept as raw JSON, protocol versions, error
//! codes and SSE framing. Shared by the gateway and the bridge; pure so that it can be fuzzed.
//!
//! It does not own transports, sessions or any policy.

pub mod error_code;
#[cfg(test)]
mod fuzz_targets;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod message;
pub mod sse;
pub mod version;

pub use message::{Kind, Message, ParseError};
