//! Amazon's Redshift drivers signing in the Redshift-native way: redshift_connector
//! (PyPI) for real, and the JDBC and ODBC drivers' handshakes replayed byte for byte
//! as their public sources write them (neither driver can be installed here: the
//! JDBC driver is not in Debian or Maven Central's reach, the ODBC driver is a
//! source build). Tokens come from the test identity provider (`idp.rs`).

use std::path::Path;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{
    Gateway, GatewayConfig, clients_dir, json_line, python, stderr, stdout, temp_certs, tls_files,
};
use crate::idp::{Idp, Key, TID, USER, now, v1_claims, v1_issuer, v2_claims, v2_issuer};
use crate::robustness::{message, startup_with as startup};

const PROVIDER: &str = "azure_provider";

/// A gateway with a CA-signed certificate (the drivers verify it), token logins for
/// the test IdP's v1 issuer (serving Redshift provider `azure_provider`) and v2
/// issuer, and the role mapping of the token tests.
async fn gateway(idp: &Idp, certs: &crate::postgres::Certs) -> Gateway {
    let extra = format!(
        "[auth.oidc]\nallow_insecure_http = true\n\
         [[auth.oidc.issuers]]\nissuer = \"{v1}\"\ndiscovery_url = \"{d1}\"\naudiences = [\"api://sluice\", \"https://analysis.windows.net/powerbi/connector/AmazonRedshift\"]\ntenants = [\"{TID}\"]\nredshift_provider_names = [\"{PROVIDER}\"]\n\
         [[auth.oidc.issuers]]\nissuer = \"{v2}\"\ndiscovery_url = \"{d2}\"\naudiences = [\"aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee\"]\ntenants = [\"{TID}\"]\n\
         [[role_mapping]]\napp_role = \"Lake.Admin\"\nroles = [\"admin\"]\n\n\
         [[role_mapping]]\ngroup = \"g-sales\"\nroles = [\"sales\"]\n\n\
         [[roles]]\nname = \"admin\"\nread = [\"*\"]\n\n\
         [[roles]]\nname = \"sales\"\nread = [\"nyc.zones\", \"nyc.vendors\"]\n",
        v1 = v1_issuer(),
        v2 = v2_issuer(),
        d1 = idp.discovery(false),
        d2 = idp.discovery(true),
    );
    GatewayConfig::demo()
        .tls(&tls_files(&certs.cert, &certs.key, "loopback"))
        .extra(&extra)
        .start()
        .await
}

/// Runs `redshift_connector_check.py` and returns its output.
async fn redshift_connector(
    port: u16,
    ca: &Path,
    mode: &str,
    args: &[&str],
) -> (bool, i32, String) {
    let out = tokio::process::Command::new(python())
        .arg(clients_dir().join("redshift_connector_check.py"))
        .args([mode, "localhost", &port.to_string(), "sluice"])
        .args(args)
        .env("SSL_CERT_FILE", ca)
        .output()
        .await
        .expect("python3 runs (tests/setup.sh installs redshift_connector)");
    let text = format!("{}{}", stdout(&out), stderr(&out));
    (out.status.success(), out.status.code().unwrap_or(-1), text)
}

