//! Refreshing a view: its query runs where `route::decide::view_source` says (the
//! lake, or Redshift under the refresh roles' identity), into new Parquet files; the
//! manifest is written, then the version swapped.

use super::*;

impl MatViews {
    /// `REFRESH MATERIALIZED VIEW`.
    pub async fn refresh(
        &self,
        name: &ViewName,
        with_data: bool,
    ) -> Result<RefreshOutcome, PgError> {
        let view = self.get(name).ok_or_else(|| {
            PgError::new(
                SqlState::UNDEFINED_TABLE,
                format!("materialized view \"{name}\" does not exist"),
            )
        })?;
        let outcome = self.refresh_view(&view, with_data).await;
        view.plan_next(Utc::now());
        outcome
    }

    /// The identity a refresh runs with on the lake.
    pub(super) fn refresh_context(&self) -> QueryContext {
        let remote = self.upstream.as_ref().and_then(|u| {
            let identity = self.refresh_identity()?;
            let remote: Arc<dyn crate::engine::RemoteTables> =
                Arc::new(crate::redshift::table::RemoteCatalog::new(
                    u.clone(),
                    identity,
                    &[("application_name".to_owned(), "sluice-matview".to_owned())],
                ));
            Some(remote)
        });
        QueryContext {
            user: self.config.refresh_user.clone(),
            search_path: "public".into(),
            time_zone: "UTC".into(),
            backend_pid: 0,
            policy: self.refresh_policy.clone(),
            remote,
            vars: Default::default(),
        }
    }

    /// The Redshift identity views refresh under.
    fn refresh_identity(&self) -> Option<crate::redshift::credentials::DbIdentity> {
        redshift::identity_for(
            &self.config.refresh_user,
            &self.config.refresh_roles,
            &self.roles,
        )
    }

    /// Where a view query runs: the lake when it names only lake tables (or no
    /// upstream exists), Redshift when it names no lake table. Text Sluice cannot
    /// parse is Redshift's.
    pub(super) fn source_of(&self, query: &str) -> Result<ViewSource, PgError> {
        let lake = self.upstream.as_ref().map(|_| self.engine.lake_schemas());
        crate::route::decide::view_source(self.engine.parse(query), lake.as_ref())
    }

    /// Runs the view query into `sink`; returns the result schema and the engine.
    async fn run_query(
        &self,
        sql: &str,
        sink: &mut ParquetSink,
    ) -> Result<(SchemaRef, &'static str), PgError> {
        match self.source_of(sql)? {
            ViewSource::Lake(stmt) => {
                let qc = self.refresh_context();
                let plan = self.engine.plan(&stmt, &qc).await?;
                let schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
                let mut stream = self.engine.execute(plan, &qc).await?;
                while let Some(batch) = stream.next().await {
                    sink.write(&batch.map_err(PgError::from)?).await?;
                }
                Ok((schema, "lake"))
            }
            ViewSource::Upstream => {
                let Some(upstream) = &self.upstream else {
                    return Err(internal("no Redshift upstream is configured"));
                };
                let identity = self.refresh_identity().ok_or_else(|| {
                    PgError::new(
                        SqlState::INSUFFICIENT_PRIVILEGE,
                        "materialized_views.refresh_roles give no redshift_user, so views cannot read Redshift",
                    )
                })?;
                let params: Vec<(String, String)> = [
                    ("TimeZone", "UTC"),
                    ("DateStyle", "ISO, MDY"),
                    ("extra_float_digits", "3"),
                    ("application_name", "sluice-matview"),
                ]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
                let mut held = upstream.open(&identity, &params, false).await?;
                // Read-only: the view query (one statement) cannot change anything,
                // whatever the refresh identity may do.
                let result = match held.conn.run_quietly("START TRANSACTION READ ONLY").await {
                    Ok(()) => {
                        let r = rows::query_batches(&mut held.conn, sql, sink).await;
                        let end = held.conn.run_quietly("ROLLBACK").await;
                        r.and_then(|schema| end.map(|_| schema))
                    }
                    Err(e) => Err(e),
                };
                let clean = result.is_ok() && held.conn.status == b'I';
                upstream.release(held, clean).await;
                Ok((result?, "redshift"))
            }
        }
    }

