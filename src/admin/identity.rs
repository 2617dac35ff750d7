//! `SHOW sluice.identity`: who the session is, as Sluice resolved it.

use super::{AdminView, ViewContext};
use crate::auth::AuthMethod;

pub struct IdentityView;

impl AdminView for IdentityView {
    fn name(&self) -> &'static str {
        "sluice.identity"
    }

    fn columns(&self) -> &'static [&'static str] {
        &[
            "user",
            "method",
            "issuer",
            "subject",
            "group_count",
            "groups",
            "roles",
        ]
    }

    fn rows(&self, cx: &ViewContext<'_>) -> Vec<Vec<String>> {
        let id = cx.identity;
        let (method, issuer, subject) = match &id.method {
            AuthMethod::Local => ("local", String::new(), String::new()),
            AuthMethod::Token { issuer, subject } => ("token", issuer.clone(), subject.clone()),
            AuthMethod::Ldap { dn } => ("ldap", String::new(), dn.clone()),
        };
        vec![vec![
            id.user.clone(),
            method.to_string(),
            issuer,
            subject,
            id.groups.len().to_string(),
            id.groups.join(", "),
            id.roles.join(", "),
        ]]
    }
}
