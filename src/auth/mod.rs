//! Who a client is: local service accounts (SCRAM-SHA-256) today; OIDC tokens and
//! group → role mapping build on the same [`Identity`].

pub mod scram;

use std::collections::HashMap;

use crate::config::Config;
use scram::Verifier;

/// An authenticated user, as every later stage (routing, policy, audit) sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The name the client logged in as (`current_user`).
    pub user: String,
    /// Sluice roles granted to this user.
    pub roles: Vec<String>,
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
        })
    }
}
