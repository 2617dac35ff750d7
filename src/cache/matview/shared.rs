//! Gateways sharing one view storage serve the same views. The storage is the
//! source of truth; each gateway keeps its registry in step with it:
//!
//! - after it creates, refreshes or drops a view, a gateway announces the view's
//!   name in the storage's change journal (`cluster::journal`);
//! - every `sync_ms` each gateway reads the others' announcements, reads those
//!   views' manifests and applies them: mounts new views, swaps in new versions
//!   (a manifest applies when its revision is newer, `Manifest::supersedes`), and
//!   unmounts views whose manifest is gone;
//! - every five minutes it compares every stored manifest, in case an
//!   announcement was lost;
//! - a scheduled refresh runs on the gateway that creates the tick's lease
//!   (`cluster::lease`); the others skip the tick and read its result.
//!
//! Replaced and dropped files are deleted `keep_replaced_secs` after the change,
//! so gateways that have not read it yet finish the scans they started.

use std::collections::BTreeSet;
use std::sync::Weak;

use serde::{Deserialize, Serialize};

use super::*;
use crate::cluster::lease;

/// `m` with failed refresh `e` recorded.
fn failed(mut m: Manifest, e: &PgError) -> Manifest {
    m.state.last_error = Some(format!("{}: {}", e.code.0, e.message));
    m.state.last_attempt_at = Some(Utc::now().to_rfc3339());
    m.state.failures += 1;
    m
}

/// One announcement: the view that changed.
#[derive(Serialize, Deserialize)]
struct Change {
    schema: String,
    name: String,
}

/// Every stored manifest is compared this often, in case an announcement was lost.
const FULL_SYNC: Duration = Duration::from_secs(300);
/// Leases of ticks older than this are deleted (hourly).
const LEASE_RETENTION_HOURS: i64 = 24;

impl MatViews {
    /// Tells the other gateways sharing the storage that `name` changed. Best effort:
    /// a lost announcement is caught by their next full comparison.
    pub(super) async fn announce(&self, name: &ViewName) {
        let change = Change {
            schema: name.schema.clone(),
            name: name.name.clone(),
        };
        let body = serde_json::to_vec(&change).unwrap_or_default();
        if let Err(e) = self.changes.append(body).await {
            crate::metrics::metrics()
                .cluster_sync_errors
                .with_label_values(&["views"])
                .inc();
            tracing::warn!(view = %name, error = %e, "cannot announce a view change in the storage; other gateways sharing it see the change within five minutes");
        }
    }

    /// Whether this gateway runs the scheduled refresh of `view` due at `tick`.
    pub(super) async fn claim_tick(&self, view: &View, tick: DateTime<Utc>) -> bool {
        let path = lease::tick_path(&self.storage.leases_dir(&view.name), tick);
        match lease::claim(self.storage.store.as_ref(), &path, &self.holder, tick).await {
            Ok(true) => true,
            Ok(false) => {
                crate::metrics::metrics()
                    .view_leases_lost
                    .with_label_values(&[view.name.to_string().as_str()])
                    .inc();
                tracing::debug!(view = %view.name, %tick, "another gateway refreshes this tick");
                false
            }
            Err(e) => {
                crate::metrics::metrics()
                    .cluster_sync_errors
                    .with_label_values(&["views"])
                    .inc();
                tracing::warn!(view = %view.name, %tick, error = %e, "cannot claim the lease of a scheduled refresh; the tick is skipped");
                false
            }
        }
    }

    /// Brings one view in step with its stored manifest. `Ok(false)`: the view is
    /// being refreshed here right now; try again later.
    async fn sync_view(&self, name: &ViewName) -> Result<bool, PgError> {
        if !self.is_view_schema(&name.schema) {
            return Ok(true);
        }
        let Some(view) = self.get(name) else {
            let _ddl = self.ddl.lock().await;
            let Some(m) = self.storage.load(name).await? else {
                return Ok(true);
            };
            match self.mount(name.clone(), m).await {
                Ok(view) => {
                    view.stored.store(true, Ordering::Release);
                    view.plan_next(Utc::now());
                    self.changed_elsewhere(name);
                    tracing::info!(view = %name, "materialized view created on another gateway: mounted");
                }
                // Created here meanwhile; its own save and announcement follow.
                Err(e) if e.code.0 == "42P07" => {}
                Err(e) => return Err(e),
            }
            return Ok(true);
        };
        // The lock first, then the read: a refresh here cannot save in between.
        let Ok(_turn) = view.refresh_lock.try_lock() else {
            return Ok(false);
        };
        match self.storage.load(name).await? {
            Some(m) => self.apply_stored(&view, m).await?,
            // Mounted but not yet stored: being created here. Declared views are
            // this gateway's config, whatever another one did.
            None if !view.stored.load(Ordering::Acquire) || view.manifest().definition.declared => {
            }
            None => self.dropped_elsewhere(&view),
        }
        Ok(true)
    }

