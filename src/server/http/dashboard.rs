//! The dashboard: live sessions, top query groups, routes, and the admin views
//! (result cache, gateway views, pools, credentials, lake) as tables. The page is
//! rendered on the server (it reads without JavaScript); a small script refetches
//! `/dashboard/data` every two seconds and redraws the tables. Nothing secret is
//! shown: no passwords, tokens or statement literals (query groups show
//! normalised text).

use std::collections::BTreeMap;
use std::time::SystemTime;

use hyper::{Response, StatusCode};
use serde::Serialize;

use super::{Body, Shared, respond};
use crate::admin::{self, ViewContext};
use crate::auth::Identity;
use crate::auth::policy::Policy;

const PAGE: &str = include_str!("dashboard.html");
/// Query groups shown (by total time).
const TOP_GROUPS: usize = 20;

#[derive(Serialize)]
struct Section {
    id: String,
    title: String,
    columns: Vec<String>,
    rows: Vec<Vec<String>>,
}

#[derive(Serialize)]
struct Dashboard {
    generated: String,
    version: &'static str,
    uptime_secs: u64,
    sections: Vec<Section>,
}

fn section(id: &str, title: &str, columns: &[&str], rows: Vec<Vec<String>>) -> Section {
    Section {
        id: id.to_owned(),
        title: title.to_owned(),
        columns: columns.iter().map(|c| (*c).to_owned()).collect(),
        rows,
    }
}

fn secs_since(t: SystemTime) -> String {
    SystemTime::now()
        .duration_since(t)
        .map(|d| d.as_secs().to_string())
        .unwrap_or_default()
}

fn gather(shared: &Shared, identity: &Identity, policy: &Policy) -> Dashboard {
    let observer = &shared.observer;
    let sessions = observer
        .board
        .snapshot()
        .into_iter()
        .map(|s| {
            vec![
                s.who.session.to_string(),
                s.who.user.clone(),
                s.application.clone(),
                s.state.name().to_owned(),
                s.route.to_owned(),
                s.who.client.clone(),
                s.who.tls.unwrap_or("no").to_owned(),
                secs_since(s.connect_time),
                s.statements.to_string(),
                s.server
                    .as_ref()
                    .map(|l| format!("{} ({})", l.upstream, l.db_user))
                    .unwrap_or_default(),
            ]
        })
        .collect();
    let groups = observer
        .query_groups
        .as_ref()
        .map(|g| g.rows())
        .unwrap_or_default();
    let mut routes: BTreeMap<&str, (u64, f64, u64)> = BTreeMap::new();
    for g in &groups {
        let r = routes.entry(g.route).or_default();
        r.0 += g.calls;
        r.1 += g.total_time;
        r.2 += g.errors;
    }
    let top = groups
        .iter()
        .take(TOP_GROUPS)
        .map(|g| {
            vec![
                g.query.clone(),
                g.user.clone(),
                g.application.clone(),
                g.route.to_owned(),
                g.calls.to_string(),
                format!("{:.1}", g.total_time),
                format!("{:.2}", g.mean_time),
                format!("{:.2}", g.p95_time),
                g.errors.to_string(),
                g.cache_hits.to_string(),
            ]
        })
        .collect();
    let routes = routes
        .into_iter()
        .map(|(route, (calls, time, errors))| {
            vec![
                route.to_owned(),
                calls.to_string(),
                format!("{time:.1}"),
                errors.to_string(),
            ]
        })
        .collect();
    let mut sections = vec![
        section(
            "sessions",
            "Live sessions",
            &[
                "session",
                "user",
                "application",
                "state",
                "route",
                "client",
                "tls",
                "connected_secs",
                "statements",
                "upstream",
            ],
            sessions,
        ),
        section(
            "query_groups",
            "Top query groups (by total time)",
            &[
                "query",
                "user",
                "application",
                "route",
                "calls",
                "total_ms",
                "mean_ms",
                "p95_ms",
                "errors",
                "cache_hits",
            ],
            top,
        ),
        section(
            "routes",
            "Routes (since the query groups were reset)",
            &["route", "calls", "total_ms", "errors"],
            routes,
        ),
    ];
    let cx = ViewContext {
        identity,
        policy,
        engine: &shared.engine,
        results: shared.results.as_deref(),
        matviews: shared.matviews.as_deref(),
        jobs: shared.jobs.as_deref(),
        upstreams: &shared.upstreams,
        observer: &shared.observer,
        database: &shared.config.server.database,
        workload: shared.workload.as_deref(),
    };
    for view in admin::VIEWS {
        if view.name() == "sluice.identity" {
            continue;
        }
        let name = view.name().trim_start_matches("sluice.");
        sections.push(section(
            name,
            &name.replace('_', " "),
            view.columns(),
            view.rows(&cx),
        ));
    }
    Dashboard {
        generated: chrono::Utc::now()
            .format("%Y-%m-%d %H:%M:%S UTC")
            .to_string(),
        version: env!("CARGO_PKG_VERSION"),
        uptime_secs: observer.started.elapsed().as_secs(),
        sections,
    }
}

pub(super) fn data(shared: &Shared, identity: &Identity, policy: &Policy) -> Response<Body> {
    let json = serde_json::to_vec(&gather(shared, identity, policy)).unwrap_or_default();
    respond(StatusCode::OK, "application/json", json)
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn render_sections(d: &Dashboard) -> String {
    let mut html = String::new();
    for s in &d.sections {
        html.push_str(&format!(
            "<section id=\"{}\"><h2>{} <span class=\"count\">{}</span></h2><table><thead><tr>",
            escape(&s.id),
            escape(&s.title),
            s.rows.len()
        ));
        for c in &s.columns {
            html.push_str(&format!("<th>{}</th>", escape(c)));
        }
        html.push_str("</tr></thead><tbody>");
        if s.rows.is_empty() {
            html.push_str(&format!(
                "<tr><td class=\"empty\" colspan=\"{}\">none</td></tr>",
                s.columns.len()
            ));
        }
        for row in &s.rows {
            html.push_str("<tr>");
            for v in row {
                html.push_str(&format!("<td>{}</td>", escape(v)));
            }
            html.push_str("</tr>");
        }
        html.push_str("</tbody></table></section>");
    }
    html
}

pub(super) fn page(shared: &Shared, identity: &Identity, policy: &Policy) -> Response<Body> {
    let d = gather(shared, identity, policy);
    let html = PAGE
        .replace("{{version}}", &escape(d.version))
        .replace("{{user}}", &escape(&identity.user))
        .replace("{{generated}}", &escape(&d.generated))
        .replace("{{uptime}}", &d.uptime_secs.to_string())
        .replace("{{sections}}", &render_sections(&d));
    let mut r = respond(StatusCode::OK, "text/html; charset=utf-8", html);
    // The page's own script only; no framing by other sites.
    r.headers_mut().insert(
        "content-security-policy",
        hyper::header::HeaderValue::from_static(
            "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; frame-ancestors 'none'",
        ),
    );
    r
}
