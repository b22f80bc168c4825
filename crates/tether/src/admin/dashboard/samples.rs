//! What the dashboard remembers between page loads, all bounded: a ring of per-second samples
//! of the request counters (for the requests/s and p50/p99 plots), and a ring of session events
//! observed by comparing each live session with what it looked like a second earlier (opened,
//! revived, upstream state changed, a new error, gone). Both are filled by one task on the admin
//! runtime; the data plane is not touched.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::clock::Instant;

use sha2::Digest;

use crate::session::Manager;
use crate::session::inspect::UpstreamState;
use crate::session::record::now_ms;
use crate::stats::{MethodClass, Outcome, REQUEST_BUCKETS, Stats};

/// How often a sample is taken.
pub const TICK: Duration = Duration::from_secs(1);
/// Samples kept: five minutes at one a second.
pub const SAMPLES: usize = 300;
/// The window the latency percentiles are computed over, in samples.
const LATENCY_WINDOW: usize = 10;
/// Session events kept, for all sessions together.
pub const EVENTS: usize = 1000;

/// Cumulative request counters at one moment.
#[derive(Clone)]
struct Cumulative {
    at: Instant,
    requests: u64,
    /// Request latency observations per bucket of [`REQUEST_BUCKETS`], then +Inf.
    buckets: [u64; REQUEST_BUCKETS.len() + 1],
}

/// One point of the plots.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Unix milliseconds.
    pub at_ms: u64,
    /// Requests per second over the last tick.
    pub rps: f64,
    /// Median latency in milliseconds over the last [`LATENCY_WINDOW`] ticks (None: no request).
    pub p50_ms: Option<f64>,
    /// 99th percentile latency in milliseconds over the same window.
    pub p99_ms: Option<f64>,
}

/// One observed session event.
#[derive(Debug, Clone)]
pub struct SessionEvent {
    /// Unix milliseconds.
    pub at_ms: u64,
    /// The session it is about.
    pub session: String,
    /// What happened.
    pub what: String,
}

/// What a session looked like at the last tick: small, since every live session has one.
#[derive(Clone, Copy, PartialEq)]
struct Seen {
    error_at: Option<u64>,
    revives: u32,
    upstream: UpstreamState,
    /// The tick that last saw it (wrapping); one not seen by the current tick is gone.
    tick: u16,
}

/// A session id as a map key: the 128 bits of a tether id (32 lowercase hex digits) instead
/// of a copy of its text; any other id is hashed and its text kept aside.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Key([u64; 2]);

impl Key {
    fn of(id: &str) -> (Key, bool) {
        let hex = id.len() == 32 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if let Some(v) = Some(id).filter(|_| hex).and_then(|h| u128::from_str_radix(h, 16).ok()) {
            return (Key([(v >> 64) as u64, v as u64]), true);
        }
        let d = sha2::Sha256::digest(id.as_bytes());
        let half = |i: usize| d.get(i..i + 8).and_then(|b| b.try_into().ok()).map_or(0, u64::from_be_bytes);
        (Key([half(0), half(8)]), false)
    }

    fn hex(self) -> String {
        format!("{:016x}{:016x}", self.0[0], self.0[1])
    }
}

#[derive(Default)]
struct Inner {
    cumulative: VecDeque<Cumulative>,
    points: VecDeque<Point>,
    events: VecDeque<SessionEvent>,
    seen: HashMap<Key, Seen>,
    /// The text of the ids that are not tether's hex ids, by key.
    names: HashMap<Key, String>,
    tick: u16,
}

/// The rings.
#[derive(Default, Clone)]
pub struct Samples(Arc<Mutex<Inner>>);

impl Samples {
    /// The plot points, oldest first.
    pub fn points(&self) -> Vec<Point> {
        self.lock().points.iter().copied().collect()
    }

    /// The last `max` events of one session, newest first.
    pub fn events_of(&self, session: &str, max: usize) -> Vec<SessionEvent> {
        self.lock().events.iter().rev().filter(|e| e.session == session).take(max).cloned().collect()
    }