    /// Before a refresh here (its lock held): catches up with what other gateways
    /// did to the view, so the refresh starts from the stored version (an
    /// incremental one from the stored high-water mark). A view dropped elsewhere
    /// is unmounted and the refresh fails with 42P01.
    pub(super) async fn catch_up(&self, view: &Arc<View>) -> Result<(), PgError> {
        match self.storage.load(&view.name).await? {
            Some(m) => self.apply_stored(view, m).await,
            None if view.stored.load(Ordering::Acquire) && !view.manifest().definition.declared => {
                self.dropped_elsewhere(view);
                Err(PgError::new(
                    SqlState::UNDEFINED_TABLE,
                    format!(
                        "materialized view \"{}\" was dropped on another gateway",
                        view.name
                    ),
                ))
            }
            None => Ok(()),
        }
    }

    /// Applies stored manifest `m` if it supersedes what `view` has (its refresh
    /// lock held): new data swapped in, the definition and schedule taken over.
    async fn apply_stored(&self, view: &Arc<View>, m: Manifest) -> Result<(), PgError> {
        let current = view.manifest();
        if !m.supersedes(&current) {
            return Ok(());
        }
        let name = &view.name;
        let paths = |m: &Manifest| -> Vec<String> {
            m.state.files.iter().map(|f| f.path.clone()).collect()
        };
        let new_data = paths(&current) != paths(&m)
            || current.state.populated != m.state.populated
            || current.state.columns != m.state.columns;
        if new_data {
            let (schema, version) = self.version_of(name, &m.state).await?;
            view.table.swap(schema, version);
            // Files the applied version no longer names: replaced there (that
            // gateway deletes them too), or written by a refresh here that another
            // gateway's overtook. Deleting twice is harmless.
            let gone: Vec<DataFile> = current
                .state
                .files
                .iter()
                .filter(|f| !m.state.files.iter().any(|g| g.path == f.path))
                .cloned()
                .collect();
            self.delete_later(name, &gone);
        }
        view.set_manifest(m);
        view.stored.store(true, Ordering::Release);
        view.plan_next(Utc::now());
        self.changed_elsewhere(name);
        tracing::info!(view = %name, new_data, "materialized view changed on another gateway: applied");
        Ok(())
    }

    /// Right before a refresh here stores `manifest` (its lock held): a view
    /// dropped on another gateway meanwhile stays dropped (42P01); when another
    /// gateway stored a version meanwhile, this refresh becomes the next revision
    /// (the later refresh wins) and returns that version's files, which this one
    /// replaces. What is left of the race is the time between this read and the
    /// write — one request, not the length of a refresh.
    pub(super) async fn before_save(
        &self,
        view: &Arc<View>,
        manifest: &mut Manifest,
    ) -> Result<Vec<DataFile>, PgError> {
        match self.storage.load(&view.name).await? {
            None if view.stored.load(Ordering::Acquire) && !manifest.definition.declared => {
                self.dropped_elsewhere(view);
                Err(PgError::new(
                    SqlState::UNDEFINED_TABLE,
                    format!(
                        "materialized view \"{}\" was dropped on another gateway during its refresh",
                        view.name
                    ),
                ))
            }
            Some(stored) if stored.stamp != manifest.stamp => {
                manifest.revision = manifest.revision.max(stored.revision);
                Ok(stored
                    .state
                    .files
                    .into_iter()
                    .filter(|f| !manifest.state.files.iter().any(|g| g.path == f.path))
                    .collect())
            }
            _ => Ok(Vec::new()),
        }
    }

    /// Records a failed refresh in the stored manifest (its lock held), on the
    /// stored version: what this gateway holds may be older.
    pub(super) async fn record_failure(&self, view: &Arc<View>, e: &PgError) {
        let stored = self.storage.load(&view.name).await;
        match stored {
            Ok(Some(m)) => {
                if let Err(apply) = self.apply_stored(view, m).await {
                    tracing::warn!(view = %view.name, error = %apply.message, "cannot apply the stored version");
                }
            }
            // Dropped on another gateway: nothing to record.
            Ok(None) if view.stored.load(Ordering::Acquire) => return,
            Ok(None) => {}
            // The storage cannot be read: recorded here only, never written over a
            // version this gateway may not have seen.
            Err(_) => {
                view.set_manifest(failed(view.manifest(), e));
                return;
            }
        }
        let mut m = failed(view.manifest(), e);
        match self.storage.save(&mut m).await {
            Ok(()) => {
                view.set_manifest(m);
                self.announce(&view.name).await;
            }
            Err(save) => {
                tracing::error!(view = %view.name, error = %save.message, "cannot record the failed refresh");
                view.set_manifest(m);
            }
        }
    }

