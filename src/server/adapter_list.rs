//! `GET /v1/adapters`: every registered adapter (sorted by name) with where its weights are now
//! (`tier`; `pins`: held by running requests; `pinned`: by the admin), what the integrity gate said about them (`integrity`), its terms
//! when metering is on (owner, prices, fee split) and what it has served (`requests_served`,
//! `prompt_tokens`, `generation_tokens`, from the server's own counters). Optional paging:
//! `q` (case-insensitive substring of the name), `offset`, `limit` (1..=1000); `total` is the
//! number matching `q`. What always holds: without parameters every adapter is listed, as before;
//! terms and counters are looked up for the returned page only, so a page of 10,000 registered
//! adapters costs what a page of 10 does; paths are shown only to callers `auth` lets see them.

use super::api_error::ApiError;
use super::auth::AdminAccess;
use super::state::AppState;
use crate::lora::{AdapterRef, AdapterSpec};
use crate::metrics::Metrics;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use prometheus::core::Collector;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// Most adapters one page may hold.
pub const MAX_PAGE: usize = 1000;

#[derive(Deserialize)]
pub struct ListQuery {
    q: Option<String>,
    offset: Option<usize>,
    limit: Option<usize>,
}

/// What one adapter has served since the server started.
#[derive(Default, Clone, Copy)]
struct Served {
    requests: u64,
    prompt_tokens: u64,
    generation_tokens: u64,
}

pub async fn list(
    State(state): State<Arc<AppState>>,
    access: Option<Extension<AdminAccess>>,
    Query(query): Query<ListQuery>,
) -> Response {
    if query.limit.is_some_and(|l| l == 0 || l > MAX_PAGE) {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            format!("`limit` must be between 1 and {MAX_PAGE}"),
        )
        .into_response();
    }
    let sees_paths = access.is_some_and(|a| a.sees_paths);
    // Manifests may be read (first sight of a folder): on the blocking pool.
    let listed = tokio::task::spawn_blocking(move || page(&state, &query, sees_paths)).await;
    match listed {
        Ok(v) => Json(v).into_response(),
        Err(e) => ApiError::from(crate::error::Error::Internal(format!("adapter list: {e}")))
            .into_response(),
    }
}

fn page(state: &AppState, query: &ListQuery, sees_paths: bool) -> Value {
    let mut all = state.registry.list();
    if let Some(q) = query
        .q
        .as_deref()
        .map(str::to_lowercase)
        .filter(|q| !q.is_empty())
    {
        all.retain(|a| a.name.to_lowercase().contains(&q));
    }
    let total = all.len();
    let offset = query.offset.unwrap_or(0).min(total);
    let end = query.limit.map_or(total, |l| (offset + l).min(total));
    let served = served_by_adapter(&state.metrics);
    let stats = state.engine.stats();
    let data: Vec<Value> = all[offset..end]
        .iter()
        .map(|a| {
            let mut v = entry(state, a, served.get(a.name.as_str()).copied());
            v["running"] = json!(stats.running_adapters.contains(&a.name));
            v["waiting"] = json!(stats.waiting_adapters.contains(&a.name));
            if sees_paths {
                v["path"] = json!(a.dir.display().to_string());
            }
            v
        })
        .collect();
    json!({"object": "list", "data": data, "total": total, "offset": offset})
}

fn entry(state: &AppState, a: &Arc<AdapterSpec>, served: Option<Served>) -> Value {
    let pager = state.engine.pager();
    let pins = pager.pins(a.id);
    let integrity = pager.integrity(a.id);
    let served = served.unwrap_or_default();
    json!({
        "id": a.name,
        "object": "adapter",
        "adapter_id": a.id.0,
        "tier": pager.tier(a.id).as_str(),
        "pins": pins,
        "pinned": pager.is_held(a.id),
        "rank": a.config.r,
        "target_modules": a.config.target_modules.iter().map(|p| p.module_name()).collect::<Vec<_>>(),
        "size_bytes": a.size_bytes,
        "file_bytes": a.file_bytes,
        "integrity": integrity.as_str(),
        "integrity_reason": integrity.reason(),
        "terms": terms(state, a),
        "requests_served": served.requests,
        "prompt_tokens": served.prompt_tokens,
        "generation_tokens": served.generation_tokens,
    })
}

/// The adapter's terms with metering on (`null` off; `{"error"}` when they cannot be read now).
fn terms(state: &AppState, a: &Arc<AdapterSpec>) -> Value {
    let Some(meter) = &state.meter else {
        return Value::Null;
    };
    match meter.terms(&AdapterRef::Paged(a.clone())) {
        Ok(t) => json!({
            "owner": t.owner,
            "price_per_million_input_tokens": t.price.per_m_input.to_string(),
            "price_per_million_output_tokens": t.price.per_m_output.to_string(),
            "fee_split_bps": t.split,
            "datanets": t.datanets.iter().map(|(id, w)| json!({"id": id, "weight_bps": w})).collect::<Vec<_>>(),
        }),
        Err(e) => json!({"error": ApiError::from(e.about_adapter(&a.name)).message}),
    }
}

/// Requests answered `ok` and tokens per single-adapter label, read from the counters without
/// creating a series (a mix's label `a+b` is not an adapter's and is skipped by the lookup).
fn served_by_adapter(m: &Metrics) -> HashMap<String, Served> {
    let mut out: HashMap<String, Served> = HashMap::new();
    let mut add = |c: &dyn Collector, f: fn(&mut Served, u64)| {
        for family in c.collect() {
            for metric in family.get_metric() {
                let labels = metric.get_label();
                let label = |n: &str| labels.iter().find(|l| l.name() == n).map(|l| l.value());
                if label("outcome").is_some_and(|o| o != "ok") {
                    continue;
                }
                if let Some(adapter) = label("adapter") {
                    let value = metric.get_counter().get_value() as u64;
                    f(out.entry(adapter.to_string()).or_default(), value);
                }
            }
        }
    };
    add(&m.requests, |s, v| s.requests += v);
    add(&m.prompt_tokens, |s, v| s.prompt_tokens += v);
    add(&m.generation_tokens, |s, v| s.generation_tokens += v);
    out
}
