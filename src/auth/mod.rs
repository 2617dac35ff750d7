//! Who a client is: local service accounts (SCRAM-SHA-256), OIDC access tokens,
//! LDAP binds, and the group → role mapping, all resolved into one [`Identity`].

pub mod graph;
pub mod http;
pub mod jws;
pub mod ldap;
pub mod login;
pub mod oidc;
pub mod policy;
pub mod scram;

use std::collections::HashMap;

use crate::config::{AccessRules, Config, RoleMappingRule};
use scram::Verifier;

/// An authenticated user, as every later stage (routing, policy, audit) sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The name the client logged in as (`current_user`).
    pub user: String,
    /// Sluice roles granted to this user.
    pub roles: Vec<String>,
    /// How the user proved who they are.
    pub method: AuthMethod,
    /// IdP group ids from the token (empty for local accounts).
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthMethod {
    /// A `[[auth.users]]` account, SCRAM-SHA-256.
    Local,
    /// An OIDC access token: the issuer and the stable subject (`tid/oid`).
    Token { issuer: String, subject: String },
    /// A password checked by the LDAP directory: the user's DN.
    Ldap { dn: String },
}

impl Identity {
    /// Builds the identity of a validated token, mapping its claims to roles.
    pub fn from_token(token: &oidc::TokenIdentity, rules: &AccessRules) -> Identity {
        let roles = map_roles(&rules.role_mapping, &rules.base_role, token);
        Identity {
            user: token.username.clone(),
            roles,
            method: AuthMethod::Token {
                issuer: token.issuer.clone(),
                subject: token.subject.clone(),
            },
            groups: token
                .claim_values("groups")
                .into_iter()
                .map(str::to_owned)
                .collect(),
        }
    }
}

impl Identity {
    /// The identity of a user the LDAP directory accepted: its groups (DNs) are
    /// matched by `[[role_mapping]]` `group` rules like token groups.
    pub fn from_ldap(user: &str, found: &ldap::LdapUser, rules: &AccessRules) -> Identity {
        let claims = serde_json::json!({ "groups": found.groups });
        let as_token = oidc::TokenIdentity {
            username: user.to_owned(),
            subject: found.dn.clone(),
            issuer: "ldap".into(),
            claims: claims.as_object().cloned().unwrap_or_default(),
        };
        Identity {
            user: user.to_owned(),
            roles: map_roles(&rules.role_mapping, &rules.base_role, &as_token),
            method: AuthMethod::Ldap {
                dn: found.dn.clone(),
            },
            groups: found.groups.clone(),
        }
    }
}

/// The first `[[role_mapping]]` rule whose conditions all hold decides the roles; a
/// user matching none gets the base role.
pub fn map_roles(
    rules: &[RoleMappingRule],
    base_role: &str,
    token: &oidc::TokenIdentity,
) -> Vec<String> {
    let has = |claim: &str, value: &str| {
        token
            .claim_values(claim)
            .iter()
            .any(|v| v.eq_ignore_ascii_case(value))
    };
    for rule in rules {
        let ok = rule.group.as_deref().is_none_or(|g| has("groups", g))
            && rule.app_role.as_deref().is_none_or(|r| has("roles", r))
            && rule
                .username
                .as_deref()
                .is_none_or(|u| u.eq_ignore_ascii_case(&token.username))
            && rule.tenant.as_deref().is_none_or(|t| has("tid", t))
            && match (&rule.claim, &rule.value) {
                (Some(c), Some(v)) => has(c, v),
                _ => true,
            };
        if ok {
            return rule.roles.clone();
        }
    }
    vec![base_role.to_owned()]
}

struct LocalAccount {
    verifier: Verifier,
    roles: Vec<String>,
}

/// The `[[auth.users]]` accounts, with plaintext passwords turned into verifiers once at load.
pub struct LocalAccounts {
    accounts: HashMap<String, LocalAccount>,
}

impl LocalAccounts {
    pub fn from_config(config: &Config) -> Result<LocalAccounts, String> {
        let mut accounts = HashMap::new();
        for (i, user) in config.auth.users.iter().enumerate() {
            let verifier = match (&user.password, &user.scram) {
                (_, Some(stored)) => {
                    Verifier::parse(stored).map_err(|e| format!("auth.users[{i}].scram: {e}"))?
                }
                (Some(password), None) => Verifier::from_password(password),
                (None, None) => return Err(format!("auth.users[{i}]: no password or scram")),
            };
            accounts.insert(
                user.name.clone(),
                LocalAccount {
                    verifier,
                    roles: user.roles.clone(),
                },
            );
        }
        Ok(LocalAccounts { accounts })
    }

    pub fn verifier(&self, user: &str) -> Option<&Verifier> {
        self.accounts.get(user).map(|a| &a.verifier)
    }

    pub fn identity(&self, user: &str) -> Option<Identity> {
        self.accounts.get(user).map(|a| Identity {
            user: user.to_owned(),
            roles: a.roles.clone(),
            method: AuthMethod::Local,
            groups: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn token(claims: serde_json::Value) -> oidc::TokenIdentity {
        oidc::TokenIdentity {
            username: "ann@example.com".into(),
            subject: "t/o".into(),
            issuer: "https://idp/".into(),
            claims: claims.as_object().cloned().unwrap_or_default(),
        }
    }

    fn rule(group: Option<&str>, app_role: Option<&str>, roles: &[&str]) -> RoleMappingRule {
        RoleMappingRule {
            group: group.map(String::from),
            app_role: app_role.map(String::from),
            username: None,
            tenant: None,
            claim: None,
            value: None,
            roles: roles.iter().map(|r| r.to_string()).collect(),
        }
    }

    #[test]
    fn first_matching_rule_wins_and_base_role_otherwise() {
        let rules = vec![
            rule(Some("g-admin"), None, &["admin"]),
            rule(Some("g-sales"), None, &["sales"]),
            rule(None, Some("Lake.Read"), &["reader"]),
        ];
        let t = token(json!({"groups": ["g-sales", "g-admin"]}));
        assert_eq!(map_roles(&rules, "base", &t), vec!["admin"]);
        let t = token(json!({"groups": ["g-sales"]}));
        assert_eq!(map_roles(&rules, "base", &t), vec!["sales"]);
        let t = token(json!({"roles": ["Lake.Read"]}));
        assert_eq!(map_roles(&rules, "base", &t), vec!["reader"]);
        let t = token(json!({"groups": ["other"]}));
        assert_eq!(map_roles(&rules, "base", &t), vec!["base"]);
    }

    #[test]
    fn all_conditions_of_a_rule_must_hold() {
        let mut r = rule(Some("g1"), None, &["x"]);
        r.tenant = Some("tenant-a".into());
        let t = token(json!({"groups": ["g1"], "tid": "tenant-b"}));
        assert_eq!(map_roles(&[r.clone()], "base", &t), vec!["base"]);
        let t = token(json!({"groups": ["g1"], "tid": "tenant-a"}));
        assert_eq!(map_roles(&[r], "base", &t), vec!["x"]);
    }
}
