//! Per-policy views of the lake catalog: a role sees only the tables it may read,
//! and naming one it may not read is a permission error (42501), not "not found".
//!
//! System schemas (`pg_catalog`, `information_schema`) are registered per view, so
//! their listings are built from the filtered catalog too.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use datafusion::catalog::{CatalogProvider, SchemaProvider, TableProvider};
use datafusion::error::{DataFusionError, Result};

use crate::auth::policy::Policy;
use crate::error::{PgError, SqlState};

/// The lake catalog as one policy sees it.
#[derive(Debug)]
pub struct PolicyCatalog {
    lake: Arc<dyn CatalogProvider>,
    policy: Arc<Policy>,
    /// Schemas registered on this view (pg_catalog, information_schema).
    system: RwLock<HashMap<String, Arc<dyn SchemaProvider>>>,
}

/// Schemas every session sees whatever its grants.
const OPEN_SCHEMAS: &[&str] = &["public"];

impl PolicyCatalog {
    pub fn new(lake: Arc<dyn CatalogProvider>, policy: Arc<Policy>) -> PolicyCatalog {
        PolicyCatalog {
            lake,
            policy,
            system: RwLock::new(HashMap::new()),
        }
    }

    fn visible(&self, schema: &str) -> bool {
        if OPEN_SCHEMAS.contains(&schema) {
            return true;
        }
        self.policy.may_read_in(schema)
            && self.lake.schema(schema).is_some_and(|s| {
                s.table_names()
                    .iter()
                    .any(|t| self.policy.can_read(schema, t))
            })
    }
}

impl CatalogProvider for PolicyCatalog {
    fn schema_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .lake
            .schema_names()
            .into_iter()
            .filter(|s| self.visible(s))
            .collect();
        if let Ok(system) = self.system.read() {
            names.extend(system.keys().cloned());
        }
        names.sort();
        names.dedup();
        names
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        if let Some(s) = self.system.read().ok().and_then(|m| m.get(name).cloned()) {
            return Some(s);
        }
        let inner = self.lake.schema(name)?;
        if OPEN_SCHEMAS.contains(&name) {
            return Some(inner);
        }
        Some(Arc::new(PolicySchema {
            database: name.to_owned(),
            inner,
            policy: self.policy.clone(),
        }))
    }

    fn register_schema(
        &self,
        name: &str,
        schema: Arc<dyn SchemaProvider>,
    ) -> Result<Option<Arc<dyn SchemaProvider>>> {
        let mut system = self
            .system
            .write()
            .map_err(|_| DataFusionError::Internal("catalog lock poisoned".into()))?;
        Ok(system.insert(name.to_owned(), schema))
    }
}

/// One lake database as a policy sees it.
#[derive(Debug)]
struct PolicySchema {
    database: String,
    inner: Arc<dyn SchemaProvider>,
    policy: Arc<Policy>,
}

#[async_trait]
impl SchemaProvider for PolicySchema {
    fn table_names(&self) -> Vec<String> {
        self.inner
            .table_names()
            .into_iter()
            .filter(|t| self.policy.can_read(&self.database, t))
            .collect()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        // A time-travel name (`"events@v3"`) is the base table's to grant.
        let base = crate::lake::as_of::base_name(name);
        if self.policy.can_read(&self.database, base) {
            return self.inner.table(name).await;
        }
        if self.inner.table_exist(name) {
            let e = PgError::new(
                SqlState::INSUFFICIENT_PRIVILEGE,
                format!("permission denied for table {}.{name}", self.database),
            )
            .with_hint("your Sluice roles do not grant read access to this table (see SHOW sluice.identity)");
            return Err(DataFusionError::External(Box::new(e)));
        }
        Ok(None)
    }

    fn table_exist(&self, name: &str) -> bool {
        self.policy
            .can_read(&self.database, crate::lake::as_of::base_name(name))
            && self.inner.table_exist(name)
    }
}
