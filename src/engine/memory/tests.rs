use super::*;

const MB: usize = MIB as usize;

fn share(role: &str, percent: u8) -> MemoryShare {
    MemoryShare {
        role: role.into(),
        percent,
    }
}

fn reservation(pool: &Arc<LakePool>, name: &str, spill: bool) -> MemoryReservation {
    let pool: Arc<dyn MemoryPool> = pool.clone();
    MemoryConsumer::new(name)
        .with_can_spill(spill)
        .register(&pool)
}

#[test]
fn a_role_share_holds_across_its_contexts() {
    let memory = LakeMemory::new(Some(100), PoolKind::Greedy);
    // Two policy contexts counting against one role: one budget of 25 MB.
    let (a, b) = (
        memory.pool_for(Some(&share("analyst", 25))),
        memory.pool_for(Some(&share("analyst", 25))),
    );
    let ra = reservation(&a, "ExternalSorter[0]", false);
    let rb = reservation(&b, "HashJoinInput", false);
    ra.try_grow(20 * MB).expect("within the share");
    rb.try_grow(5 * MB).expect("exactly at the share");
    let e = rb.try_grow(1).expect_err("over the share");
    let text = e.to_string();
    assert!(matches!(e, DataFusionError::ResourcesExhausted(_)), "{e}");
    assert!(
        text.contains("role \"analyst\" may hold 25 MB")
            && text.contains("25% of engine.memory_limit_mb = 100 MB")
            && text.contains("HashJoinInput asked for 1 bytes more"),
        "{text}"
    );
    // A refusal takes nothing; the reservation keeps what it had.
    assert_eq!(rb.size(), 5 * MB);
    assert_eq!(
        memory.stats().roles,
        vec![("analyst".into(), 25 * MB, 25 * MB)]
    );
    assert_eq!(memory.stats().reserved, 25 * MB);
    // Shrinking gives back to the role and the global pool.
    ra.shrink(10 * MB);
    rb.try_grow(10 * MB).expect("room again");
    // grow (infallible) counts too, even past the share.
    ra.grow(10 * MB);
    assert_eq!(memory.stats().roles[0].1, 35 * MB);
    assert!(rb.try_grow(1).is_err());
    drop(ra);
    drop(rb);
    assert_eq!(memory.stats().roles[0].1, 0);
    assert_eq!(memory.stats().reserved, 0);
}

#[test]
fn the_global_limit_binds_roles_together() {
    let memory = LakeMemory::new(Some(100), PoolKind::Greedy);
    let sales = memory.pool_for(Some(&share("sales", 60)));
    let finance = memory.pool_for(Some(&share("finance", 60)));
    let plain = memory.unshared();
    let s = reservation(&sales, "s", false);
    let f = reservation(&finance, "f", false);
    let p = reservation(&plain, "p", false);
    s.try_grow(60 * MB).expect("sales' share");
    f.try_grow(30 * MB)
        .expect("finance, within the global limit");
    let e = f.try_grow(20 * MB).expect_err("global limit");
    let text = e.to_string();
    assert!(
        text.contains("lake queries together may hold 100 MB (engine.memory_limit_mb)"),
        "{text}"
    );
    // The refused role gets its bytes back: it still may take its last 10 MB.
    assert_eq!(
        memory.stats().roles,
        vec![
            ("finance".into(), 30 * MB, 60 * MB),
            ("sales".into(), 60 * MB, 60 * MB),
        ]
    );
    p.try_grow(10 * MB).expect("the last 10 MB");
    assert!(p.try_grow(1).is_err());
    assert_eq!(memory.stats().reserved, 100 * MB);
    assert!(matches!(sales.memory_limit(), MemoryLimit::Finite(l) if l == 60 * MB));
    assert!(matches!(plain.memory_limit(), MemoryLimit::Finite(l) if l == 100 * MB));
}

#[test]
fn spillable_consumers_share_fairly_within_the_role() {
    let memory = LakeMemory::new(Some(100), PoolKind::Fair);
    let pool = memory.pool_for(Some(&share("analyst", 50)));
    let a = reservation(&pool, "ExternalSorter[0]", true);
    let b = reservation(&pool, "ExternalSorter[1]", true);
    // Two spillers divide the role's 50 MB: 25 MB each at most.
    assert!(a.try_grow(26 * MB).is_err(), "more than half of the share");
    a.try_grow(20 * MB).expect("a");
    b.try_grow(20 * MB).expect("b");
    // An operator that cannot spill still finds the room they leave…
    let merge = reservation(&pool, "ExternalSorterMerge[0]", false);
    merge.try_grow(10 * MB).expect("merge headroom");
    // …which now shrinks what spillers may hold: (50 - 10) / 2 = 20 MB each.
    assert!(a.try_grow(MB).is_err());
    assert!(merge.try_grow(MB).is_err(), "the share is full");
    // One spiller gone: the other may take its part.
    drop(b);
    a.try_grow(20 * MB).expect("a alone: 40 MB");
    assert_eq!(memory.stats().roles[0].1, 50 * MB);
    drop(a);
    drop(merge);
    assert_eq!(memory.stats().roles[0].1, 0);
    assert_eq!(memory.stats().reserved, 0);

    // Greedy: first come, first served within the share as well.
    let greedy = LakeMemory::new(Some(100), PoolKind::Greedy);
    let pool = greedy.pool_for(Some(&share("analyst", 50)));
    let a = reservation(&pool, "ExternalSorter[0]", true);
    let _b = reservation(&pool, "ExternalSorter[1]", true);
    a.try_grow(50 * MB).expect("the whole share");
    assert!(a.try_grow(1).is_err());
}

