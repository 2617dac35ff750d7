//! The `sluice` schema: tables served from the gateway's live state (query groups)
//! rather than from the lake. The server supplies them at start
//! ([`Engine::set_system_tables`]); only admin policies' contexts get the schema
//! (other roles' catalog listings never show it).

use std::sync::Arc;

use datafusion::catalog::{CatalogProvider, MemorySchemaProvider, SchemaProvider, TableProvider};

use crate::auth::policy::Policy;

/// The schema name the system tables live in (also a lake schema for routing).
pub const SCHEMA: &str = "sluice";

pub trait SystemTables: Send + Sync {
    /// The tables a context for `policy` shows in the `sluice` schema.
    fn tables(&self, policy: &Arc<Policy>) -> Vec<(&'static str, Arc<dyn TableProvider>)>;
}

/// Adds the `sluice` schema to a policy's catalog view.
pub(super) fn install(
    catalog: &dyn CatalogProvider,
    tables: &dyn SystemTables,
    policy: &Arc<Policy>,
) -> Result<(), String> {
    // Other roles do not see the schema at all (catalog listings stay theirs).
    if !policy.admin {
        return Ok(());
    }
    let schema = MemorySchemaProvider::new();
    for (name, table) in tables.tables(policy) {
        schema
            .register_table(name.to_owned(), table)
            .map_err(|e| format!("cannot register sluice.{name}: {e}"))?;
    }
    catalog
        .register_schema(SCHEMA, Arc::new(schema))
        .map_err(|e| format!("cannot register the sluice schema: {e}"))?;
    Ok(())
}

impl super::Engine {
    /// Supplies the `sluice` schema's tables (once, at start; contexts built before
    /// are rebuilt).
    pub fn set_system_tables(&self, tables: Arc<dyn SystemTables>) {
        if self.system.set(tables).is_ok()
            && let Ok(mut contexts) = self.contexts.lock()
        {
            contexts.clear();
        }
    }
}
