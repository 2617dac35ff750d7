//! A limit on the bytes of files one statement may plan to read (the workload's
//! scan-size rules). The session puts it in the statement's DataFusion config;
//! a table provider adds the files it listed before it reads anything (a footer
//! for the schema, say), so an oversized scan is refused with no object read.
//! Providers that do not check (DataFusion's own listing tables) are caught by
//! the check of the whole physical plan before it runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use datafusion::catalog::Session;
use datafusion::error::DataFusionError;

use crate::error::PgError;

pub struct ScanGuard {
    limit: u64,
    listed: AtomicU64,
    refusal: Box<dyn Fn(u64) -> PgError + Send + Sync>,
}

impl ScanGuard {
    /// `refusal` phrases the error for a planned scan of that many bytes.
    pub fn new(limit: u64, refusal: impl Fn(u64) -> PgError + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(ScanGuard {
            limit,
            listed: AtomicU64::new(0),
            refusal: Box::new(refusal),
        })
    }

    /// The statement's guard, if it has one.
    pub fn of(state: &dyn Session) -> Option<Arc<ScanGuard>> {
        state.config().get_extension::<ScanGuard>()
    }

    /// Adds listed files to the statement's planned scan; refuses it once the
    /// total passes the limit.
    pub fn add(&self, bytes: u64) -> Result<(), DataFusionError> {
        let total = self.listed.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if total > self.limit {
            return Err(DataFusionError::External(Box::new((self.refusal)(total))));
        }
        Ok(())
    }
}
