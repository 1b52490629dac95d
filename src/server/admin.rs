//! Runtime adapter management, vLLM-compatible: load/unload by name and path, and a listing of
//! every adapter with its tier and stats. Loading validates the adapter fully; a bad one is a 400
//! and changes nothing. Unloading never disturbs running sequences: they hold their adapter.

use super::api_error::ApiError;
use super::openai::{LoadAdapterRequest, UnloadAdapterRequest};
use super::state::AppState;
use super::validate::parse_body;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;

pub async fn load(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let run = || -> Result<String, ApiError> {
        let r: LoadAdapterRequest = parse_body(&body)?;
        let start = Instant::now();
        state
            .registry
            .register(&r.lora_name, std::path::Path::new(&r.lora_path))?;
        state
            .metrics
            .adapter_loads
            .with_label_values(&["device"])
            .inc();
        state
            .metrics
            .adapter_load_seconds
            .with_label_values(&["device"])
            .observe(start.elapsed().as_secs_f64());
        state
            .metrics
            .adapters_registered
            .set(state.registry.list().len() as i64);
        Ok(r.lora_name)
    };
    // Loading reads and checks weights: keep it off the async workers.
    match tokio::task::block_in_place(run) {
        Ok(name) => Json(json!({"status": "ok", "message": format!("Success: LoRA adapter '{name}' added successfully.")})).into_response(),
        Err(e) => e.into_response(),
    }
}

pub async fn unload(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let run = || -> Result<String, ApiError> {
        let r: UnloadAdapterRequest = parse_body(&body)?;
        state.registry.unregister(&r.lora_name)?;
        state
            .metrics
            .adapter_evictions
            .with_label_values(&["device"])
            .inc();
        state
            .metrics
            .adapters_registered
            .set(state.registry.list().len() as i64);
        Ok(r.lora_name)
    };
    match run() {
        Ok(name) => Json(json!({"status": "ok", "message": format!("Success: LoRA adapter '{name}' removed successfully.")})).into_response(),
        Err(e) => e.into_response(),
    }
}

pub async fn list(State(state): State<Arc<AppState>>) -> Response {
    let stats = state.engine.stats();
    let data: Vec<_> = state
        .registry
        .list()
        .into_iter()
        .filter_map(|(name, id)| state.registry.get(id).map(|a| (name, id, a)))
        .map(|(name, id, a)| {
            json!({
                "id": name,
                "object": "adapter",
                "adapter_id": id.0,
                // CPU build: loaded weights are already in the compute-ready layout.
                "tier": "device",
                "path": a.path.display().to_string(),
                "rank": a.config.r,
                "target_modules": a.config.target_modules.iter().map(|p| p.module_name()).collect::<Vec<_>>(),
                "size_bytes": a.size_bytes(),
                "running": stats.running_adapters.contains(&name),
                "waiting": stats.waiting_adapters.contains(&name),
            })
        })
        .collect();
    Json(json!({"object": "list", "data": data})).into_response()
}
