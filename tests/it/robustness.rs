//! Hostile and broken clients: garbage bytes, malformed messages, oversized messages,
//! connection limits. None of them may affect another client.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{Gateway, GatewayConfig, PASSWORD, USER, connect_plain, count, sqlstate};

pub(crate) fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// Reads one backend message (tag, body) or None at end of stream.
async fn read_message(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    s.read_exact(&mut head).await.ok()?;
    let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let mut body = vec![0u8; len - 4];
    s.read_exact(&mut body).await.ok()?;
    Some((head[0], body))
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).unwrap();
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

/// A protocol 3.0 startup packet for the demo user.
pub(crate) fn startup_packet() -> Vec<u8> {
    startup_with(&[("user", USER), ("database", "sluice")])
}

/// A protocol 3.0 startup packet with parameters in the given order (drivers' own
/// order matters to the replay tests).
pub(crate) fn startup_with(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = vec![0, 3, 0, 0];
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut packet = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    packet
}

/// A hand-rolled client that logs in with SCRAM over plaintext loopback and stops at
/// ReadyForQuery, so the test can then send whatever bytes it likes.
pub(crate) async fn raw_login(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let startup = startup_packet();
    s.write_all(&startup).await.unwrap();
    let (tag, _) = read_message(&mut s).await.unwrap();
    assert_eq!(tag, b'R');
    let client_first_bare = "n=,r=rawclientnonce";
    let mut init = b"SCRAM-SHA-256\0".to_vec();
    let first = format!("n,,{client_first_bare}");
    init.extend_from_slice(&(first.len() as i32).to_be_bytes());
    init.extend_from_slice(first.as_bytes());
    s.write_all(&message(b'p', &init)).await.unwrap();
    let (_, cont) = read_message(&mut s).await.unwrap();
    let server_first = String::from_utf8(cont[4..].to_vec()).unwrap();
    let attrs: Vec<&str> = server_first.split(',').collect();
    let nonce = &attrs[0][2..];
    let salt = B64.decode(&attrs[1][2..]).unwrap();
    let iters: u32 = attrs[2][2..].parse().unwrap();
    let mut salted = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(PASSWORD.as_bytes(), &salt, iters, &mut salted);
    let client_key = hmac(&salted, b"Client Key");
    let stored = Sha256::digest(&client_key);
    let without_proof = format!("c=biws,r={nonce}");
    let auth = format!("{client_first_bare},{server_first},{without_proof}");
    let sig = hmac(&stored, auth.as_bytes());
    let proof: Vec<u8> = client_key.iter().zip(sig).map(|(a, b)| a ^ b).collect();
    let final_msg = format!("{without_proof},p={}", B64.encode(proof));
    s.write_all(&message(b'p', final_msg.as_bytes()))
        .await
        .unwrap();
    loop {
        let (tag, _) = read_message(&mut s).await.expect("login completes");
        assert_ne!(tag, b'E', "raw login refused");
        if tag == b'Z' {
            return s;
        }
    }
}