    /// Refreshes one view (full, or incremental past the high-water mark), swapping
    /// the new version in only when everything is stored.
    pub(super) async fn refresh_view(
        &self,
        view: &Arc<View>,
        with_data: bool,
    ) -> Result<RefreshOutcome, PgError> {
        let _turn = view.refresh_lock.lock().await;
        view.refreshing.store(true, Ordering::Release);
        let started = std::time::Instant::now();
        let result = self.refresh_locked(view, with_data).await;
        view.refreshing.store(false, Ordering::Release);
        let m = crate::metrics::metrics();
        let name = view.name.to_string();
        let label = [name.as_str()];
        m.view_refresh_duration
            .with_label_values(&label)
            .observe(started.elapsed().as_secs_f64());
        if result.is_err() {
            m.view_refresh_failures.with_label_values(&label).inc();
        }
        if let Err(e) = &result
            && !view.dropped.load(Ordering::Acquire)
        {
            tracing::warn!(view = %view.name, code = e.code.0, error = %e.message, "materialized view refresh failed; the previous version keeps serving");
            self.record_failure(view, e).await;
        } else if result.is_ok() {
            self.announce(&view.name).await;
        }
        self.publish();
        result
    }

    async fn refresh_locked(
        &self,
        view: &Arc<View>,
        with_data: bool,
    ) -> Result<RefreshOutcome, PgError> {
        if view.dropped.load(Ordering::Acquire) {
            return Err(PgError::new(
                SqlState::UNDEFINED_TABLE,
                format!("materialized view \"{}\" was dropped", view.name),
            ));
        }
        // Another gateway sharing the storage may have refreshed it since.
        self.catch_up(view).await?;
        let started = Instant::now();
        let now = Utc::now().to_rfc3339();
        let mut manifest = view.manifest();
        let old_files = manifest.state.files.clone();
        if !with_data {
            manifest.state = State {
                generation: manifest.state.generation,
                refreshes: manifest.state.refreshes,
                failures: manifest.state.failures,
                last_attempt_at: Some(now),
                ..State::default()
            };
            let mut replaced = self.before_save(view, &mut manifest).await?;
            replaced.extend(old_files);
            self.storage.save(&mut manifest).await?;
            view.table.swap(
                Arc::new(datafusion::arrow::datatypes::Schema::empty()),
                Version::Unpopulated {
                    name: view.name.to_string(),
                },
            );
            view.set_manifest(manifest);
            self.after_swap(view, replaced);
            return Ok(RefreshOutcome {
                rows_added: 0,
                rows: 0,
                incremental: false,
                duration: started.elapsed(),
            });
        }
        let definition = &manifest.definition;
        let increment = match (&definition.incremental_column, &manifest.state.high_water) {
            (Some(col), Some(hw)) if manifest.state.populated => Some((col.clone(), hw.clone())),
            _ => None,
        };
        let sql = match &increment {
            Some((col, hw)) => format!(
                "SELECT * FROM ({}) AS sluice_increment WHERE {} > {hw}",
                definition.query,
                quote_ident(col)
            ),
            None => definition.query.clone(),
        };
        let generation = manifest.state.generation + 1;
        // Unique even across a drop and re-create of the same name (a replaced
        // version's delayed delete must never hit a new file).
        let relative = format!("data/{generation:08}-{:08x}.parquet", rand::random::<u32>());
        let path = self.storage.file_path(&view.name, &relative);
        let mut sink = ParquetSink::new(
            self.storage.store.clone(),
            path,
            definition.incremental_column.clone(),
        );
        let (schema, source) = match self.run_query(&sql, &mut sink).await {
            Ok(r) => r,
            Err(e) => {
                sink.abandon().await;
                return Err(e);
            }
        };
        let new_file = |rows, bytes| DataFile {
            path: relative.clone(),
            rows,
            bytes,
        };
        let (rows, bytes, max) = match sink.finish(schema.clone()).await {
            Ok(r) => r,
            Err(e) => {
                self.storage
                    .delete_files(&view.name, &[new_file(0, 0)])
                    .await;
                return Err(e);
            }
        };
        let mut files = Vec::new();
        let mut replaced = Vec::new();
        if increment.is_some() {
            let current = datafusion::catalog::TableProvider::schema(view.table.as_ref());
            if !same_columns(&current, &schema) {
                self.storage
                    .delete_files(&view.name, &[new_file(rows, bytes)])
                    .await;
                return Err(PgError::new(
                    SqlState::DATATYPE_MISMATCH,
                    format!(
                        "the columns of materialized view \"{}\" changed; rebuild it: REFRESH MATERIALIZED VIEW {} WITH NO DATA, then REFRESH",
                        view.name, view.name
                    ),
                ));
            }
            files.extend(old_files.iter().cloned());
            if rows > 0 {
                files.push(new_file(rows, bytes));
            } else {
                self.storage
                    .delete_files(&view.name, &[new_file(rows, bytes)])
                    .await;
            }
        } else {
            files.push(new_file(rows, bytes));
            replaced = old_files;
        }
        let high_water = match max {
            Some(v) => match sink::sql_literal(&v) {
                Some(l) => Some(l),
                None => {
                    self.storage
                        .delete_files(&view.name, &[new_file(rows, bytes)])
                        .await;
                    return Err(PgError::new(
                        SqlState::FEATURE_NOT_SUPPORTED,
                        format!(
                            "the highest {} value contains a backslash, which cannot be carried safely in the next refresh's filter",
                            definition.incremental_column.as_deref().unwrap_or("")
                        ),
                    )
                    .with_hint("use a numeric, date or timestamp incremental_column"));
                }
            },
            None => increment.as_ref().map(|(_, hw)| hw.clone()),
        };
        let total: u64 = files.iter().map(|f| f.rows).sum();
        manifest.state = State {
            populated: true,
            files,
            high_water,
            generation,
            refreshed_at: Some(now.clone()),
            last_duration_ms: Some(started.elapsed().as_millis() as u64),
            last_attempt_at: Some(now),
            last_error: None,
            refreshes: manifest.state.refreshes + 1,
            failures: manifest.state.failures,
            source: Some(source.into()),
            columns: storage::columns_of(&schema),
        };
        let (schema, version) = self.version_of(&view.name, &manifest.state).await?;
        let saved = match self.before_save(view, &mut manifest).await {
            Ok(theirs) => {
                replaced.extend(theirs);
                self.storage.save(&mut manifest).await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = saved {
            if increment.is_none() || rows > 0 {
                self.storage
                    .delete_files(&view.name, &[new_file(rows, bytes)])
                    .await;
            }
            return Err(e);
        }
        view.table.swap(schema, version);
        view.set_manifest(manifest);
        self.after_swap(view, replaced);
        tracing::info!(view = %view.name, rows_added = rows, rows = total, ms = started.elapsed().as_millis() as u64, source, "materialized view refreshed");
        Ok(RefreshOutcome {
            rows_added: rows,
            rows: total,
            incremental: increment.is_some(),
            duration: started.elapsed(),
        })
    }

    /// After a new version is live: cached results that read the view go, and the
    /// replaced files are deleted once readers still scanning them are done.
    fn after_swap(&self, view: &Arc<View>, replaced: Vec<DataFile>) {
        if let Some(r) = &self.results {
            r.invalidate(Some(std::slice::from_ref(&view.name.name)));
        }
        self.delete_later(&view.name, &replaced);
    }

    /// Deletes `files` of `view` after `keep_replaced_secs`: readers here, and on
    /// gateways that have not read the change yet, may still be scanning them.
    pub(super) fn delete_later(&self, view: &ViewName, files: &[DataFile]) {
        if files.is_empty() {
            return;
        }
        let keep = Duration::from_secs(self.config.keep_replaced_secs);
        let store = self.storage.store.clone();
        let paths: Vec<_> = files
            .iter()
            .map(|f| self.storage.file_path(view, &f.path))
            .collect();
        tokio::spawn(async move {
            tokio::time::sleep(keep).await;
            for p in paths {
                let _ = object_store::ObjectStoreExt::delete(store.as_ref(), &p).await;
            }
        });
    }
}
