//! The residency series a LoRA-affinity router reads (`metrics::LORA_RESIDENT_INFO`), shaped like
//! vLLM's `vllm:lora_requests_info` so a router that parses that one reads it unchanged:
//! `running_lora_adapters` lists the adapters on device (ready to run with no page-in) and
//! `waiting_lora_adapters` those queued for a page-in, each sorted and comma-separated;
//! `max_lora` is the number of device slots. What always holds: exactly one such series exists
//! (the previous label set is removed on a change), its labels are bounded by the device slots
//! and the page-in queue however many adapters are registered, and it is rebuilt only when the
//! device tier or the queue changes (not per request).

use crate::metrics::Metrics;

/// Replaces the residency series: `resident` on a device tier of `slots` slots, `queued` waiting.
pub(super) fn export<'a>(
    m: &Metrics,
    slots: usize,
    resident: impl Iterator<Item = &'a str>,
    queued: impl Iterator<Item = &'a str>,
) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    m.lora_resident_info.reset();
    m.lora_resident_info
        .with_label_values(&[&slots.to_string(), &list(resident), &list(queued)])
        .set(now.floor());
}

/// Names sorted, deduplicated and comma-separated.
fn list<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let mut v: Vec<&str> = names.collect();
    v.sort_unstable();
    v.dedup();
    v.join(",")
}
