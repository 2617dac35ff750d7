//! `/readyz`: whether this Sluice can serve statements now. Ready when it listens,
//! every OIDC issuer's signing keys are cached or fetchable, every upstream's
//! endpoint (looked up through the AWS API when not configured) accepts a
//! connection, and the audit trail is not refusing statements. The body lists
//! every check with its result, so an operator sees why at once.

use std::time::Duration;

use hyper::Response;
use hyper::StatusCode;

use super::{Body, Shared, text};

/// How long one check may take (checks run concurrently, so a probe answers
/// within about this long even when everything is down).
const CHECK_BUDGET: Duration = Duration::from_secs(2);

/// A readiness answer is reused for this long: probes from several replicas or
/// an eager scraper cost one round of checks (an AWS lookup, connects, a JWKS
/// fetch) per second at most.
const REUSE: Duration = Duration::from_secs(1);

pub(super) async fn readyz(shared: &Shared) -> Response<Body> {
    let cached = shared
        .readiness
        .lock()
        .ok()
        .and_then(|l| l.clone())
        .filter(|(at, _, _)| at.elapsed() < REUSE);
    let (ready, body) = match cached {
        Some((_, ready, body)) => (ready, body),
        None => {
            let (ready, body) = check(shared).await;
            if let Ok(mut l) = shared.readiness.lock() {
                *l = Some((std::time::Instant::now(), ready, body.clone()));
            }
            (ready, body)
        }
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    text(status, body)
}

async fn check(shared: &Shared) -> (bool, String) {
    let mut checks: Vec<(String, Result<String, String>)> = vec![(
        "listener".into(),
        Ok(format!("listening on {}", shared.config.server.listen)),
    )];
    let idp = async {
        match &shared.oidc {
            Some(oidc) => match tokio::time::timeout(CHECK_BUDGET, oidc.readiness()).await {
                Ok(r) => r
                    .into_iter()
                    .map(|(issuer, state)| (format!("issuer {issuer}"), state))
                    .collect(),
                Err(_) => vec![(
                    "issuers".to_string(),
                    Err("signing keys could not be fetched within 2 s".to_string()),
                )],
            },
            None => Vec::new(),
        }
    };
    let upstreams = futures::future::join_all(shared.upstreams.all().iter().map(|u| async move {
        (
            format!("upstream {}", u.name()),
            u.probe(CHECK_BUDGET).await,
        )
    }));
    let (idp, upstreams) = tokio::join!(idp, upstreams);
    checks.extend(idp);
    checks.extend(upstreams);
    if let Some(audit) = &shared.observer.audit {
        let state = match audit.refusal() {
            Some(e) => Err(e.message),
            None => Ok("writing".to_string()),
        };
        checks.push(("audit".into(), state));
    }
    let ready = checks.iter().all(|(_, s)| s.is_ok());
    let mut body = String::from(if ready { "ready\n" } else { "not ready\n" });
    for (name, state) in &checks {
        match state {
            Ok(m) => body.push_str(&format!("ok   {name}: {m}\n")),
            Err(m) => body.push_str(&format!("FAIL {name}: {m}\n")),
        }
    }
    (ready, body)
}
