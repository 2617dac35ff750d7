//! A schema whose tables are held in memory by name: what a Glue database and a
//! gateway view schema both are. Names match exactly, then lower-cased, so a quoted
//! mixed-case name still finds a table stored lower case. A name with a time-travel
//! suffix (`"events@v3"`, `lake::as_of`) finds the base table as of that version.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::error::{DataFusionError, Result};

use super::as_of::{self, AsOf};

/// A table that may have earlier versions to read.
#[async_trait]
pub trait Versioned: TableProvider {
    /// The table as of `as_of`; tables without versions say so.
    async fn as_of(&self, as_of: AsOf) -> Result<Arc<dyn TableProvider>>;
}

#[derive(Debug)]
pub struct TableMap<T> {
    tables: RwLock<BTreeMap<String, Arc<T>>>,
}

impl<T> Default for TableMap<T> {
    fn default() -> Self {
        TableMap::new(BTreeMap::new())
    }
}

impl<T> TableMap<T> {
    pub fn new(tables: BTreeMap<String, Arc<T>>) -> Self {
        TableMap {
            tables: RwLock::new(tables),
        }
    }

    pub fn get(&self, name: &str) -> Option<Arc<T>> {
        let tables = self.tables.read().ok()?;
        tables
            .get(name)
            .or_else(|| tables.get(&name.to_lowercase()))
            .cloned()
    }

    pub fn insert(&self, name: &str, table: Arc<T>) {
        if let Ok(mut t) = self.tables.write() {
            t.insert(name.to_owned(), table);
        }
    }

    pub fn remove(&self, name: &str) {
        if let Ok(mut t) = self.tables.write() {
            t.remove(name);
        }
    }

    /// Replaces every table at once (readers see the old set or the new one).
    pub fn replace(&self, tables: BTreeMap<String, Arc<T>>) {
        if let Ok(mut t) = self.tables.write() {
            *t = tables;
        }
    }

    pub fn len(&self) -> usize {
        self.tables.read().map(|t| t.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl<T: Versioned + 'static> SchemaProvider for TableMap<T> {
    fn table_names(&self) -> Vec<String> {
        self.tables
            .read()
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        if let Some(t) = self.get(name) {
            return Ok(Some(t as Arc<dyn TableProvider>));
        }
        if !name.contains('@') {
            return Ok(None);
        }
        let (base, version) =
            as_of::split(name).map_err(|e| DataFusionError::External(Box::new(e)))?;
        match (self.get(base), version) {
            (Some(table), Some(version)) => table.as_of(version).await.map(Some),
            _ => Ok(None),
        }
    }

    fn table_exist(&self, name: &str) -> bool {
        self.get(name).is_some() || self.get(as_of::base_name(name)).is_some()
    }
}
