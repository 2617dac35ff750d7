//! Wire-level fuzzing of a real gateway: mutated startup-phase bytes and mutated
//! message streams after a real login, each on its own TCP connection, with the
//! same mutator as the in-process fuzzer (`src/server/fuzz`). Every connection
//! must end in valid answers, an ErrorResponse, or a clean close, in bounded time;
//! no server code may panic; and a client connected throughout still gets right
//! answers afterwards, as does a new one.
//!
//! `SLUICE_WIRE_FUZZ_CONNS` (default 240) and `SLUICE_WIRE_FUZZ_SEED` scale it up.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{Gateway, count};
use crate::robustness::{message, raw_login, startup_packet};

// Shared with the lib's fuzzer; not every item is used here.
#[allow(dead_code)]
#[path = "../../src/server/fuzz/mutate.rs"]
mod mutate;

use mutate::{Framing, Rng};

/// Longest a connection may take, from connect to close, after its bytes are sent
/// and its write side shut: the server has all it will get and must finish.
const PER_CONNECTION: Duration = Duration::from_secs(30);
const CONCURRENCY: usize = 8;

/// Panics on the gateway's session threads (`sluice-session-N`, which run every
/// connection from its first byte) or raised in the crate's own code, counted
/// process-wide: the gateway runs in this process, and a panicking session task
/// would otherwise look like a clean close from outside.
static SERVER_PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_server_panics() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let session_thread = std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with("sluice-session-"));
            if session_thread
                || info
                    .location()
                    .is_some_and(|l| l.file().starts_with("src/"))
            {
                SERVER_PANICS.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
    });
}

fn packet(body: &[u8]) -> Vec<u8> {
    let mut p = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    p.extend_from_slice(body);
    p
}

fn startup_with(minor: u8, params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = vec![0, 3, 0, minor];
    for (k, v) in params {
        for s in [k, v] {
            body.extend_from_slice(s.as_bytes());
            body.push(0);
        }
    }
    body.push(0);
    packet(&body)
}

const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
const GSSENC_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30];

fn startup_seeds() -> Vec<Vec<u8>> {
    let redshift_jdbc = [
        ("user", "demo"),
        ("database", "sluice"),
        ("client_protocol_version", "2"),
        ("driver_version", "Redshift JDBC Driver 2.1.0.30"),
        ("idp_type", "AzureAD"),
        ("token_type", "ACCESS_TOKEN"),
    ];
    let odbc = [
        ("user", "demo"),
        ("client_protocol_version", "1"),
        ("driver_version", "Redshift ODBC Driver 2.0.1.0"),
    ];
    vec![
        startup_packet(),
        startup_with(0, &redshift_jdbc),
        startup_with(0, &odbc),
        startup_with(2, &[("user", "demo"), ("_pq_.compression", "on")]),
        startup_with(0, &[("user", "demo"), ("replication", "true")]),
        startup_with(0, &[("user", "nobody"), ("database", "elsewhere")]),
        [&GSSENC_REQUEST[..], &startup_packet()].concat(),
        [&SSL_REQUEST[..], b"\x16\x03\x01\x00\x05hello"].concat(),
        packet(&[0x04, 0xd2, 0x16, 0x2e, 0, 0, 0x10, 0x92, 0, 0, 0, 7]),
    ]
}

fn session_seeds() -> Vec<Vec<u8>> {
    let mut pipeline = message(b'P', b"s1\0SELECT $1::int8 + 1\0\0\x01\0\0\0\x14");
    pipeline.extend(message(
        b'B',
        b"p1\0s1\0\0\x01\0\x01\0\x01\0\0\0\x0841\0\x01\0\x01",
    ));
    pipeline.extend(message(b'D', b"Pp1\0"));
    pipeline.extend(message(b'E', b"p1\0\0\0\0\0"));
    pipeline.extend(message(b'C', b"Ss1\0"));
    pipeline.extend(message(b'S', b""));
    let mut described = message(b'P', b"\0SELECT * FROM nyc.vendors\0\0\0");
    described.extend(message(b'D', b"S\0"));
    described.extend(message(b'H', b""));
    described.extend(message(b'S', b""));
    vec![
        message(b'Q', b"SELECT count(*) FROM nyc.zones\0"),
        message(
            b'Q',
            b"SET application_name = 'fuzz'; SHOW application_name\0",
        ),
        message(b'Q', b"BEGIN; SELECT 1; COMMIT\0"),
        pipeline,
        described,
        [message(b'd', b"stray copy data"), message(b'c', b"")].concat(),
        message(b'F', &[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]),
        message(b'X', b""),
    ]
}

const STARTUP_DICT: &[&[u8]] = &[
    b"user\0demo\0",
    b"client_protocol_version\0",
    b"idp_type\0",
    b"_pq_.",
    &SSL_REQUEST,
    &GSSENC_REQUEST,
    b"\0\x03\0\0",
];
const SESSION_DICT: &[&[u8]] = &[
    b"\0",
    b"\xff\xff\xff\xff",
    b"\x7f\xff",
    b"SELECT $1\0",
    b"S\0\0\0\x04",
    b"H\0\0\0\x04",
];

