use super::*;

fn owned(sql: &str) -> String {
    match redact(sql) {
        Cow::Owned(text) => text,
        Cow::Borrowed(_) => panic!("expected a redaction of {sql}"),
    }
}

fn untouched(sql: &str) {
    match redact(sql) {
        Cow::Borrowed(text) => assert_eq!(text, sql),
        Cow::Owned(text) => panic!("{sql} was rewritten to {text}"),
    }
}

#[test]
fn role_passwords() {
    assert_eq!(
        owned("CREATE USER alice WITH PASSWORD 'hunter2' VALID UNTIL '2030-01-01'"),
        "CREATE USER alice WITH PASSWORD '***' VALID UNTIL '2030-01-01'"
    );
    assert_eq!(
        owned("alter role bob encrypted password 'md5abc';"),
        "alter role bob encrypted password '***';"
    );
    assert_eq!(
        owned("ALTER USER bob UNENCRYPTED PASSWORD 'it''s'  LOGIN"),
        "ALTER USER bob UNENCRYPTED PASSWORD '***'  LOGIN"
    );
    assert_eq!(
        owned("ALTER ROLE bob PASSWORD E'a\\'b'"),
        "ALTER ROLE bob PASSWORD '***'"
    );
    assert_eq!(
        owned("ALTER ROLE bob PASSWORD $pw$se'cret$pw$ LOGIN"),
        "ALTER ROLE bob PASSWORD '***' LOGIN"
    );
    assert_eq!(
        owned("CREATE USER MAPPING FOR u SERVER s OPTIONS (user 'u', password 'p')"),
        "CREATE USER MAPPING FOR u SERVER s OPTIONS (user 'u', password '***')"
    );
    // Adjacent literals are one string to PostgreSQL.
    assert_eq!(
        owned("ALTER ROLE bob PASSWORD 'abc'\n'def'"),
        "ALTER ROLE bob PASSWORD '***'\n'***'"
    );
    // Comments around it stay byte-identical.
    assert_eq!(
        owned("/* rotate */ ALTER ROLE\tbob PASSWORD /* new */ 'x' -- done"),
        "/* rotate */ ALTER ROLE\tbob PASSWORD /* new */ '***' -- done"
    );
}

#[test]
fn password_without_a_secret_stays() {
    untouched("ALTER ROLE bob PASSWORD NULL");
    untouched("CREATE USER carol PASSWORD DISABLE");
    untouched("ALTER ROLE bob PASSWORD $1");
    untouched("SET password_encryption = 'scram-sha-256'");
}

#[test]
fn redshift_credentials() {
    assert_eq!(
        owned(
            "COPY t FROM 's3://b/k' CREDENTIALS 'aws_access_key_id=AKIA;aws_secret_access_key=abc' CSV"
        ),
        "COPY t FROM 's3://b/k' CREDENTIALS '***' CSV"
    );
    assert_eq!(
        owned(
            "UNLOAD ('select 1') TO 's3://b/x' WITH CREDENTIALS AS 'aws_iam_role=x;master_symmetric_key=k'"
        ),
        "UNLOAD ('select 1') TO 's3://b/x' WITH CREDENTIALS AS '***'"
    );
    assert_eq!(
        owned(
            "COPY t FROM 's3://b/k' ACCESS_KEY_ID 'AKIA' SECRET_ACCESS_KEY 'abc' SESSION_TOKEN 'tok'"
        ),
        "COPY t FROM 's3://b/k' ACCESS_KEY_ID '***' SECRET_ACCESS_KEY '***' SESSION_TOKEN '***'"
    );
    assert_eq!(
        owned(
            "UNLOAD ('select 1') TO 's3://b/x' IAM_ROLE 'arn:aws:iam::1:role/r' MASTER_SYMMETRIC_KEY 'key' ENCRYPTED"
        ),
        "UNLOAD ('select 1') TO 's3://b/x' IAM_ROLE 'arn:aws:iam::1:role/r' MASTER_SYMMETRIC_KEY '***' ENCRYPTED"
    );
}

#[test]
fn iam_roles_stay() {
    untouched("COPY t FROM 's3://b/k' IAM_ROLE 'arn:aws:iam::123:role/load' CSV");
}

#[test]
fn untokenizable_text_with_a_credential_is_replaced_whole() {
    assert_eq!(owned("ALTER ROLE bob PASSWORD 'hunter2"), UNTOKENIZABLE);
    assert_eq!(
        owned("COPY t FROM 's3://b' CREDENTIALS 'aws_secret"),
        UNTOKENIZABLE
    );
    // No credential named: unchanged, even broken.
    untouched("SELECT 'unterminated");
}

#[test]
fn ordinary_statements_are_borrowed() {
    untouched("SELECT a, b FROM t WHERE c = 'x'");
    untouched("INSERT INTO t VALUES (1, 'two')");
    untouched("");
}

#[test]
fn the_word_in_a_literal_is_left_alone() {
    untouched("SELECT 'password'");
    untouched("SELECT 'my PASSWORD is x' AS note");
    untouched("SELECT password_hash FROM users");
}

#[test]
fn fast_path_search() {
    assert!(contains_ignore_case(
        "ALTER ROLE x PassWord 'y'",
        "password"
    ));
    assert!(contains_ignore_case("password", "password"));
    assert!(!contains_ignore_case("passwor", "password"));
    assert!(!contains_ignore_case("é café", "password"));
}

#[test]
fn the_one_pass_test_finds_what_a_scan_per_keyword_finds() {
    for sql in [
        "",
        "p",
        "SELECT abalance FROM pgbench_accounts WHERE aid = 1",
        "ALTER USER a PASSWORD 'x'",
        "alter user a passworD 'x'",
        "copy t from 's3://b' CREDENTIALS 'aws_access_key_id=A'",
        "ACCESS_KEY_ID 'a'",
        "x SECRET_ACCESS_KEY",
        "session_toke",
        "SESSION_TOKEN",
        "mASTER_SYMMETRIC_KEY",
        "é passwörd café password",
        "passwor",
    ] {
        let by_scans = KEYWORDS.iter().any(|k| contains_ignore_case(sql, k));
        assert_eq!(mentions_keyword(sql), by_scans, "{sql}");
    }
}
