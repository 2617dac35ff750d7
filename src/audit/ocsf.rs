//! `format = "ocsf"`: each event as an OCSF 1.3.0 event object.
//!
//! - login, login_failed, logoff → Authentication (class 3002, category 3 Identity
//!   & Access Management), activity 1 Logon / 2 Logoff (a logoff the gateway forced
//!   carries its reason in `status_detail`); terminate → the target's Logoff with
//!   the admin who ended it as `actor`.
//! - statement → Datastore Activity (class 6005, category 6 Application Activity):
//!   activity 5 Write when the statement writes tables, 4 Query when it only reads
//!   tables, 99 Other when Sluice did not see tables (SET, SHOW, `SELECT 1`, text
//!   relayed unparsed).
//!
//! Sluice's own fields without an OCSF attribute go to `unmapped`. The file sink
//! still adds `seq` and `prev` at the top level (not OCSF attributes).

use std::net::SocketAddr;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use super::event::{AuditEvent, StatementEvent, Who};

/// The OCSF schema version the records follow.
pub const OCSF_VERSION: &str = "1.3.0";

const AUTHENTICATION: (u64, &str) = (3002, "Authentication");
const IAM: (u64, &str) = (3, "Identity & Access Management");
const DATASTORE_ACTIVITY: (u64, &str) = (6005, "Datastore Activity");
const APPLICATION: (u64, &str) = (6, "Application Activity");

pub(super) fn to_ocsf(time: DateTime<Utc>, event: &AuditEvent) -> Value {
    match event {
        AuditEvent::Login { who } => authentication(time, who, (1, "Logon"), None, None),
        AuditEvent::LoginFailed {
            who,
            reason,
            sqlstate,
        } => authentication(time, who, (1, "Logon"), Some((reason, sqlstate)), None),
        AuditEvent::Logoff {
            who,
            duration_us,
            reason,
        } => {
            let mut event = authentication(time, who, (2, "Logoff"), None, Some(*duration_us));
            if let (Some(reason), Some(map)) = (reason, event.as_object_mut()) {
                map.insert("status_detail".into(), (*reason).into());
            }
            event
        }
        AuditEvent::Terminate { who, target } => {
            // The target's logoff, forced by the admin (the actor).
            let mut event = authentication(time, target, (2, "Logoff"), None, None);
            if let Some(map) = event.as_object_mut() {
                map.insert(
                    "actor".into(),
                    json!({
                        "user": user(who),
                        "session": { "uid": who.session.to_string() },
                    }),
                );
                map.insert(
                    "status_detail".into(),
                    "terminated by an administrator".into(),
                );
            }
            event
        }
        AuditEvent::Statement(statement) => datastore_activity(time, statement),
    }
}

