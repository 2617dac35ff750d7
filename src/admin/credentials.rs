//! `SHOW sluice.credentials` (admins): the minted database credentials in the
//! cache — users, groups and expiry, never a password.

use super::{AdminView, ViewContext};

pub struct CredentialsView;

impl AdminView for CredentialsView {
    fn name(&self) -> &'static str {
        "sluice.credentials"
    }

    fn columns(&self) -> &'static [&'static str] {
        &[
            "upstream",
            "database",
            "requested_user",
            "groups",
            "db_user",
            "expires_in_secs",
        ]
    }

    fn admin_only(&self) -> bool {
        true
    }

    fn rows(&self, cx: &ViewContext<'_>) -> Vec<Vec<String>> {
        cx.upstreams
            .all()
            .iter()
            .flat_map(|u| {
                u.credentials.cached().into_iter().map(move |c| {
                    vec![
                        u.name().to_owned(),
                        c.database,
                        c.requested_user,
                        c.groups.join(","),
                        c.db_user,
                        c.expires_in
                            .map(|d| d.as_secs().to_string())
                            .unwrap_or_else(|| "never".into()),
                    ]
                })
            })
            .collect()
    }
}