fn identity_line(text: &str) -> Value {
    json_line(text, "IDENTITY ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redshift_connector_signs_in_with_idp_tokens_and_passwords() {
    let key = Key::generate("k1");
    let idp = Idp::start(vec![key.jwk.clone()]).await;
    let (_dir, certs) = temp_certs();
    let gw = gateway(&idp, &certs).await;

    // A local account: the driver cannot do SCRAM, so Sluice asks for the password
    // in cleartext inside the verified TLS session and checks it against the
    // stored SCRAM verifier.
    let (ok, _, text) = redshift_connector(gw.port, &certs.ca, "password", &["demo", "demo"]).await;
    assert!(ok, "{text}");
    assert!(text.contains("ALL OK"), "{text}");
    assert_eq!(identity_line(&text)["identity"][1], "local");
    assert!(
        text.contains(r#"TABLES ["trips", "vendors", "zones"]"#),
        "{text}"
    );
    let (ok, code, text) =
        redshift_connector(gw.port, &certs.ca, "password", &["demo", "wrong"]).await;
    assert!(!ok && code == 3 && text.contains("28P01"), "{text}");

    // IdpTokenAuthPlugin (idp_type AwsIdc, no user): the user comes from the token.
    let admin_token = key.sign(&v2_claims());
    let (ok, _, text) = redshift_connector(gw.port, &certs.ca, "idptoken", &[&admin_token]).await;
    assert!(ok, "{text}");
    let id = identity_line(&text);
    assert_eq!(id["current_user"], USER);
    assert_eq!(id["identity"][1], "token");
    assert_eq!(
        id["identity"][6], "admin",
        "app role Lake.Admin maps to admin"
    );

    // An Azure plugin with provider_name: only the issuer serving that provider.
    let sales_token = key.sign(&v1_claims());
    let (ok, _, text) =
        redshift_connector(gw.port, &certs.ca, "azure", &[&sales_token, PROVIDER]).await;
    assert!(ok, "{text}");
    assert_eq!(identity_line(&text)["identity"][6], "sales");
    // The sales role may not read nyc.trips: the driver's listing leaves it out.
    assert!(text.contains(r#"TABLES ["vendors", "zones"]"#), "{text}");

    // Refusals name their reason: an unknown provider, a token of the wrong issuer
    // for the provider, an expired token.
    for (token, provider, want) in [
        (
            sales_token.clone(),
            "other_provider",
            "provider_name `other_provider`",
        ),
        (
            admin_token.clone(),
            PROVIDER,
            "not trusted for provider_name",
        ),
        (
            key.sign(&{
                let mut c = v1_claims();
                c["exp"] = json!(now() - 600);
                c
            }),
            PROVIDER,
            "expired",
        ),
    ] {
        let (ok, code, text) =
            redshift_connector(gw.port, &certs.ca, "azure", &[&token, provider]).await;
        assert!(!ok && code == 3, "{text}");
        assert!(
            text.contains(want) && text.contains("28P01"),
            "want `{want}`:\n{text}"
        );
    }
}

/// A TLS client trusting the test CA.
async fn tls_connect(port: u16, ca: &Path) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    // SSLRequest, as every driver sends it first.
    tcp.write_all(&[0, 0, 0, 8, 4, 210, 22, 47]).await.unwrap();
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.unwrap();
    assert_eq!(answer[0], b'S');
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).unwrap();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("TLS")
}

async fn read_message<S: AsyncReadExt + Unpin>(s: &mut S) -> (u8, Vec<u8>) {
    let tag = s.read_u8().await.expect("a message");
    let len = s.read_i32().await.unwrap() as usize;
    let mut body = vec![0u8; len - 4];
    s.read_exact(&mut body).await.unwrap();
    (tag, body)
}

/// What a replayed sign-in saw: ParameterStatus values, BackendKeyData length, the
/// tags in order, and `current_user` from a simple query.
struct Replay {
    statuses: Vec<(String, String)>,
    key_data_len: usize,
    tags: Vec<u8>,
    current_user: String,
}

async fn replay(
    port: u16,
    ca: &Path,
    startup_packet: &[u8],
    idp_message: &[u8],
) -> Result<Replay, String> {
    let mut s = tls_connect(port, ca).await;
    s.write_all(startup_packet).await.unwrap();
    let (tag, body) = read_message(&mut s).await;
    if tag == b'E' {
        return Err(String::from_utf8_lossy(&body).into_owned());
    }
    assert_eq!(
        (tag, body.as_slice()),
        (b'R', &14i32.to_be_bytes()[..]),
        "AuthenticationRequest 14"
    );
    s.write_all(idp_message).await.unwrap();
    let mut r = Replay {
        statuses: vec![],
        key_data_len: 0,
        tags: vec![],
        current_user: String::new(),
    };
    loop {
        let (tag, body) = read_message(&mut s).await;
        r.tags.push(tag);
        match tag {
            b'E' => return Err(String::from_utf8_lossy(&body).into_owned()),
            b'S' => {
                let mut parts = body.split(|b| *b == 0);
                let k = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
                let v = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
                r.statuses.push((k, v));
            }
            b'K' => r.key_data_len = body.len() + 4,
            b'Z' => break,
            _ => {}
        }
    }
    s.write_all(&message(b'Q', b"SELECT current_user\0"))
        .await
        .unwrap();
    loop {
        let (tag, body) = read_message(&mut s).await;
        match tag {
            b'D' => {
                let len = i32::from_be_bytes([body[2], body[3], body[4], body[5]]) as usize;
                r.current_user = String::from_utf8_lossy(&body[6..6 + len]).into_owned();
            }
            b'E' => return Err(String::from_utf8_lossy(&body).into_owned()),
            b'Z' => break,
            _ => {}
        }
    }
    s.write_all(&message(b'X', b"")).await.unwrap();
    Ok(r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jdbc_and_odbc_idp_handshakes_replayed_byte_for_byte() {
    let key = Key::generate("k1");
    let idp = Idp::start(vec![key.jwk.clone()]).await;
    let (_dir, certs) = temp_certs();
    let gw = gateway(&idp, &certs).await;
    let token = key.sign(&v1_claims());
    // The 'i' message as JDBC (ConnectionFactoryImpl) and ODBC (fe-auth.c) send it:
    // the token with a trailing NUL, counted in the length.
    let mut with_nul = token.as_bytes().to_vec();
    with_nul.push(0);
    let i_message = message(b'i', &with_nul);

    // Redshift JDBC 2.2.x, BasicJwtCredentialsProvider on the IAM URL: no `user` at
    // all, client_protocol_version 3, idp_type AzureAD, provider_name.
    let jdbc = startup(&[
        ("database", "sluice"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO"),
        ("TimeZone", "UTC"),
        ("extra_float_digits", "2"),
        ("application_name", "[main]Main.main(Main.java:5)"),
        ("driver_version", "Redshift JDBC Driver 2.2.6.0"),
        ("os_version", "Linux 6.1.0 amd64"),
        (
            "plugin_name",
            "com.amazon.redshift.plugin.BasicJwtCredentialsProvider",
        ),
        ("client_protocol_version", "3"),
        ("idp_type", "AzureAD"),
        ("provider_name", PROVIDER),
    ]);
    let r = replay(gw.port, &certs.ca, &jdbc, &i_message)
        .await
        .expect("JDBC sign-in");
    assert_eq!(r.current_user, USER, "the user comes from the token");
    let status = |k: &str| {
        r.statuses
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
    };
    // What the JDBC driver checks (QueryExecutorImpl): anything else aborts it.
    assert_eq!(status("server_version").as_deref(), Some("8.0.2"));
    assert_eq!(status("client_encoding").as_deref(), Some("UTF8"));
    assert!(status("DateStyle").is_some_and(|d| d.starts_with("ISO")));
    for on_off in [
        "standard_conforming_strings",
        "integer_datetimes",
        "datashare_enabled",
        "external_database",
    ] {
        assert!(
            matches!(status(on_off).as_deref(), Some("on" | "off")),
            "{on_off}: {:?}",
            status(on_off)
        );
    }
    assert_eq!(
        status("server_protocol_version"),
        None,
        "plain row descriptions"
    );
    assert_eq!(r.key_data_len, 12, "BackendKeyData is exactly 12 bytes");
    assert!(!r.tags.contains(&b'v'), "no NegotiateProtocolVersion");
    assert!(r.tags.iter().all(|t| b"RSKZN".contains(t)), "{:?}", r.tags);

    // Redshift ODBC 2.1.x, JWT plugin: libpq fills `user` with the OS login, which
    // carries no authority; client_protocol_version 1; application_name last.
    let odbc = startup(&[
        ("user", "osuser"),
        ("database", "sluice"),
        ("client_protocol_version", "1"),
        ("driver_version", "Redshift ODBC Driver 2,1,17"),
        ("os_version", "Linux 6.1.0 x86_64 #1 SMP"),
        ("plugin_name", "JWT"),
        ("idp_type", "AzureAD"),
        ("provider_name", PROVIDER),
        ("application_name", "/usr/bin/isql"),
    ]);
    let r = replay(gw.port, &certs.ca, &odbc, &i_message)
        .await
        .expect("ODBC sign-in");
    assert_eq!(r.current_user, USER);

    // The same exchange with the Python driver's framing (no NUL) works too, and a
    // garbage token is refused with the reason.
    let r = replay(gw.port, &certs.ca, &odbc, &message(b'i', token.as_bytes())).await;
    assert_eq!(r.expect("no NUL").current_user, USER);
    let err = replay(gw.port, &certs.ca, &odbc, &message(b'i', b"not-a-token\0"))
        .await
        .err()
        .expect("refused");
    assert!(err.contains("28P01") && err.contains("not a JWT"), "{err}");

    // Without TLS the token is never asked for.
    let mut plain = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    plain.write_all(&jdbc).await.unwrap();
    let (tag, body) = read_message(&mut plain).await;
    let text = String::from_utf8_lossy(&body);
    assert_eq!(tag, b'E', "{text}");
    assert!(
        text.contains("28000") && text.contains("requires TLS"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redshift_connector_forwards_under_the_minted_identity() {
    let rig = crate::redshift::Rig::start(crate::redshift::Options::default()).await;
    // Redshift's own catalog views the driver's metadata calls probe; the stand-in
    // PostgreSQL gets the one it lacks.
    rig.pg
        .sql("dev", "CREATE VIEW public.svv_external_schemas AS SELECT CAST(NULL AS name) AS schemaname WHERE false; GRANT SELECT ON public.svv_external_schemas TO iam_users;")
        .expect("stand-in view");
    let (ok, _, text) =
        redshift_connector(rig.port, &rig.pg.ca, "forward", &["alice", "alice-pw"]).await;
    assert!(ok, "{text}");
    assert_eq!(identity_line(&text)["current_user"], "IAM:alice", "{text}");
}