#[test]
fn roles_count_concurrently() {
    let memory = Arc::new(LakeMemory::new(Some(1000), PoolKind::Greedy));
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let memory = memory.clone();
            std::thread::spawn(move || {
                let role = if i % 2 == 0 { "even" } else { "odd" };
                let pool = memory.pool_for(Some(&share(role, 10)));
                let r = reservation(&pool, "worker", false);
                let mut peak_refused = 0;
                for _ in 0..2000 {
                    if r.try_grow(MB).is_err() {
                        peak_refused += 1;
                        r.shrink(r.size() / 2);
                    }
                }
                r.free();
                peak_refused
            })
        })
        .collect();
    for t in threads {
        assert!(t.join().expect("thread") > 0, "each role hit its share");
    }
    let stats = memory.stats();
    assert_eq!(stats.reserved, 0);
    assert!(
        stats
            .roles
            .iter()
            .all(|(_, used, limit)| *used == 0 && *limit == 100 * MB)
    );
}

#[test]
fn a_role_budget_never_exceeds_its_share_under_contention() {
    let memory = Arc::new(LakeMemory::new(Some(100), PoolKind::Greedy));
    let peak = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (memory, peak) = (memory.clone(), peak.clone());
            std::thread::spawn(move || {
                let pool = memory.pool_for(Some(&share("r", 20)));
                let r = reservation(&pool, "w", false);
                for i in 0..5000 {
                    if r.try_grow(MB / 4).is_ok() {
                        let used = memory.stats().roles[0].1;
                        peak.fetch_max(used, Ordering::Relaxed);
                    }
                    if i % 7 == 0 {
                        r.free();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    assert!(peak.load(Ordering::Relaxed) <= 20 * MB);
}

#[test]
fn unlimited_and_shares_without_a_limit() {
    let memory = LakeMemory::new(None, PoolKind::Fair);
    let pool = memory.pool_for(Some(&share("r", 10)));
    assert!(matches!(pool.memory_limit(), MemoryLimit::Infinite));
    let r = reservation(&pool, "x", false);
    r.try_grow(1 << 40).expect("no limit");
}

#[test]
fn messages_round_megabytes() {
    assert_eq!(mb(32 * MB), "32");
    assert_eq!(mb(share_of(128 * MB, 10)), "12.8");
    assert_eq!(human(1536), "1 KB");
    assert_eq!(human(3 * MB / 2), "1.5 MB");
    assert_eq!(share_of(100, 1), 1);
}

#[test]
fn machine_memory_honours_cgroup_limits() {
    assert_eq!(
        meminfo_total("MemTotal:       16318508 kB\nMemFree: 1 kB\n"),
        Some(16318508 * 1024)
    );
    assert_eq!(meminfo_total("nothing"), None);
    let tree = |path: &str| -> Option<String> {
        match path {
            "/system.slice/sluice.service" => Some("max\n".into()),
            "/system.slice" => Some("4294967296\n".into()),
            _ => None,
        }
    };
    assert_eq!(
        cgroup_max("0::/system.slice/sluice.service\n", tree),
        Some(4 << 30)
    );
    assert_eq!(
        cgroup_max("0::/\n", |p| (p.is_empty()).then(|| "1073741824".into())),
        Some(1 << 30)
    );
    assert_eq!(
        cgroup_max("1:memory:/x\n", tree),
        None,
        "cgroup v1 is not read"
    );
    assert_eq!(cgroup_max("0::/other\n", |_| Some("max".into())), None);

    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    std::fs::create_dir_all(root.join("proc/self")).expect("mkdir");
    std::fs::create_dir_all(root.join("sys/fs/cgroup/app")).expect("mkdir");
    std::fs::write(root.join("proc/meminfo"), "MemTotal: 8388608 kB\n").expect("write");
    assert_eq!(machine_memory(root), Some((8 << 30, "/proc/meminfo")));
    std::fs::write(root.join("proc/self/cgroup"), "0::/app\n").expect("write");
    std::fs::write(root.join("sys/fs/cgroup/app/memory.max"), "2147483648\n").expect("write");
    assert_eq!(machine_memory(root), Some((2 << 30, "cgroup memory.max")));
    assert!(machine_memory(&root.join("nowhere")).is_none());
}
