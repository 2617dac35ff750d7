//! Token (OIDC / Azure AD) logins against the identity provider in `idp.rs`.

use std::sync::atomic::Ordering;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::harness::{
    Gateway, GatewayConfig, connect_plain, identity, psql_command, run_sluice, sluice_command,
    sqlstate, stderr, stdout,
};
use crate::idp::{CLIENT_ID, Idp, Key, TID, USER, now, v1_claims, v1_issuer, v2_claims, v2_issuer};

async fn gateway(idp: &Idp, plaintext_loopback: bool) -> Gateway {
    let issuer = |iss: String, aud: &str| {
        format!(
            "[[auth.oidc.issuers]]\nissuer = \"{iss}\"\ndiscovery_url = \"{}\"\naudiences = [\"{aud}\"]\ntenants = [\"{TID}\"]\n",
            idp.discovery(iss.contains("v2.0"))
        )
    };
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), "graph-secret\n").unwrap();
    let (_, secret_file) = secret.keep().unwrap();
    let extra = format!(
        "[auth.oidc]\njwks_min_refresh_secs = 1\nallow_insecure_http = true\nallow_plaintext_loopback = {plaintext_loopback}\n\
         [auth.oidc.graph]\nendpoint = \"http://127.0.0.1:{port}/graph\"\ntoken_url = \"http://127.0.0.1:{port}/graph-token\"\n\
         client_id = \"{CLIENT_ID}\"\nclient_secret_file = \"{secret}\"\n{}{}\n\
         [[role_mapping]]\napp_role = \"Lake.Admin\"\nroles = [\"admin\"]\n\n\
         [[role_mapping]]\ngroup = \"g-sales\"\nroles = [\"sales\", \"analyst\"]\n\n\
         [[roles]]\nname = \"admin\"\nread = [\"*\"]\n\n\
         [[roles]]\nname = \"sales\"\nread = [\"nyc.zones\"]\nrow_limit = 100\n",
        issuer(v1_issuer(), "api://sluice"),
        issuer(v2_issuer(), CLIENT_ID),
        port = idp.port,
        secret = secret_file.display(),
    );
    GatewayConfig::demo().extra(&extra).start().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_v1_and_v2_tokens_log_in_and_map_to_roles() {
    let key = Key::generate("k1");
    let idp = Idp::start(vec![key.jwk.clone()]).await;
    let gw = gateway(&idp, true).await;

    let client = connect_plain(gw.port, USER, &key.sign(&v1_claims()))
        .await
        .expect("v1 token login");
    let id = identity(&client).await;
    assert_eq!(id[0], USER);
    assert_eq!(id[1], "token");
    assert_eq!(id[3], format!("{TID}/oid-ann"));
    assert_eq!(id[4], "2");
    assert_eq!(id[6], "sales, analyst", "the g-sales rule applies");
    let who: String = client
        .query_one("SELECT current_user", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, USER);

    // v2 token, and the login name compares case-insensitively.
    let client = connect_plain(gw.port, &USER.to_uppercase(), &key.sign(&v2_claims()))
        .await
        .expect("v2 token login");
    assert_eq!(
        identity(&client).await[6],
        "admin",
        "the first matching rule wins"
    );

    // No rule matches: the base role.
    let mut claims = v1_claims();
    claims["groups"] = json!(["g-nothing"]);
    let client = connect_plain(gw.port, USER, &key.sign(&claims))
        .await
        .unwrap();
    assert_eq!(identity(&client).await[6], "base");

    // Local accounts keep working next to token logins.
    let local = gw.connect().await;
    assert_eq!(identity(&local).await[1], "local");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_cleanly() {
    let key = Key::generate("k1");
    let idp = Idp::start(vec![key.jwk.clone()]).await;
    let gw = gateway(&idp, true).await;
    let good = key.sign(&v1_claims());
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = v1_claims();
        f(&mut c);
        key.sign(&c)
    };
    let (h, p, s) = {
        let parts: Vec<&str> = good.split('.').collect();
        (
            parts[0].to_owned(),
            parts[1].to_owned(),
            parts[2].to_owned(),
        )
    };
    let mut payload: Value = serde_json::from_slice(&B64URL.decode(&p).unwrap()).unwrap();
    payload["upn"] = json!("mallory@contoso.com");
    let tampered = format!("{h}.{}.{s}", B64URL.encode(payload.to_string()));
    let none = format!(
        "{}.{}.",
        B64URL.encode(json!({"alg": "none", "typ": "JWT"}).to_string()),
        B64URL.encode(v1_claims().to_string())
    );
    let mut hs_header = Header::new(Algorithm::HS256);
    hs_header.kid = Some("k1".into());
    let hs256 = jsonwebtoken::encode(
        &hs_header,
        &v1_claims(),
        &EncodingKey::from_secret(&key.public_pem),
    )
    .unwrap();
    let mut unknown_kid_header = Header::new(Algorithm::RS256);
    unknown_kid_header.kid = Some("not-a-key".into());
    let unknown_kid = jsonwebtoken::encode(
        &unknown_kid_header,
        &v1_claims(),
        &EncodingKey::from_rsa_pem(&key.pem).unwrap(),
    )
    .unwrap();

    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            with(&|c| {
                c["exp"] = json!(now() - 3600);
                c["nbf"] = json!(now() - 7200)
            }),
            "expired",
        ),
        (
            "not yet valid",
            with(&|c| c["nbf"] = json!(now() + 3600)),
            "not valid yet",
        ),
        (
            "wrong issuer",
            with(&|c| c["iss"] = json!("https://evil.example/")),
            "not trusted",
        ),
        (
            "wrong audience",
            with(&|c| c["aud"] = json!("api://other")),
            "audience",
        ),
        (
            "disallowed tenant",
            with(&|c| c["tid"] = json!("99999999-0000-0000-0000-000000000000")),
            "tenant",
        ),
        ("alg none", none, "not accepted"),
        ("HS256 with the public key", hs256, "not accepted"),
        ("unknown kid", unknown_kid, "unknown"),
        ("tampered payload", tampered, "signature"),
        (
            "truncated",
            good[..good.len() - 12].to_owned(),
            "malformed|signature",
        ),
        ("garbage", "hello, not a token".to_owned(), "not a JWT"),
        (
            "oversized",
            format!("{good}{}", "A".repeat(65_100 - good.len())),
            "too large",
        ),
        (
            "other user's token",
            with(&|c| c["upn"] = json!("bob@contoso.com")),
            "belongs to",
        ),
    ];
    // Tokens signed with the real key whose JOSE header or JSON RFC 7515/7519/8725
    // says to refuse: each is otherwise valid.
    let claims_text = v1_claims().to_string();
    let header = |extra: &str| format!(r#"{{"alg":"RS256","typ":"JWT","kid":"k1"{extra}}}"#);
    let mut cases = cases;
    let forged: Vec<(&str, String, &str)> = vec![
        (
            "crit naming an unknown extension",
            key.sign_raw(&header(r#","crit":["exp-x"],"exp-x":1"#), &claims_text),
            "critical",
        ),
        (
            "jku pointing at the attacker's keys",
            key.sign_raw(
                &header(r#","jku":"https://evil.example/keys""#),
                &claims_text,
            ),
            "jku",
        ),
        (
            "x5u pointing at the attacker's certificate",
            key.sign_raw(
                &header(r#","x5u":"https://evil.example/cert""#),
                &claims_text,
            ),
            "x5u",
        ),
        (
            "embedded jwk",
            key.sign_raw(&header(&format!(r#","jwk":{}"#, key.jwk)), &claims_text),
            "jwk",
        ),
        (
            "duplicate alg in the header",
            key.sign_raw(r#"{"alg":"RS256","kid":"k1","alg":"none"}"#, &claims_text),
            "not valid JSON",
        ),
        (
            "duplicate aud in the claims",
            key.sign_raw(
                &header(""),
                &claims_text.replacen('{', r#"{"aud":"api://other","#, 1),
            ),
            "not valid JSON",
        ),
        (
            "kid path traversal",
            key.sign_raw(
                r#"{"alg":"RS256","typ":"JWT","kid":"../../../../dev/null"}"#,
                &claims_text,
            ),
            "unknown",
        ),
        (
            "kid with a NUL",
            key.sign_raw(
                r#"{"alg":"RS256","typ":"JWT","kid":"k1\u0000x"}"#,
                &claims_text,
            ),
            "kid",
        ),
        (
            "issued in the future",
            with(&|c| c["iat"] = json!(now() + 3600)),
            "future",
        ),
    ];
    cases.extend(forged);
    for (name, token, reason) in cases {
        let err = connect_plain(gw.port, USER, &token)
            .await
            .err()
            .unwrap_or_else(|| panic!("{name}: accepted"));
        assert_eq!(sqlstate(&err), "28P01", "{name}: {err}");
        let text = format!("{:?}", err);
        assert!(
            reason.split('|').any(|r| text.contains(r)),
            "{name}: expected `{reason}` in {text}"
        );
    }
    // Past the protocol's limit: a clean protocol error, not a crash.
    let err = connect_plain(gw.port, USER, &"A".repeat(70_000))
        .await
        .expect_err("refused");
    assert_eq!(sqlstate(&err), "08P01");
    // The gateway is fine afterwards.
    connect_plain(gw.port, USER, &good)
        .await
        .expect("valid token still works");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_refetches_keys_and_an_idp_outage_keeps_cached_keys() {
    let old = Key::generate("old");
    let new = Key::generate("new");
    let idp = Idp::start(vec![old.jwk.clone()]).await;
    let gw = gateway(&idp, true).await;
    connect_plain(gw.port, USER, &old.sign(&v1_claims()))
        .await
        .expect("old key");
    assert_eq!(idp.jwks_fetches.load(Ordering::SeqCst), 1);
    // Unknown kids do not hammer the IdP: at most one fetch per refresh interval.
    for _ in 0..5 {
        assert!(
            connect_plain(gw.port, USER, &new.sign(&v1_claims()))
                .await
                .is_err()
        );
    }
    assert!(idp.jwks_fetches.load(Ordering::SeqCst) <= 2);
    // The IdP rotates: the new key appears in the JWKS.
    idp.keys.lock().unwrap().push(new.jwk.clone());
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    connect_plain(gw.port, USER, &new.sign(&v1_claims()))
        .await
        .expect("new key after rotation");
    // The IdP goes down: keys already cached keep working.
    idp.up.store(false, Ordering::SeqCst);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    connect_plain(gw.port, USER, &old.sign(&v1_claims()))
        .await
        .expect("cached key during outage");
    connect_plain(gw.port, USER, &new.sign(&v1_claims()))
        .await
        .expect("cached key during outage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_need_tls() {
    let key = Key::generate("k1");
    let idp = Idp::start(vec![key.jwk.clone()]).await;
    let gw = gateway(&idp, false).await;
    let token = key.sign(&v1_claims());
    let err = connect_plain(gw.port, USER, &token)
        .await
        .expect_err("plaintext token login refused");
    assert_eq!(sqlstate(&err), "28000");
    // Over TLS (psql, sslmode=require) the same token works.
    let out = psql_command(gw.port, "sluice", USER)
        .args(["-A", "-t", "-c", "SHOW sluice.identity"])
        .env("PGPASSWORD", &token)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("sales, analyst"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_overage_is_resolved_through_graph_and_cached() {
    let key = Key::generate("k1");
    let idp = Idp::start(vec![key.jwk.clone()]).await;
    let gw = gateway(&idp, true).await;
    // Over 200 groups: Azure replaces `groups` with a pointer to Graph.
    let mut claims = v1_claims();
    let obj = claims.as_object_mut().unwrap();
    obj.remove("groups");
    obj.insert("oid".into(), json!("oid-many"));
    obj.insert("_claim_names".into(), json!({"groups": "src1"}));
    obj.insert(
        "_claim_sources".into(),
        json!({"src1": {"endpoint": "https://graph.windows.net/tenant/users/oid-many/getMemberObjects"}}),
    );
    let token = key.sign(&claims);
    for _ in 0..3 {
        let client = connect_plain(gw.port, USER, &token)
            .await
            .expect("overage login");
        let id = identity(&client).await;
        assert_eq!(id[4], "3", "groups come from Graph");
        assert_eq!(id[6], "sales, analyst");
    }
    assert_eq!(
        idp.graph_calls.load(Ordering::SeqCst),
        1,
        "resolved groups are cached"
    );
    // A user Graph does not know: a clear refusal, not a silent base role.
    claims["oid"] = json!("oid-unknown");
    let err = connect_plain(gw.port, USER, &key.sign(&claims))
        .await
        .expect_err("refused");
    assert!(format!("{err:?}").contains("group membership"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_login_device_code_flow_feeds_psql_through_pgpass() {
    let key = Key::generate("k1");
    let idp = Idp::start(vec![key.jwk.clone()]).await;
    let gw = gateway(&idp, false).await;
    let token = key.sign(&v1_claims());
    *idp.device_token.lock().unwrap() = token.clone();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("login.toml");
    std::fs::write(
        &config,
        format!(
            "[auth.oidc]\nallow_insecure_http = true\n[[auth.oidc.issuers]]\nissuer = \"{iss}\"\naudiences = [\"api://sluice\"]\n\
             [auth.oidc.login]\nissuer = \"{iss}\"\ndiscovery_url = \"{}\"\nclient_id = \"{CLIENT_ID}\"\nscope = \"api://sluice/.default\"\n",
            idp.discovery(false),
            iss = v1_issuer(),
        ),
    )
    .unwrap();
    let out = run_sluice(sluice_command(["login", "--config"]).arg(&config)).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), token);
    assert!(
        stderr(&out).contains("ABCD-EFGH"),
        "the user is told the code"
    );

    // --pgpass: psql then logs in without being handed the token.
    let passfile = dir.path().join("pgpass");
    let out = run_sluice(
        sluice_command([
            "login",
            "--pgpass",
            "--host",
            "127.0.0.1",
            "--port",
            &gw.port.to_string(),
            "--user",
            USER,
            "--config",
        ])
        .arg(&config)
        .env("PGPASSFILE", &passfile),
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = psql_command(gw.port, "sluice", USER)
        .args(["-A", "-t", "-w", "-c", "SELECT current_user"])
        .env("PGPASSFILE", &passfile)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), USER);
}
