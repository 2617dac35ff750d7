//! `SHOW sluice.result_cache`: the result cache's size and hit counts, and the
//! asking session's TTL.

use super::{AdminView, ViewContext};

pub struct ResultCacheView;

impl AdminView for ResultCacheView {
    fn name(&self) -> &'static str {
        "sluice.result_cache"
    }

    fn columns(&self) -> &'static [&'static str] {
        &[
            "entries",
            "bytes",
            "max_bytes",
            "hits",
            "misses",
            "hit_ratio",
            "coalesced",
            "stored",
            "too_big",
            "invalidations",
            "oldest_entry_secs",
            "your_ttl_secs",
        ]
    }

    fn rows(&self, cx: &ViewContext<'_>) -> Vec<Vec<String>> {
        let Some(cache) = cx.results else {
            return Vec::new();
        };
        let s = cache.stats();
        let lookups = s.hits + s.misses;
        let ratio = if lookups == 0 {
            String::new()
        } else {
            format!("{:.3}", s.hits as f64 / lookups as f64)
        };
        let ttl = cx
            .policy
            .result_cache_ttl_secs
            .unwrap_or(cache.default_ttl.as_secs());
        vec![vec![
            s.entries.to_string(),
            s.bytes.to_string(),
            s.max_bytes.to_string(),
            s.hits.to_string(),
            s.misses.to_string(),
            ratio,
            s.coalesced.to_string(),
            s.stored.to_string(),
            s.too_big.to_string(),
            s.invalidations.to_string(),
            s.oldest_secs.map(|o| o.to_string()).unwrap_or_default(),
            ttl.to_string(),
        ]]
    }
}