    /// Deletes a dropped view's leases. Best effort.
    pub(super) async fn forget_leases(&self, name: &ViewName) {
        let all = Utc::now() + chrono::Duration::days(366);
        lease::prune(
            self.storage.store.as_ref(),
            &self.storage.leases_dir(name),
            all,
        )
        .await;
    }

    /// The view's manifest is gone from the storage (its refresh lock held).
    fn dropped_elsewhere(&self, view: &Arc<View>) {
        view.dropped.store(true, Ordering::Release);
        self.unmount(&view.name);
        self.changed_elsewhere(&view.name);
        tracing::info!(view = %view.name, "materialized view dropped on another gateway: unmounted");
    }

    /// After applying another gateway's change: cached results that read the view
    /// go, and `pg_matviews` shows the change.
    fn changed_elsewhere(&self, name: &ViewName) {
        if let Some(r) = &self.results {
            r.invalidate(Some(std::slice::from_ref(&name.name)));
        }
        self.publish();
        crate::metrics::metrics().view_changes_applied.inc();
    }

    /// Every view stored or mounted, compared with the storage.
    async fn sync_all(&self) -> Result<BTreeSet<ViewName>, PgError> {
        let mut names: BTreeSet<ViewName> = self
            .storage
            .load_all()
            .await?
            .iter()
            .map(Manifest::view_name)
            .collect();
        if let Ok(views) = self.views.read() {
            names.extend(views.keys().cloned());
        }
        let mut busy = BTreeSet::new();
        for name in names {
            match self.sync_view(&name).await {
                Ok(true) => {}
                Ok(false) => {
                    busy.insert(name);
                }
                // One unreadable view does not stop the others.
                Err(e) => {
                    tracing::warn!(view = %name, error = %e.message, "cannot bring a materialized view in step with the storage");
                }
            }
        }
        Ok(busy)
    }

    /// Deletes leases of ticks older than a day. Best effort.
    async fn prune_leases(&self) {
        let before = Utc::now() - chrono::Duration::hours(LEASE_RETENTION_HOURS);
        let names: Vec<ViewName> = match self.views.read() {
            Ok(v) => v.keys().cloned().collect(),
            Err(_) => return,
        };
        for name in names {
            lease::prune(
                self.storage.store.as_ref(),
                &self.storage.leases_dir(&name),
                before,
            )
            .await;
        }
    }
}

/// Reads other gateways' changes every `every` until the views are gone.
pub(super) async fn syncer(views: Weak<MatViews>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut to_sync: BTreeSet<ViewName> = BTreeSet::new();
    let mut last_full = Instant::now();
    let mut last_prune = Instant::now();
    let mut last_leases_pruned = Instant::now();
    let mut last_warning: Option<Instant> = None;
    loop {
        tick.tick().await;
        let Some(all) = views.upgrade() else {
            return;
        };
        let mut failed = |e: String| {
            crate::metrics::metrics()
                .cluster_sync_errors
                .with_label_values(&["views"])
                .inc();
            if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                last_warning = Some(Instant::now());
                tracing::warn!(error = %e, "materialized_views.storage: cannot read other gateways' view changes (retried)");
            }
        };
        if last_full.elapsed() >= FULL_SYNC {
            last_full = Instant::now();
            match all.sync_all().await {
                Ok(busy) => to_sync.extend(busy),
                Err(e) => failed(e.message),
            }
        }
        match all.changes.read_new().await {
            Ok(records) => {
                for body in records {
                    match serde_json::from_slice::<Change>(&body) {
                        Ok(c) => {
                            to_sync.insert(ViewName {
                                schema: c.schema,
                                name: c.name,
                            });
                        }
                        Err(e) => failed(format!("an unreadable change record: {e}")),
                    }
                }
            }
            Err(e) => failed(e.to_string()),
        }
        for name in std::mem::take(&mut to_sync) {
            match all.sync_view(&name).await {
                Ok(true) => {}
                Ok(false) => {
                    to_sync.insert(name);
                }
                // The next full comparison tries again.
                Err(e) => failed(format!("{name}: {}", e.message)),
            }
        }
        if last_prune.elapsed() > Duration::from_secs(60) {
            last_prune = Instant::now();
            all.changes.prune().await;
        }
        if last_leases_pruned.elapsed() > Duration::from_secs(3600) {
            last_leases_pruned = Instant::now();
            all.prune_leases().await;
        }
    }
}
