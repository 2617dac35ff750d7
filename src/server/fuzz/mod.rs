//! A dependency-free mutation fuzzer for everything that decodes client bytes:
//! startup-phase packets, frontend message framing and decoding, the SCRAM
//! exchange, Bind parameter values, and the backend-message walk.
//!
//! It runs on stable Rust as an ordinary test: a short, fixed, deterministic budget
//! in the normal suite, and as long as asked with `SLUICE_FUZZ_SECS`:
//!
//! ```text
//! SLUICE_FUZZ_SECS=600 cargo test --lib fuzz -- --nocapture
//! ```
//!
//! Environment: `SLUICE_FUZZ_SECS` (run that long, on `SLUICE_FUZZ_THREADS` threads,
//! default all cores), `SLUICE_FUZZ_ITERS` (iterations per target otherwise),
//! `SLUICE_FUZZ_SEED` (base seed, decimal or 0x-hex), and
//! `SLUICE_FUZZ_REPLAY=target:hex` (run one input, outside `catch_unwind`, for a
//! backtrace). Each target call runs inside `catch_unwind`; a panic, a broken
//! invariant, or one allocation larger than the input can justify is a failure,
//! reported with its target, seed, iteration and the input in hex.

mod alloc;
mod mutate;
mod sasl;
mod seeds;
mod targets;

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::{Duration, Instant};

use mutate::Rng;
use targets::{TARGETS, Target};

#[global_allocator]
static WATCH: alloc::Watch = alloc::Watch;

const DEFAULT_SEED: u64 = 0x5100_1ce0_f022_0001;
/// Per target in the normal suite (50,000 in all): about a second in a debug build.
const DEFAULT_ITERS: u64 = 10_000;
const MAX_CORPUS: usize = 4_096;
/// Distinct-input hashes kept per thread (about 64 MB at most).
const MAX_SEEN: usize = 4_000_000;
/// Failures kept per target before it is set aside (one bug tends to repeat).
const MAX_FAILURES: usize = 3;

/// One allocation may hold a few copies of the input plus fixed overhead; a block
/// sized by a length or count field that the input does not back is over this.
fn allocation_limit(input_len: usize) -> usize {
    64 * 1024 + 16 * input_len
}

struct Failure {
    target: &'static str,
    seed: u64,
    iteration: u64,
    why: String,
    input: Vec<u8>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hex = to_hex(&self.input);
        write!(
            f,
            "target {} (seed {:#x}, iteration {}): {}\n  input ({} bytes): {hex}\n  replay: SLUICE_FUZZ_REPLAY={}:{hex} cargo test --lib fuzz -- --nocapture",
            self.target,
            self.seed,
            self.iteration,
            self.why,
            self.input.len(),
            self.target,
        )
    }
}

/// Per-target state of one campaign: the corpus grows with inputs that showed an
/// event not seen before (a cheap stand-in for coverage feedback).
struct Campaign {
    target: &'static Target,
    corpus: Vec<Vec<u8>>,
    events: HashSet<u64>,
    iterations: u64,
    failures: Vec<Failure>,
}

impl Campaign {
    fn new(target: &'static Target) -> Campaign {
        let mut c = Campaign {
            target,
            corpus: Vec::new(),
            events: HashSet::new(),
            iterations: 0,
            failures: Vec::new(),
        };
        for seed in (target.seeds)() {
            match execute(target, &seed) {
                Ok(events) => c.events.extend(events),
                Err(why) => c.failures.push(Failure {
                    target: target.name,
                    seed: 0,
                    iteration: 0,
                    why: format!("seed input failed: {why}"),
                    input: seed.clone(),
                }),
            }
            c.corpus.push(seed);
        }
        c
    }

    fn step(&mut self, rng: &mut Rng, seed: u64, seen: &mut HashSet<u64>) {
        let base = rng.below(self.corpus.len());
        let other = rng.below(self.corpus.len());
        let mut input = self.corpus[base].clone();
        let t = self.target;
        mutate::mutate(rng, &mut input, t.framing, &self.corpus[other], t.dict);
        self.iterations += 1;
        if seen.len() < MAX_SEEN {
            let mut h = DefaultHasher::new();
            (t.name, &input).hash(&mut h);
            seen.insert(h.finish());
        }
        match execute(t, &input) {
            Ok(events) => {
                let before = self.events.len();
                self.events.extend(events);
                if self.events.len() > before {
                    if self.corpus.len() < MAX_CORPUS {
                        self.corpus.push(input);
                    } else {
                        let at = rng.below(MAX_CORPUS);
                        self.corpus[at] = input;
                    }
                }
            }
            Err(why) => self.failures.push(Failure {
                target: t.name,
                seed,
                iteration: self.iterations,
                why,
                input,
            }),
        }
    }

    fn alive(&self) -> bool {
        self.failures.len() < MAX_FAILURES
    }
}

/// Runs one input under `catch_unwind`, with the allocation watch armed.
fn execute(t: &Target, input: &[u8]) -> Result<Vec<u64>, String> {
    alloc::arm();
    let result = std::panic::catch_unwind(|| (t.run)(input));
    let largest = alloc::disarm();
    let events = result.map_err(|p| {
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic".into());
        format!("panic: {msg}")
    })?;
    let limit = allocation_limit(input.len());
    if largest > limit {
        return Err(format!(
            "one allocation of {largest} bytes for a {}-byte input (limit {limit})",
            input.len()
        ));
    }
    Ok(events)
}

