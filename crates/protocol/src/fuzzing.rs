//! A fuzzing harness that runs on the stable toolchain, inside `cargo test`: seeds from a corpus
//! in the repository (`fuzz/corpus/<target>/`), mutated by proptest strategies (bit flips,
//! interesting bytes, deletions, duplications, splices of two seeds) plus plain random bytes.
//! Every seed runs as-is first, so a crash found once stays a regression case once its input is
//! added to the corpus.
//!
//! A normal `cargo test` runs a bounded number of cases per target (`TETHER_FUZZ_CASES`,
//! default 2000); `scripts/fuzz --minutes N` sets `TETHER_FUZZ_SECONDS` for long runs. Not
//! coverage-guided (that needs a nightly or AFL toolchain): it finds what random mutation of
//! good inputs finds, and the properties checked are stronger than "does not panic".

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};

/// The corpus directory of `target` (`fuzz/corpus/<target>` at the workspace root).
pub fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus").join(target)
}

/// The seeds of a target: every file in its corpus directory, and the empty input.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    let mut out = vec![Vec::new()];
    let dir = corpus_dir(target);
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(d) => d.filter_map(|e| Some(e.ok()?.path())).filter(|p| p.is_file()).collect(),
        Err(e) => panic!("fuzz corpus {} cannot be read: {e}", dir.display()),
    };
    files.sort();
    for f in files {
        out.push(std::fs::read(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display())));
    }
    out
}

/// One edit of an input.
#[derive(Debug, Clone)]
enum Edit {
    Flip { at: usize, bit: u8 },
    Set { at: usize, byte: u8 },
    Insert { at: usize, bytes: Vec<u8> },
    Delete { at: usize, len: usize },
    Duplicate { at: usize, len: usize },
    Splice { at: usize, other: usize, from: usize },
}

/// Bytes that matter to the parsers under test.
const INTERESTING: &[u8] =
    b"{}[]\":,\\\n\r \t0123456789-.eE+nultrfasidmethodjsonrpc=?:_\x00\x7f\xc3\xa9\xef\xbb\xbf\xff";

fn edit() -> impl Strategy<Value = Edit> {
    let byte = prop_oneof![3 => prop::sample::select(INTERESTING), 1 => any::<u8>()];
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Edit::Flip { at, bit }),
        (any::<usize>(), byte.clone()).prop_map(|(at, byte)| Edit::Set { at, byte }),
        (any::<usize>(), prop::collection::vec(byte, 1..8)).prop_map(|(at, bytes)| Edit::Insert { at, bytes }),
        (any::<usize>(), 1usize..16).prop_map(|(at, len)| Edit::Delete { at, len }),
        (any::<usize>(), 1usize..64).prop_map(|(at, len)| Edit::Duplicate { at, len }),
        (any::<usize>(), any::<usize>(), any::<usize>()).prop_map(|(at, other, from)| Edit::Splice { at, other, from }),
    ]
}

fn apply(mut input: Vec<u8>, edits: &[Edit], seeds: &[Vec<u8>]) -> Vec<u8> {
    for e in edits {
        let n = input.len();
        let pos = |at: usize| if n == 0 { 0 } else { at % (n + 1) };
        match e {
            Edit::Flip { at, bit } if n > 0 => input[at % n] ^= 1 << bit,
            Edit::Set { at, byte } if n > 0 => input[at % n] = *byte,
            Edit::Insert { at, bytes } => {
                let p = pos(*at);
                input.splice(p..p, bytes.iter().copied());
            }
            Edit::Delete { at, len } if n > 0 => {
                let p = at % n;
                input.drain(p..(p + len).min(n));
            }
            Edit::Duplicate { at, len } if n > 0 => {
                let p = at % n;
                let piece = input[p..(p + len).min(n)].to_vec();
                input.splice(p..p, piece);
            }
            Edit::Splice { at, other, from } => {
                let o = &seeds[other % seeds.len()];
                let from = if o.is_empty() { 0 } else { from % o.len() };
                input.truncate(pos(*at));
                input.extend_from_slice(&o[from..]);
            }
            _ => {}
        }
    }
    input
}

/// Inputs for a target: mutated seeds, and sometimes plain random bytes.
pub fn inputs(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let seeds = std::sync::Arc::new(seeds);
    let s2 = seeds.clone();
    prop_oneof![
        9 => (0..seeds.len(), prop::collection::vec(edit(), 0..8))
            .prop_map(move |(i, edits)| apply(s2[i].clone(), &edits, &s2)),
        1 => prop::collection::vec(any::<u8>(), 0..256),
    ]
}

/// What a run did.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    /// Inputs checked (seeds included).
    pub executions: u64,
    /// How long it ran.
    pub elapsed: Duration,
}

fn budget() -> (Option<Duration>, u32) {
    let seconds = std::env::var("TETHER_FUZZ_SECONDS").ok().and_then(|s| s.parse::<u64>().ok());
    let cases = std::env::var("TETHER_FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(2000);
    (seconds.map(Duration::from_secs), cases)
}

/// Runs `check` on every seed of `target`, then on mutated inputs for the budget; panics with
/// the smallest failing input (escaped) when a check fails or panics.
pub fn fuzz(target: &str, check: impl Fn(&[u8]) -> Result<(), TestCaseError>) -> Report {
    let seeds = seeds(target);
    let started = Instant::now();
    let mut executions = 0u64;
    for s in &seeds {
        if let Err(e) = check(s) {
            panic!("fuzz {target}: corpus seed {:?} fails: {e}", String::from_utf8_lossy(s));
        }
        executions += 1;
    }
    let (seconds, cases) = budget();
    let strategy = inputs(seeds);
    loop {
        let config = Config { cases, failure_persistence: None, ..Config::default() };
        let mut runner = TestRunner::new(config);
        let counter = std::cell::Cell::new(0u64);
        let result = runner.run(&strategy, |input| {
            counter.set(counter.get() + 1);
            check(&input)
        });
        executions += counter.get();
        match result {
            Ok(()) => {}
            Err(TestError::Fail(why, input)) => {
                panic!(
                    "fuzz {target}: {why}\nminimal input ({} bytes): {:?}\nadd it to {} as a regression case",
                    input.len(),
                    String::from_utf8_lossy(&input),
                    corpus_dir(target).display()
                )
            }
            Err(TestError::Abort(why)) => panic!("fuzz {target}: aborted: {why}"),
        }
        match seconds {
            Some(limit) if started.elapsed() < limit => continue,
            _ => break,
        }
    }
    let report = Report { executions, elapsed: started.elapsed() };
    eprintln!("fuzz {target}: {} executions in {:.1} s, no failures", report.executions, report.elapsed.as_secs_f64());
    report
}

/// Splits `input` into chunks at positions drawn from `cuts` (for incremental decoders).
pub fn chunks<'a>(input: &'a [u8], cuts: &[u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = input;
    for c in cuts {
        if rest.is_empty() {
            break;
        }
        let n = (*c as usize % rest.len()).max(1);
        let (a, b) = rest.split_at(n);
        out.push(a);
        rest = b;
    }
    if !rest.is_empty() {
        out.push(rest);
    }
    out
}