    /// Takes one sample of the counters and of the live sessions.
    pub fn tick(&self, manager: &Manager) {
        let stats: &Stats = &manager.deps().stats;
        let now = Cumulative { at: Instant::now(), requests: 0, buckets: [0; REQUEST_BUCKETS.len() + 1] };
        let now = read_counters(stats, now);
        let live = manager.live();
        let mut g = self.lock();
        g.sample(now);
        g.observe(live.iter().map(|s| {
            let err = s.last_error();
            let seen = Seen {
                error_at: err.as_ref().map(|e| e.at_ms),
                revives: u32::try_from(s.revive_count()).unwrap_or(u32::MAX),
                upstream: s.upstream_state(),
                tick: 0,
            };
            (s.id(), seen, err.map(|e| e.message))
        }));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Client requests (not notifications or answers) and their latency, summed over classes.
fn read_counters(stats: &Stats, mut c: Cumulative) -> Cumulative {
    for class in MethodClass::ALL {
        if matches!(class, MethodClass::Notification | MethodClass::Response) {
            continue;
        }
        c.requests += Outcome::ALL.iter().map(|o| stats.requests.count(class, *o)).sum::<u64>();
        for (i, (_, n)) in stats.requests.latency(class).snapshot().buckets.iter().enumerate() {
            if let Some(slot) = c.buckets.get_mut(i) {
                *slot += n;
            }
        }
    }
    c
}

impl Inner {
    fn sample(&mut self, now: Cumulative) {
        if let Some(prev) = self.cumulative.back() {
            let secs = now.at.duration_since(prev.at).as_secs_f64().max(0.001);
            let rps = now.requests.saturating_sub(prev.requests) as f64 / secs;
            let base = self.cumulative.iter().rev().nth(LATENCY_WINDOW - 1).unwrap_or(&self.cumulative[0]);
            let delta: Vec<u64> =
                now.buckets.iter().zip(base.buckets.iter()).map(|(a, b)| a.saturating_sub(*b)).collect();
            let point = Point {
                at_ms: now_ms(),
                rps,
                p50_ms: quantile(&delta, 0.5).map(|s| s * 1000.0),
                p99_ms: quantile(&delta, 0.99).map(|s| s * 1000.0),
            };
            if self.points.len() == SAMPLES {
                self.points.pop_front();
            }
            self.points.push_back(point);
        }
        if self.cumulative.len() > LATENCY_WINDOW {
            self.cumulative.pop_front();
        }
        self.cumulative.push_back(now);
    }

    /// Compares the live sessions with the last tick, in place: the map is updated, not built
    /// anew each second (with ten thousand sessions that was a copy of every id a second).
    fn observe<'a>(&mut self, live: impl Iterator<Item = (&'a str, Seen, Option<String>)>) {
        let at_ms = now_ms();
        self.tick = self.tick.wrapping_add(1);
        let tick = self.tick;
        let mut events = Vec::new();
        for (id, mut seen, message) in live {
            seen.tick = tick;
            let (key, hex) = Key::of(id);
            match self.seen.insert(key, seen) {
                None => {
                    if !hex {
                        self.names.insert(key, id.to_owned());
                    }
                    events.push((id.to_owned(), "session opened here".to_owned()));
                }
                Some(old) => {
                    if seen.revives > old.revives {
                        let n = seen.revives - old.revives;
                        let times = if n == 1 { String::new() } else { format!(" {n} times") };
                        events.push((id.to_owned(), format!("revived by replay{times} (revives: {})", seen.revives)));
                    }
                    if seen.upstream != old.upstream {
                        let (from, to) = (old.upstream.as_str(), seen.upstream.as_str());
                        events.push((id.to_owned(), format!("upstream {from} → {to}")));
                    }
                    if seen.error_at != old.error_at
                        && let Some(m) = &message
                    {
                        events.push((id.to_owned(), format!("error: {m}")));
                    }
                }
            }
        }
        let names = &mut self.names;
        self.seen.retain(|key, s| {
            if s.tick == tick {
                return true;
            }
            let id = names.remove(key).unwrap_or_else(|| key.hex());
            events.push((id, "session ended (or left this replica)".to_owned()));
            false
        });
        // A map emptied after a peak gives its table back.
        if self.seen.capacity() > 64 && self.seen.len() < self.seen.capacity() / 4 {
            self.seen.shrink_to_fit();
        }
        for (session, what) in events {
            if self.events.len() == EVENTS {
                self.events.pop_front();
            }
            self.events.push_back(SessionEvent { at_ms, session, what });
        }
    }
}

