//! The catalog a cross-engine statement is planned against: the lake catalog (as
//! the session's policy sees it) with the upstream tables the statement names laid
//! over it. Lake tables win a name clash.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::{CatalogProvider, MemorySchemaProvider, SchemaProvider, TableProvider};
use datafusion::error::Result;

use crate::error::PgError;

/// Tables of another engine a cross-engine statement may name (Redshift's, in
/// `redshift::table`): the engine plans against them without knowing what they are.
#[async_trait]
pub trait RemoteTables: Send + Sync + std::fmt::Debug {
    /// `schema.table` (or `table` on the remote's search path), or `None` when the
    /// remote has no such table.
    async fn table(
        &self,
        schema: Option<&str>,
        table: &str,
    ) -> std::result::Result<Option<Arc<dyn TableProvider>>, PgError>;
}

#[derive(Debug)]
pub struct FederatedCatalog {
    local: Arc<dyn CatalogProvider>,
    remote: HashMap<String, Arc<MemorySchemaProvider>>,
}

impl FederatedCatalog {
    pub fn new(
        local: Arc<dyn CatalogProvider>,
        remote: HashMap<String, Arc<MemorySchemaProvider>>,
    ) -> Self {
        FederatedCatalog { local, remote }
    }
}

impl CatalogProvider for FederatedCatalog {
    fn schema_names(&self) -> Vec<String> {
        let mut names = self.local.schema_names();
        for n in self.remote.keys() {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
        names
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        match (self.local.schema(name), self.remote.get(name)) {
            (Some(local), Some(remote)) => Some(Arc::new(FederatedSchema {
                local,
                remote: remote.clone(),
            })),
            (Some(local), None) => Some(local),
            (None, Some(remote)) => Some(remote.clone()),
            (None, None) => None,
        }
    }
}

#[derive(Debug)]
struct FederatedSchema {
    local: Arc<dyn SchemaProvider>,
    remote: Arc<MemorySchemaProvider>,
}

#[async_trait]
impl SchemaProvider for FederatedSchema {
    fn table_names(&self) -> Vec<String> {
        let mut names = self.local.table_names();
        names.extend(self.remote.table_names());
        names
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        match self.local.table(name).await? {
            Some(t) => Ok(Some(t)),
            None => self.remote.table(name).await,
        }
    }

    fn table_exist(&self, name: &str) -> bool {
        self.local.table_exist(name) || self.remote.table_exist(name)
    }
}