enum Budget {
    Iterations(u64),
    Time(Duration),
}

struct Report {
    campaigns: Vec<Campaign>,
    distinct: usize,
}

/// One thread's campaign over every target, interleaved, until the budget is spent.
fn campaign(seed: u64, budget: &Budget) -> Report {
    let mut rng = Rng::new(seed);
    let mut seen = HashSet::new();
    let mut campaigns: Vec<Campaign> = TARGETS.iter().map(Campaign::new).collect();
    let start = Instant::now();
    for round in 0u64.. {
        let done = match budget {
            Budget::Iterations(n) => round >= *n,
            // Checking the clock every round would cost more than some targets.
            Budget::Time(d) => round % 64 == 0 && start.elapsed() >= *d,
        };
        if done || !campaigns.iter().any(Campaign::alive) {
            break;
        }
        for c in campaigns.iter_mut().filter(|c| c.alive()) {
            c.step(&mut rng, seed, &mut seen);
        }
    }
    Report {
        campaigns,
        distinct: seen.len(),
    }
}

fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn env_seed() -> u64 {
    let Ok(v) = std::env::var("SLUICE_FUZZ_SEED") else {
        return DEFAULT_SEED;
    };
    let v = v.trim();
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    };
    parsed.unwrap_or_else(|| panic!("SLUICE_FUZZ_SEED={v}: not a number"))
}

fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn from_hex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd-length hex");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// Runs `target:hex` once, unguarded, so the panic comes with its backtrace.
fn replay(spec: &str) {
    let (name, hex) = spec.split_once(':').expect("SLUICE_FUZZ_REPLAY=target:hex");
    let t = targets::target(name).unwrap_or_else(|| panic!("no fuzz target {name:?}"));
    let input = from_hex(hex.trim());
    let events = (t.run)(&input).len();
    println!(
        "replay {name}: {} bytes, no panic ({events} events)",
        input.len()
    );
}

#[test]
fn fuzz_wire_decoders() {
    if let Ok(spec) = std::env::var("SLUICE_FUZZ_REPLAY") {
        return replay(&spec);
    }
    let seed = env_seed();
    let (budget, threads) = match env::<u64>("SLUICE_FUZZ_SECS") {
        Some(secs) => {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            let threads = env("SLUICE_FUZZ_THREADS").unwrap_or(cores).max(1);
            (Budget::Time(Duration::from_secs(secs)), threads)
        }
        None => (
            Budget::Iterations(env("SLUICE_FUZZ_ITERS").unwrap_or(DEFAULT_ITERS)),
            1,
        ),
    };
    let start = Instant::now();
    let reports: Vec<Report> = std::thread::scope(|s| {
        let budget = &budget;
        let handles: Vec<_> = (0..threads as u64)
            .map(|i| {
                let thread_seed = seed.wrapping_add(i.wrapping_mul(0x9e37_79b9));
                s.spawn(move || campaign(thread_seed, budget))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("fuzz thread"))
            .collect()
    });
    let elapsed = start.elapsed().as_secs_f64();
    let total: u64 = reports
        .iter()
        .flat_map(|r| &r.campaigns)
        .map(|c| c.iterations)
        .sum();
    let distinct: usize = reports.iter().map(|r| r.distinct).sum();
    // Past MAX_SEEN per thread the count is a lower bound.
    let at_least = if reports.iter().any(|r| r.distinct >= MAX_SEEN) {
        "at least "
    } else {
        ""
    };
    let failures: Vec<&Failure> = reports
        .iter()
        .flat_map(|r| &r.campaigns)
        .flat_map(|c| &c.failures)
        .collect();
    println!(
        "fuzz: seed {seed:#x}, {threads} thread(s), {total} iterations in {elapsed:.1} s ({:.0}/s), {at_least}{distinct} distinct inputs, {} failure(s)",
        total as f64 / elapsed.max(1e-9),
        failures.len()
    );
    for (i, t) in TARGETS.iter().enumerate() {
        let cs: Vec<&Campaign> = reports.iter().map(|r| &r.campaigns[i]).collect();
        println!(
            "  {:<13} {:>10} iterations, {:>5} events, corpus {:>5}",
            t.name,
            cs.iter().map(|c| c.iterations).sum::<u64>(),
            cs.iter().map(|c| c.events.len()).max().unwrap_or(0),
            cs.iter().map(|c| c.corpus.len()).max().unwrap_or(0),
        );
    }
    if !failures.is_empty() {
        let list: Vec<String> = failures.iter().map(|f| f.to_string()).collect();
        panic!("{} fuzz failure(s):\n{}", failures.len(), list.join("\n"));
    }
}

#[test]
fn fuzz_allocation_watch_sees_big_blocks() {
    alloc::arm();
    let v: Vec<u8> = Vec::with_capacity(1 << 20);
    let largest = alloc::disarm();
    drop(v);
    assert!(largest >= 1 << 20);
    assert!(largest > allocation_limit(16));
}