/// The `q` quantile (seconds) of non-cumulative bucket counts over [`REQUEST_BUCKETS`] + Inf,
/// interpolated linearly inside its bucket as Prometheus' `histogram_quantile` does: an
/// estimate whose precision is the bucket's width.
pub fn quantile(buckets: &[u64], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut below = 0u64;
    let mut lower = 0.0;
    for (i, n) in buckets.iter().enumerate() {
        let Some(upper) = REQUEST_BUCKETS.get(i).copied() else {
            // The +Inf bucket: the highest finite bound is all that can be said.
            return REQUEST_BUCKETS.last().copied();
        };
        if *n > 0 && (below + n) as f64 >= rank {
            return Some(lower + (upper - lower) * ((rank - below as f64) / *n as f64));
        }
        below += n;
        lower = upper;
    }
    REQUEST_BUCKETS.last().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_inside_the_bucket() {
        let mut b = [0u64; REQUEST_BUCKETS.len() + 1];
        assert_eq!(quantile(&b, 0.5), None);
        b[0] = 100; // all within 0..5 ms
        let p50 = quantile(&b, 0.5).expect("some");
        assert!((p50 - 0.0025).abs() < 1e-9, "{p50}");
        b[1] = 100; // half of them in 5..10 ms
        let p99 = quantile(&b, 0.99).expect("some");
        assert!(p99 > 0.005 && p99 <= 0.01, "{p99}");
        let mut inf = [0u64; REQUEST_BUCKETS.len() + 1];
        inf[REQUEST_BUCKETS.len()] = 3;
        assert_eq!(quantile(&inf, 0.5), REQUEST_BUCKETS.last().copied());
    }

    #[test]
    fn the_rings_are_bounded_and_events_follow_changes() {
        let mut inner = Inner::default();
        for i in 0..SAMPLES + 50 {
            let c = Cumulative { at: Instant::now(), requests: i as u64 * 10, buckets: [i as u64; 15] };
            inner.sample(c);
        }
        assert_eq!(inner.points.len(), SAMPLES);
        assert!(inner.cumulative.len() <= LATENCY_WINDOW + 1);
        let seen = |revives, upstream| Seen { revives, upstream, error_at: None, tick: 0 };
        inner.observe([("a", seen(0, UpstreamState::Alive), None)].into_iter());
        inner.observe([("a", seen(1, UpstreamState::Alive), None)].into_iter());
        inner.observe(std::iter::empty());
        let whats: Vec<&str> = inner.events.iter().map(|e| e.what.as_str()).collect();
        assert_eq!(
            whats,
            ["session opened here", "revived by replay (revives: 1)", "session ended (or left this replica)"]
        );
        for i in 0..EVENTS + 10 {
            inner.observe([(format!("s{i}").as_str(), seen(0, UpstreamState::Idle), None)].into_iter());
        }
        assert_eq!(inner.events.len(), EVENTS);
        assert!(inner.seen.len() == 1 && inner.names.len() == 1, "what is gone is forgotten");
    }

    #[test]
    fn tether_ids_are_keyed_by_their_bits_and_named_again() {
        let mut inner = Inner::default();
        let id = crate::session::record::new_session_id();
        let up = UpstreamState::Idle;
        let seen = Seen { revives: 0, upstream: up, error_at: None, tick: 0 };
        inner.observe([(id.as_str(), seen, None)].into_iter());
        assert!(inner.names.is_empty(), "a hex id is not kept as text");
        inner.observe([(id.as_str(), Seen { upstream: UpstreamState::Alive, ..seen }, None)].into_iter());
        inner.observe(std::iter::empty());
        let got: Vec<(&str, &str)> = inner.events.iter().map(|e| (e.session.as_str(), e.what.as_str())).collect();
        assert_eq!(
            got,
            [
                (id.as_str(), "session opened here"),
                (id.as_str(), "upstream idle → alive"),
                (id.as_str(), "session ended (or left this replica)")
            ]
        );
    }
}
