//! The MCP wire, without I/O: the JSON-RPC envelope kept as raw JSON, protocol versions, error
//! codes, method names, the params the gateway reads, SSE framing and event ids. Shared by the gateway and the bridge; pure so that it can be fuzzed.
//!
//! It does not own transports, sessions or any policy.

pub mod error_code;
pub mod event_id;
#[cfg(test)]
mod fuzz_targets;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod message;
pub mod method;
pub mod modern;
pub mod params;
pub mod session_error;
pub mod sse;
pub mod version;

pub use message::{Kind, Message, ParseError};