/// The attributes every class has: classification, time, severity, status, metadata.
fn base(
    time: DateTime<Utc>,
    (class_uid, class_name): (u64, &str),
    (category_uid, category_name): (u64, &str),
    (activity_id, activity_name): (u64, &str),
    success: bool,
) -> Map<String, Value> {
    let fields = json!({
        "class_uid": class_uid,
        "class_name": class_name,
        "category_uid": category_uid,
        "category_name": category_name,
        "activity_id": activity_id,
        "activity_name": activity_name,
        "type_uid": class_uid * 100 + activity_id,
        "type_name": format!("{class_name}: {activity_name}"),
        "severity_id": 1,
        "severity": "Informational",
        "status_id": if success { 1 } else { 2 },
        "status": if success { "Success" } else { "Failure" },
        "time": time.timestamp_millis(),
        "metadata": {
            "version": OCSF_VERSION,
            "product": {
                "name": "Sluice",
                "vendor_name": "Sluice",
                "version": env!("CARGO_PKG_VERSION"),
            },
        },
    });
    match fields {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

fn authentication(
    time: DateTime<Utc>,
    who: &Who,
    activity: (u64, &str),
    failure: Option<(&String, &str)>,
    duration_us: Option<u64>,
) -> Value {
    let mut event = base(time, AUTHENTICATION, IAM, activity, failure.is_none());
    let (protocol_id, protocol) = auth_protocol(who.auth);
    event.insert("user".into(), user(who));
    if let Some(endpoint) = src_endpoint(&who.client) {
        event.insert("src_endpoint".into(), endpoint);
    }
    event.insert("auth_protocol_id".into(), protocol_id.into());
    event.insert("auth_protocol".into(), protocol.into());
    event.insert("logon_type_id".into(), 3.into());
    event.insert("logon_type".into(), "Network".into());
    // The schema wants `service` or `dst_endpoint`: the gateway is the service.
    event.insert("service".into(), json!({ "name": "Sluice" }));
    event.insert("session".into(), json!({ "uid": who.session.to_string() }));
    if let Some((reason, sqlstate)) = failure {
        event.insert("status_code".into(), sqlstate.into());
        event.insert("status_detail".into(), reason.as_str().into());
    }
    if let Some(us) = duration_us {
        event.insert("duration".into(), (us / 1000).into());
    }
    let mut unmapped = json!({
        "database": who.database,
        "application": who.application,
        "roles": who.roles,
        "groups": who.groups,
        "auth": who.auth,
    });
    if let (Some(tls), Some(map)) = (who.tls, unmapped.as_object_mut()) {
        map.insert("tls".into(), tls.into());
    }
    event.insert("unmapped".into(), unmapped);
    Value::Object(event)
}

fn datastore_activity(time: DateTime<Utc>, s: &StatementEvent) -> Value {
    let activity = if !s.tables_written.is_empty() {
        (5, "Write")
    } else if !s.tables_read.is_empty() {
        (4, "Query")
    } else {
        (99, "Other")
    };
    let success = matches!(s.sqlstate.get(..2), Some("00" | "01" | "02"));
    let mut event = base(time, DATASTORE_ACTIVITY, APPLICATION, activity, success);
    event.insert(
        "actor".into(),
        json!({
            "user": user(&s.who),
            "session": { "uid": s.who.session.to_string() },
            "app_name": s.application,
        }),
    );
    if let Some(endpoint) = src_endpoint(&s.who.client) {
        event.insert("src_endpoint".into(), endpoint);
    }
    event.insert(
        "database".into(),
        json!({ "name": s.who.database, "type_id": 1, "type": "Relational" }),
    );
    let mut query = json!({ "query_string": s.statement });
    if let (Some(parameters), Some(map)) = (&s.parameters, query.as_object_mut()) {
        map.insert("data".into(), json!({ "parameters": parameters }));
    }
    event.insert("query_info".into(), query);
    event.insert("status_code".into(), s.sqlstate.as_ref().into());
    if let Some(error) = &s.error {
        event.insert("status_detail".into(), error.as_str().into());
    }
    event.insert("duration".into(), (s.duration_us / 1000).into());
    let mut unmapped = json!({
        "route": s.route,
        "fingerprint": format!("{:016x}", s.fingerprint),
        "bytes": s.bytes,
        "tables_read": s.tables_read,
        "tables_written": s.tables_written,
        "roles": s.who.roles,
    });
    if let Some(map) = unmapped.as_object_mut() {
        if let Some(rows) = s.rows {
            map.insert("rows".into(), rows.into());
        }
        if let Some(group) = &s.query_group {
            map.insert("query_group".into(), group.as_str().into());
        }
        if let Some(tls) = s.who.tls {
            map.insert("tls".into(), tls.into());
        }
        if let Some(queue) = &s.queue {
            map.insert("queue".into(), queue.as_str().into());
            map.insert("queue_wait_us".into(), s.queue_wait_us.into());
        }
        if !s.rules.is_empty() {
            map.insert("rules".into(), s.rules.clone().into());
        }
    }
    event.insert("unmapped".into(), unmapped);
    Value::Object(event)
}

/// OCSF `user`: the login name, the IdP object id as `uid`, the tenant as `org.uid`.
fn user(who: &Who) -> Value {
    let mut user = Map::new();
    user.insert("name".into(), who.user.as_str().into());
    user.insert("type_id".into(), 1.into());
    user.insert("type".into(), "User".into());
    if let Some(oid) = &who.object_id {
        user.insert("uid".into(), oid.as_str().into());
    }
    if let Some(tenant) = &who.tenant {
        user.insert("org".into(), json!({ "uid": tenant }));
    }
    Value::Object(user)
}

/// `ip:port` as OCSF `network_endpoint`; anything else by name.
fn src_endpoint(client: &str) -> Option<Value> {
    if let Ok(addr) = client.parse::<SocketAddr>() {
        return Some(json!({ "ip": addr.ip().to_string(), "port": addr.port() }));
    }
    (!client.is_empty()).then(|| json!({ "name": client }))
}

/// Sluice's login methods as OCSF `auth_protocol_id` and `auth_protocol`.
fn auth_protocol(method: &str) -> (u64, String) {
    match method {
        "" => (0, "Unknown".into()),
        // An OAuth 2.0 access token from an OpenID Connect issuer.
        "token" => (6, "OAUTH 2.0".into()),
        "ldap" => (99, "LDAP".into()),
        "password" => (99, "Local password".into()),
        other => (99, other.into()),
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::sync::Arc;

    use super::*;

    fn who() -> Arc<Who> {
        Arc::new(Who {
            session: 42,
            user: "alice".into(),
            tenant: Some("t-1".into()),
            object_id: Some("o-1".into()),
            auth: "token",
            roles: vec!["analyst".into()],
            groups: 3,
            client: "10.0.0.7:51234".into(),
            tls: Some("TLSv1.3"),
            database: "sluice".into(),
            application: "psql".into(),
        })
    }

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_700_000_000_123).unwrap_or_default()
    }

    fn statement(written: &[&str], read: &[&str], sqlstate: &'static str) -> StatementEvent {
        StatementEvent {
            who: who(),
            application: "dbt".into(),
            query_group: Some("nightly".into()),
            route: "upstream",
            fingerprint: 0x0123_4567_89ab_cdef,
            statement: "INSERT INTO s.t SELECT * FROM s.u".into(),
            parameters: Some(vec![Some("1".into()), None]),
            tables_read: read.iter().map(|t| t.to_string()).collect(),
            tables_written: written.iter().map(|t| t.to_string()).collect(),
            duration_us: 12_345,
            rows: Some(7),
            bytes: 99,
            sqlstate: Cow::Borrowed(sqlstate),
            error: (sqlstate != "00000").then(|| "permission denied".to_string()),
            queue: None,
            queue_wait_us: 0,
            rules: Vec::new(),
        }
    }

    #[test]
    fn logins_and_logoffs_are_authentication_events() {
        let e = to_ocsf(at(), &AuditEvent::Login { who: who() });
        assert_eq!(e["class_uid"], 3002);
        assert_eq!(e["category_uid"], 3);
        assert_eq!(e["activity_id"], 1);
        assert_eq!(e["type_uid"], 300201);
        assert_eq!(e["status_id"], 1);
        assert_eq!(e["severity_id"], 1);
        assert_eq!(e["time"], 1_700_000_000_123_i64);
        assert_eq!(e["user"]["name"], "alice");
        assert_eq!(e["user"]["uid"], "o-1");
        assert_eq!(e["user"]["org"]["uid"], "t-1");
        assert_eq!(e["src_endpoint"], json!({"ip": "10.0.0.7", "port": 51234}));
        assert_eq!(e["auth_protocol_id"], 6);
        assert!(e.get("is_mfa").is_none());
        assert_eq!(e["metadata"]["version"], "1.3.0");
        assert_eq!(e["metadata"]["product"]["name"], "Sluice");
        assert_eq!(e["metadata"]["product"]["vendor_name"], "Sluice");
        assert_eq!(
            e["metadata"]["product"]["version"],
            env!("CARGO_PKG_VERSION")
        );

        let failed = AuditEvent::LoginFailed {
            who: who(),
            reason: "password authentication failed".into(),
            sqlstate: "28P01",
        };
        let e = to_ocsf(at(), &failed);
        assert_eq!(
            (e["activity_id"].clone(), e["status_id"].clone()),
            (json!(1), json!(2))
        );
        assert_eq!(e["status_detail"], "password authentication failed");
        assert_eq!(e["status_code"], "28P01");

        let logoff = AuditEvent::Logoff {
            who: who(),
            duration_us: 5_000_000,
            reason: None,
        };
        let e = to_ocsf(at(), &logoff);
        assert_eq!(e["activity_id"], 2);
        assert_eq!(e["type_uid"], 300202);
        assert_eq!(e["status_id"], 1);
        assert_eq!(e["duration"], 5000);

        let terminate = AuditEvent::Terminate {
            who: std::sync::Arc::new(Who {
                user: "root".into(),
                session: 9,
                ..Who::default()
            }),
            target: who(),
        };
        let e = to_ocsf(at(), &terminate);
        assert_eq!(e["activity_id"], 2);
        assert_eq!(e["actor"]["user"]["name"], "root");
        assert_eq!(e["user"]["name"], who().user.as_str());
    }

    #[test]
    fn statements_are_datastore_activity() {
        let write = AuditEvent::Statement(Box::new(statement(&["s.t"], &["s.u"], "00000")));
        let e = to_ocsf(at(), &write);
        assert_eq!(e["class_uid"], 6005);
        assert_eq!(e["category_uid"], 6);
        assert_eq!(e["activity_id"], 5);
        assert_eq!(e["type_uid"], 600505);
        assert_eq!(e["status_id"], 1);
        assert_eq!(e["status_code"], "00000");
        assert_eq!(e["actor"]["user"]["name"], "alice");
        assert_eq!(e["actor"]["app_name"], "dbt");
        assert_eq!(e["src_endpoint"]["port"], 51234);
        assert_eq!(e["database"]["name"], "sluice");
        assert_eq!(e["database"]["type_id"], 1);
        assert_eq!(
            e["query_info"]["query_string"],
            "INSERT INTO s.t SELECT * FROM s.u"
        );
        assert_eq!(e["query_info"]["data"]["parameters"], json!(["1", null]));
        assert_eq!(e["duration"], 12);
        let unmapped = &e["unmapped"];
        assert_eq!(unmapped["route"], "upstream");
        assert_eq!(unmapped["fingerprint"], "0123456789abcdef");
        assert_eq!(
            (unmapped["rows"].clone(), unmapped["bytes"].clone()),
            (json!(7), json!(99))
        );
        assert_eq!(unmapped["query_group"], "nightly");

        let query = AuditEvent::Statement(Box::new(statement(&[], &["s.u"], "42501")));
        let e = to_ocsf(at(), &query);
        assert_eq!(
            (e["activity_id"].clone(), e["type_uid"].clone()),
            (json!(4), json!(600504))
        );
        assert_eq!(e["status_id"], 2);
        assert_eq!(e["status_code"], "42501");
        assert_eq!(e["status_detail"], "permission denied");

        let other = AuditEvent::Statement(Box::new(statement(&[], &[], "00000")));
        assert_eq!(to_ocsf(at(), &other)["activity_id"], 99);
    }
}
