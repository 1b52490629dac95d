//! Runtime adapter management, vLLM-compatible: load/unload by name and path, and a listing of
//! every adapter with its tier and stats. Loading validates the config and the tensor header
//! against the base model (weights are paged in on first use); a bad one is a 400 and changes
//! nothing. Unloading never disturbs running sequences: their pager lease keeps the weights.

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

pub async fn load(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let run = move || -> Result<String, ApiError> {
        let r: LoadAdapterRequest = parse_body(&body)?;
        // Registration reads the config and the safetensors header only; weights are paged in
        // by the engine's pager when a request first uses the adapter.
        // `lora_path` is a folder, or a hub id from the local hub cache, downloaded when missing (as vLLM accepts).
        let dir = crate::lora::hub::local_or_cached(&r.lora_path)?;
        state.registry.register(&r.lora_name, &dir)?;
        state
            .metrics
            .adapters_registered
            .set(state.registry.len() as i64);
        Ok(r.lora_name)
    };
    // Registration touches the file system and may download (size- and time-limited): on the
    // blocking pool, never on an async worker.
    let done = tokio::task::spawn_blocking(run).await.unwrap_or_else(|e| {
        Err(ApiError::from(crate::error::Error::Internal(format!(
            "adapter load: {e}"
        ))))
    });
    match done {
        Ok(name) => Json(json!({"status": "ok", "message": format!("Success: LoRA adapter '{name}' added successfully.")})).into_response(),
        Err(e) => e.into_response(),
    }
}

pub async fn unload(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let run = || -> Result<String, ApiError> {
        let r: UnloadAdapterRequest = parse_body(&body)?;
        let id = state.registry.unregister(&r.lora_name)?;
        state.engine.pager().forget(id);
        state
            .metrics
            .adapters_registered
            .set(state.registry.len() as i64);
        Ok(r.lora_name)
    };
    match run() {
        Ok(name) => Json(json!({"status": "ok", "message": format!("Success: LoRA adapter '{name}' removed successfully.")})).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Every registered adapter with the tier its weights are in now (device, host or disk) and its
/// pins, so routing layers see idle-but-resident adapters too.
pub async fn list(State(state): State<Arc<AppState>>) -> Response {
    let stats = state.engine.stats();
    let pager = state.engine.pager();
    let data: Vec<_> = state
        .registry
        .list()
        .into_iter()
        .map(|a| {
            json!({
                "id": a.name,
                "object": "adapter",
                "adapter_id": a.id.0,
                "tier": pager.tier(a.id).as_str(),
                "pins": pager.pins(a.id),
                "path": a.dir.display().to_string(),
                "rank": a.config.r,
                "target_modules": a.config.target_modules.iter().map(|p| p.module_name()).collect::<Vec<_>>(),
                "size_bytes": a.size_bytes,
                "file_bytes": a.file_bytes,
                "running": stats.running_adapters.contains(&a.name),
                "waiting": stats.waiting_adapters.contains(&a.name),
            })
        })
        .collect();
    Json(json!({"object": "list", "data": data})).into_response()
}