/// Sends `bytes` and returns the SQLSTATE of the ErrorResponse the server answers
/// with before closing, if any.
async fn error_then_close(s: &mut TcpStream, bytes: &[u8]) -> Option<String> {
    s.write_all(bytes).await.ok()?;
    let mut code = None;
    while let Ok(Some((tag, body))) =
        tokio::time::timeout(Duration::from_secs(10), read_message(s)).await
    {
        if tag == b'E' {
            for field in body.split(|&b| b == 0) {
                if let Some(c) = field.strip_prefix(b"C") {
                    code = Some(String::from_utf8_lossy(c).into_owned());
                }
            }
        }
    }
    code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_clients_do_not_affect_others() {
    let gw = Gateway::start().await;
    let healthy = gw.connect().await;
    let port = gw.port;
    let garbage: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        vec![0xff; 64],
        vec![0, 0, 0, 3],                   // length below the minimum
        vec![0x7f, 0xff, 0xff, 0xff, 0, 3], // absurd startup length
        {
            let mut v = vec![0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]; // SSLRequest, then not-TLS bytes
            v.extend_from_slice(b"definitely not a TLS handshake");
            v
        },
        vec![0, 0, 0, 12, 0, 3, 0, 0, b'u', b's', b'e', b'r'], // unterminated parameters
    ];
    let mut tasks = vec![];
    for g in garbage {
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            let _ = s.write_all(&g).await;
            let mut buf = vec![0u8; 1024];
            // The server answers or hangs up; it must not hang on to us forever.
            let _ = tokio::time::timeout(Duration::from_secs(40), s.read(&mut buf)).await;
        }));
    }
    for _ in 0..5 {
        assert_eq!(count(&healthy, "nyc.zones").await.unwrap(), 265);
    }
    for t in tasks {
        t.await.unwrap();
    }
    let again = gw.connect().await;
    assert_eq!(count(&again, "nyc.vendors").await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_after_login_are_protocol_violations() {
    let gw = Gateway::start().await;
    let healthy = gw.connect().await;

    let mut s = raw_login(gw.port).await;
    assert_eq!(
        error_then_close(&mut s, &message(b'!', b""))
            .await
            .as_deref(),
        Some("08P01")
    );

    // Bind claiming a 16-byte parameter but carrying 2.
    let mut s = raw_login(gw.port).await;
    let truncated_bind = message(b'B', b"\0\0\0\0\0\x01\0\0\0\x10ab");
    s.write_all(&message(b'P', b"\0SELECT 1\0\0\0"))
        .await
        .unwrap();
    assert_eq!(
        error_then_close(&mut s, &truncated_bind).await.as_deref(),
        Some("08P01")
    );

    // A message claiming to be 1.9 GB.
    let mut s = raw_login(gw.port).await;
    assert_eq!(
        error_then_close(&mut s, &[b'Q', 0x7f, 0xff, 0xff, 0x00])
            .await
            .as_deref(),
        Some("08P01")
    );

    assert_eq!(count(&healthy, "nyc.zones").await.unwrap(), 265);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_errors_skip_to_sync() {
    let gw = Gateway::start().await;
    let mut s = raw_login(gw.port).await;
    // Parse fails (unknown table); the following Bind/Execute are skipped until Sync,
    // which answers ReadyForQuery; then the session works normally.
    let mut batch = message(b'P', b"\0SELECT * FROM nope\0\0\0");
    batch.extend(message(b'B', b"\0\0\0\0\0\0\0\0"));
    batch.extend(message(b'E', b"\0\0\0\0\0"));
    batch.extend(message(b'S', b""));
    batch.extend(message(b'Q', b"SELECT 7\0"));
    s.write_all(&batch).await.unwrap();
    let mut tags = vec![];
    while let Some((tag, body)) = read_message(&mut s).await {
        tags.push(tag);
        if tag == b'D' {
            assert_eq!(&body[6..], b"7");
        }
        if tag == b'Z' && tags.iter().filter(|&&t| t == b'Z').count() == 2 {
            break;
        }
    }
    assert_eq!(tags, vec![b'E', b'Z', b'T', b'D', b'C', b'Z']);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_get_53300() {
    let gw = GatewayConfig::demo()
        .server("max_connections = 2\n")
        .start()
        .await;
    let a = gw.connect().await;
    let _b = gw.connect().await;
    let err = gw
        .try_connect()
        .await
        .expect_err("connection must be refused");
    assert_eq!(sqlstate(&err), "53300");
    // Over TLS the SSLRequest is answered and the refusal comes inside the
    // negotiated session, so libpq reports it as such (not "server sent an error
    // response during SSL exchange").
    let refused = gw.psql(&["-c", "SELECT 1"]).await;
    let text = crate::harness::stderr(&refused);
    assert!(!refused.status.success());
    assert!(text.contains("sorry, too many clients already"), "{text}");
    assert!(!text.contains("SSL exchange"), "{text}");
    drop(a);
    // A slot frees up once a client leaves.
    let mut ok = false;
    for _ in 0..50 {
        if gw.try_connect().await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "slot was not released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gssenc_is_refused_then_tls_negotiates() {
    let gw = Gateway::start().await;
    let mut s = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30])
        .await
        .unwrap();
    let mut answer = [0u8; 1];
    s.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"N", "GSSENCRequest must be declined");
    s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .await
        .unwrap();
    s.read_exact(&mut answer).await.unwrap();
    assert_eq!(
        &answer, b"S",
        "SSLRequest must be accepted after GSSENC is declined"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_passwords_and_large_auth_messages_are_handled() {
    // A 16 KB password through SCRAM: a wrong password, nothing worse.
    let gw = Gateway::start().await;
    let big = "x".repeat(16 * 1024);
    let err = connect_plain(gw.port, USER, &big)
        .await
        .expect_err("wrong password");
    assert_eq!(sqlstate(&err), "28P01");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_messages_up_to_64k_are_read() {
    // Azure AD tokens reach 16 KB; authentication messages up to PostgreSQL's 65,535-byte
    // limit must be read (pgwire's stock decoder stops at 10,000 bytes).
    let gw = Gateway::start().await;
    let mut s = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    let startup = startup_packet();
    s.write_all(&startup).await.unwrap();
    assert_eq!(read_message(&mut s).await.unwrap().0, b'R');
    let first = format!("n,,n=,r={}", "a".repeat(40_000));
    let mut init = b"SCRAM-SHA-256\0".to_vec();
    init.extend_from_slice(&(first.len() as i32).to_be_bytes());
    init.extend_from_slice(first.as_bytes());
    let code = error_then_close(&mut s, &message(b'p', &init)).await;
    assert_eq!(code.as_deref(), Some("08P01"));
    // 70 KB is past the limit: refused before it is buffered.
    let mut s = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    s.write_all(&startup).await.unwrap();
    assert_eq!(read_message(&mut s).await.unwrap().0, b'R');
    let code = error_then_close(&mut s, &[b'p', 0, 1, 0x11, 0x70]).await;
    assert_eq!(code.as_deref(), Some("08P01"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurdly_deep_expressions_are_refused_not_fatal() {
    let gw = Gateway::start().await;
    let client = gw.connect().await;
    let sql = format!("SELECT 1{}", "+1".repeat(200_000));
    let err = client.simple_query(&sql).await.unwrap_err();
    assert_eq!(sqlstate(&err), "54001");
    let n: i64 = client
        .query_one("SELECT 1 + 1", &[])
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(n, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_works_when_the_server_is_full() {
    let gw = GatewayConfig::demo()
        .server("max_connections = 1\n")
        .start()
        .await;
    let client = gw.connect().await;
    let token = client.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        token.cancel_query(tokio_postgres::NoTls).await
    });
    let long = "SELECT count(*) FROM nyc.trips a JOIN nyc.trips b ON a.passenger_count = b.passenger_count";
    let err = client.simple_query(long).await.unwrap_err();
    assert_eq!(sqlstate(&err), "57014");
    let _ = canceller.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stalls_authentication_is_told_why() {
    let gw = GatewayConfig::demo()
        .server("auth_timeout_secs = 1\n")
        .start()
        .await;
    let mut s = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    s.write_all(&startup_packet()).await.unwrap();
    // The server asks for SASL; the client never answers.
    let (tag, _) = read_message(&mut s).await.expect("authentication request");
    assert_eq!(tag, b'R');
    let reply = tokio::time::timeout(Duration::from_secs(10), read_message(&mut s))
        .await
        .expect("answered within the timeout");
    let (tag, body) = reply.expect("an ErrorResponse, not a silent close");
    assert_eq!(tag, b'E');
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("C57014"), "{text}");
    assert!(
        text.contains("canceling authentication due to timeout"),
        "{text}"
    );
}
