//! The open-file limit: raised to the hard limit at start, and checked against what the
//! configured session and connection limits need.

use nix::sys::resource::{Resource, getrlimit, setrlimit};
use tracing::{info, warn};

/// File descriptors one stdio session holds: the child's stdin (two ends: tether keeps the read
/// end to find undelivered requests), stdout, stderr, and the client's connection.
pub const FDS_PER_STDIO_SESSION: u64 = 5;

/// Descriptors tether needs besides sessions: listeners, the store, the runtime, logs.
const BASE_FDS: u64 = 64;

/// Linux's default `fs.nr_open`, the most a soft limit can be when the hard one is unlimited.
const NR_OPEN_DEFAULT: u64 = 1 << 20;

/// What [`raise_nofile`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimit {
    /// The soft limit now in force.
    pub soft: u64,
    /// The hard limit.
    pub hard: u64,
    /// The descriptors `max_sessions` stdio sessions would need.
    pub needed: u64,
}

/// The descriptors `max_sessions` stdio sessions need.
pub fn needed_for(max_sessions: usize) -> u64 {
    (max_sessions as u64).saturating_mul(FDS_PER_STDIO_SESSION).saturating_add(BASE_FDS)
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, and warns when the result cannot hold
/// `max_sessions` stdio sessions. A default soft limit of 1024 is reached by ~200 sessions.
pub fn raise_nofile(max_sessions: usize) -> Option<NofileLimit> {
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(l) => l,
        Err(e) => {
            warn!(error = %e, "cannot read the open-file limit (RLIMIT_NOFILE)");
            return None;
        }
    };
    // An unlimited hard limit cannot be the soft one (the kernel caps it at fs.nr_open).
    let target = if hard == nix::sys::resource::RLIM_INFINITY { NR_OPEN_DEFAULT } else { hard };
    let mut now = soft;
    if soft < target {
        match setrlimit(Resource::RLIMIT_NOFILE, target, hard) {
            Ok(()) => {
                info!(from = soft, to = target, "raised the open-file limit (RLIMIT_NOFILE) to the hard limit");
                now = target;
            }
            Err(e) => warn!(error = %e, soft, hard, "cannot raise the open-file limit (RLIMIT_NOFILE)"),
        }
    }
    let needed = needed_for(max_sessions);
    if now < needed {
        warn!(
            limit = now,
            needed,
            max_sessions,
            per_session = FDS_PER_STDIO_SESSION,
            "the open-file limit cannot hold --max-sessions stdio sessions; raise it (ulimit -Hn, LimitNOFILE=) \
             or lower max_sessions"
        );
    }
    Some(NofileLimit { soft: now, hard, needed })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_ends_at_the_hard_limit() {
        let l = raise_nofile(10).expect("readable");
        assert!(l.soft == l.hard || l.soft == NR_OPEN_DEFAULT, "{l:?}");
        assert_eq!(getrlimit(Resource::RLIMIT_NOFILE).expect("limit").0, l.soft);
        assert_eq!(l.needed, 10 * FDS_PER_STDIO_SESSION + BASE_FDS);
        assert_eq!(needed_for(10_000), 50_064);
    }
}
