//! Logging: a `tracing` subscriber writing plain or JSON lines to stderr (stdout may carry the
//! protocol), filtered by `RUST_LOG` when set, else by the configured level. The filter sits
//! behind a reload handle ([`LogControl`]) so an operator can change it at runtime.

use std::sync::{Arc, Mutex, OnceLock};

use tracing_subscriber::fmt as fmt_builder;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, fmt, reload};

/// Log output format. (Defined here, not in `config`, so that telemetry depends on nothing
/// else in the crate: config, admin and telemetry import in one direction.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line.
    Json,
}

/// Why a new log filter was not applied.
#[derive(Debug, thiserror::Error)]
pub enum LogFilterError {
    /// The filter does not parse (`RUST_LOG` syntax).
    #[error("invalid log filter {filter:?}: {reason}")]
    Invalid {
        /// What was given.
        filter: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The subscriber is not the one tether installed (another one was set first).
    #[error("the log filter cannot be changed in this process")]
    Unavailable,
}

/// Changes the live log filter.
#[derive(Clone)]
pub struct LogControl {
    handle: reload::Handle<EnvFilter, Registry>,
    current: Arc<Mutex<String>>,
}

impl std::fmt::Debug for LogControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogControl").field("filter", &self.filter()).finish()
    }
}

impl LogControl {
    /// The filter in force.
    pub fn filter(&self) -> String {
        self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Replaces the filter, for every event from now on.
    pub fn set(&self, filter: &str) -> Result<(), LogFilterError> {
        let new = parse_filter(filter)?;
        self.handle.reload(new).map_err(|_| LogFilterError::Unavailable)?;
        *self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = filter.to_owned();
        Ok(())
    }
}

/// Parses a filter in `RUST_LOG` syntax (`info`, `tether=debug,warn`), strictly: a malformed
/// directive is an error, not silently skipped.
pub fn parse_filter(filter: &str) -> Result<EnvFilter, LogFilterError> {
    let invalid = |reason: String| LogFilterError::Invalid { filter: filter.to_owned(), reason };
    if filter.trim().is_empty() {
        return Err(invalid("empty".into()));
    }
    EnvFilter::builder().parse(filter).map_err(|e| invalid(e.to_string()))
}

static CONTROL: OnceLock<LogControl> = OnceLock::new();

/// Installs the global subscriber and returns the handle that changes its filter. Calling it
/// again returns the first handle and changes nothing.
pub fn init(level: &str, format: LogFormat) -> LogControl {
    CONTROL
        .get_or_init(|| {
            let from_env = std::env::var("RUST_LOG").ok().filter(|f| parse_filter(f).is_ok());
            let text = from_env.unwrap_or_else(|| level.to_owned());
            let (text, filter) = match parse_filter(&text) {
                Ok(f) => (text, f),
                Err(_) => ("info".to_owned(), EnvFilter::new("info")),
            };
            let (filter, handle) = reload::Layer::new(filter);
            // Colour only for a person at a terminal; files and collectors get plain text.
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let (plain, json) = match format {
                LogFormat::Plain => (Some(fmt::layer().with_ansi(ansi).with_writer(std::io::stderr)), None),
                LogFormat::Json => (
                    None,
                    Some(fmt::layer().json().flatten_event(true).with_current_span(true).with_writer(std::io::stderr)),
                ),
            };
            // Another subscriber set first (a test harness) keeps its place; the handle then
            // reports that it cannot change anything.
            let _ = tracing_subscriber::registry().with(filter).with(plain).with(json).try_init();
            LogControl { handle, current: Arc::new(Mutex::new(text)) }
        })
        .clone()
}

/// Logging for `tether bridge`: never on stdout (it carries the protocol); on stderr, or in
/// `file` when given. `RUST_LOG` wins over `level`.
pub fn init_bridge(level: &str, file: Option<std::fs::File>) {
    let text = std::env::var("RUST_LOG").ok().filter(|f| parse_filter(f).is_ok()).unwrap_or_else(|| level.to_owned());
    let filter = parse_filter(&text).unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = match file {
        Some(f) => fmt_builder::fmt().with_env_filter(filter).with_ansi(false).with_writer(Mutex::new(f)).try_init(),
        None => {
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            fmt_builder::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).try_init()
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_strictly() {
        assert!(parse_filter("debug").is_ok());
        assert!(parse_filter("tether=debug,warn").is_ok());
        assert!(parse_filter("").is_err());
        assert!(parse_filter("tether=loud").is_err());
    }
}