/// What the server's first bytes must be: 'N' for the first GSSENCRequest and 'S'
/// for an SSLRequest (after which only TLS records follow), read off the input as
/// the server reads it. A first byte 0x16 is direct TLS: TLS records at once.
fn expected_prefix(input: &[u8]) -> (Vec<u8>, bool) {
    if input.first() == Some(&0x16) {
        return (Vec::new(), true);
    }
    let (mut prefix, mut rest, mut gss_refused) = (Vec::new(), input, false);
    while rest.len() >= 8 {
        let len = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
        if !(8..=10_000).contains(&len) || rest.len() < len as usize {
            break;
        }
        match &rest[4..8] {
            [0x04, 0xd2, 0x16, 0x2f] => {
                prefix.push(b'S');
                return (prefix, true);
            }
            [0x04, 0xd2, 0x16, 0x30] if !gss_refused => {
                gss_refused = true;
                prefix.push(b'N');
            }
            _ => break,
        }
        rest = &rest[len as usize..];
    }
    (prefix, false)
}

/// Whole backend messages, each ErrorResponse carrying a five-character SQLSTATE.
/// Returns how many ErrorResponses there were.
fn check_messages(mut out: &[u8]) -> Result<usize, String> {
    let mut errors = 0;
    while !out.is_empty() {
        if out.len() < 5 {
            return Err(format!("{} stray bytes at the end", out.len()));
        }
        let len = i32::from_be_bytes([out[1], out[2], out[3], out[4]]);
        if len < 4 || out.len() < 1 + len as usize {
            return Err(format!(
                "message {:?} with bad length {len}",
                out[0] as char
            ));
        }
        let (m, rest) = out.split_at(1 + len as usize);
        if m[0] == b'E' {
            errors += 1;
            let code = m[5..]
                .split(|&b| b == 0)
                .find_map(|f| f.strip_prefix(b"C"))
                .ok_or("ErrorResponse without a SQLSTATE")?;
            if code.len() != 5 {
                return Err(format!("SQLSTATE {:?}", String::from_utf8_lossy(code)));
            }
        }
        out = rest;
    }
    Ok(errors)
}

#[derive(Debug, Default)]
struct Tally {
    errors: usize,
    answered: usize,
    closed: usize,
    tls: usize,
}

/// Sends one mutated input (after a real login when `logged_in`) and judges the
/// server's whole reply.
async fn one(
    port: u16,
    logged_in: bool,
    input: Vec<u8>,
    tally: Arc<std::sync::Mutex<Tally>>,
) -> Result<(), String> {
    let exchange = async {
        let mut s = if logged_in {
            raw_login(port).await
        } else {
            TcpStream::connect(("127.0.0.1", port))
                .await
                .expect("connect")
        };
        // The server may hang up before reading everything: not an error here.
        let _ = s.write_all(&input).await;
        let _ = s.shutdown().await;
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        out
    };
    let out = tokio::time::timeout(PER_CONNECTION, exchange)
        .await
        .map_err(|_| format!("no close within {PER_CONNECTION:?}"))?;
    let (prefix, tls) = if logged_in {
        (vec![], false)
    } else {
        expected_prefix(&input)
    };
    if !out.starts_with(&prefix) && !prefix.starts_with(&out) {
        return Err(format!(
            "expected {:?} first, got {:?}",
            prefix,
            &out[..out.len().min(8)]
        ));
    }
    let mut t = tally.lock().unwrap();
    if tls {
        t.tls += 1;
        return Ok(());
    }
    let rest = out.get(prefix.len()..).unwrap_or_default();
    match check_messages(rest)? {
        _ if rest.is_empty() => t.closed += 1,
        0 => t.answered += 1,
        _ => t.errors += 1,
    }
    Ok(())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wire_fuzz_barrage_leaves_the_server_serving() {
    count_server_panics();
    let conns: usize = std::env::var("SLUICE_WIRE_FUZZ_CONNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(240);
    let seed: u64 = std::env::var("SLUICE_WIRE_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed);
    let panics_before = SERVER_PANICS.load(Ordering::SeqCst);
    let gw = Gateway::start().await;
    let healthy = gw.connect().await;

    let mut rng = Rng::new(seed);
    let (startup, session) = (startup_seeds(), session_seeds());
    let cases: Vec<(bool, Vec<u8>)> = (0..conns)
        .map(|i| {
            let logged_in = i % 2 == 1;
            let (seeds, framing, dict) = if logged_in {
                (&session, Framing::Tagged, SESSION_DICT)
            } else {
                (&startup, Framing::Untagged, STARTUP_DICT)
            };
            let mut input = rng.pick(seeds).clone();
            let other = rng.pick(seeds).clone();
            for _ in 0..1 + rng.below(3) {
                mutate::mutate(&mut rng, &mut input, framing, &other, dict);
            }
            (logged_in, input)
        })
        .collect();

    let tally = Arc::new(std::sync::Mutex::new(Tally::default()));
    let limit = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (logged_in, input)) in cases.into_iter().enumerate() {
        let permit = limit.clone().acquire_owned().await.unwrap();
        let (port, tally) = (gw.port, tally.clone());
        tasks.spawn(async move {
            let _permit = permit;
            let shown = hex(&input);
            one(port, logged_in, input, tally).await.map_err(|e| {
                format!(
                    "connection {i} (logged in: {logged_in}, seed {seed}): {e}\n  input: {shown}"
                )
            })
        });
    }
    let mut failures = Vec::new();
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r.expect("connection task") {
            failures.push(e);
        }
    }
    println!(
        "wire fuzz: {conns} connections, seed {seed}: {:?}",
        tally.lock().unwrap()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(
        SERVER_PANICS.load(Ordering::SeqCst),
        panics_before,
        "server code panicked (see the log above)"
    );

    // The connection that was open throughout, and a new one, still get right answers.
    assert_eq!(count(&healthy, "nyc.zones").await.unwrap(), 265);
    let fresh = gw.connect().await;
    assert_eq!(count(&fresh, "nyc.vendors").await.unwrap(), 2);
}
