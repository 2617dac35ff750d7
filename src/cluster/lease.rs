//! Leases: "who runs this tick" decided by the storage. A lease is an object created
//! with `PutMode::Create` (a hard link on a directory, `If-None-Match: *` on S3):
//! of the gateways that try, exactly one create succeeds, and only that gateway runs
//! the tick. Each tick has its own object, named by the tick's time, so nothing is
//! ever renewed or released — `PutMode::Update` is not needed (and a directory
//! store does not offer it).

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions};

/// The lease object of `tick` under `dir`.
pub fn tick_path(dir: &Path, tick: DateTime<Utc>) -> Path {
    dir.clone()
        .join(format!("{:015}", tick.timestamp_millis().max(0)))
}

/// Tries to create the lease at `path`: `Ok(true)` when this caller created it (it
/// runs the tick), `Ok(false)` when someone else did.
pub async fn claim(
    store: &dyn ObjectStore,
    path: &Path,
    holder: &str,
    tick: DateTime<Utc>,
) -> Result<bool, object_store::Error> {
    let body = serde_json::json!({
        "gateway": holder,
        "tick": tick.to_rfc3339(),
        "claimed_at": Utc::now().to_rfc3339(),
    });
    let opts = PutOptions {
        mode: PutMode::Create,
        ..PutOptions::default()
    };
    match store
        .put_opts(path, body.to_string().into_bytes().into(), opts)
        .await
    {
        Ok(_) => Ok(true),
        Err(object_store::Error::AlreadyExists { .. })
        | Err(object_store::Error::Precondition { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Deletes the leases under `dir` for ticks before `before`. Best effort.
pub async fn prune(store: &dyn ObjectStore, dir: &Path, before: DateTime<Utc>) {
    let listed: Vec<object_store::ObjectMeta> = match store.list(Some(dir)).try_collect().await {
        Ok(l) => l,
        Err(_) => return,
    };
    let cutoff = before.timestamp_millis();
    for meta in listed {
        let old = meta
            .location
            .filename()
            .and_then(|n| n.parse::<i64>().ok())
            .is_some_and(|t| t < cutoff);
        if old {
            let _ = store.delete(&meta.location).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_claim_per_tick_wins_and_old_leases_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fs = object_store::local::LocalFileSystem::new_with_prefix(dir.path()).expect("fs");
        let leases = Path::from("leases/view");
        let t1 = Utc::now();
        let t2 = t1 + chrono::Duration::seconds(60);
        let p1 = tick_path(&leases, t1);
        assert!(claim(&fs, &p1, "a", t1).await.expect("claim"));
        assert!(!claim(&fs, &p1, "b", t1).await.expect("claim"));
        let p2 = tick_path(&leases, t2);
        assert!(claim(&fs, &p2, "b", t2).await.expect("claim"));
        prune(&fs, &leases, t2).await;
        let left: Vec<_> = fs
            .list(Some(&leases))
            .try_collect::<Vec<_>>()
            .await
            .expect("list")
            .into_iter()
            .map(|m| m.location)
            .collect();
        assert_eq!(left, vec![p2]);
    }
}
