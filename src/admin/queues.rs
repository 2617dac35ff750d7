//! `SHOW sluice.queues` (admins): each workload queue with its slots, the
//! statements running and waiting in it now, and its limits.

use super::{AdminView, ViewContext};

pub struct QueuesView;

impl AdminView for QueuesView {
    fn name(&self) -> &'static str {
        "sluice.queues"
    }

    fn columns(&self) -> &'static [&'static str] {
        &[
            "queue",
            "priority",
            "slots",
            "running",
            "waiting",
            "queue_timeout_secs",
            "statement_timeout_secs",
            "row_limit",
        ]
    }

    fn admin_only(&self) -> bool {
        true
    }

    fn rows(&self, cx: &ViewContext<'_>) -> Vec<Vec<String>> {
        let Some(workload) = cx.workload else {
            return Vec::new();
        };
        let secs =
            |d: Option<std::time::Duration>| d.map(|d| d.as_secs().to_string()).unwrap_or_default();
        workload
            .queues()
            .map(|(i, q)| {
                let (running, waiting, slots) = workload.usage(i);
                vec![
                    q.name.to_string(),
                    format!("{:?}", q.priority).to_ascii_lowercase(),
                    if slots == usize::MAX {
                        "unlimited".into()
                    } else {
                        slots.to_string()
                    },
                    running.to_string(),
                    waiting.to_string(),
                    secs(q.queue_timeout),
                    secs(q.statement_timeout),
                    q.row_limit.map(|n| n.to_string()).unwrap_or_default(),
                ]
            })
            .collect()
    }
}
