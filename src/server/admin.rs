//! Runtime adapter management, vLLM-compatible: load/unload by name and path (the listing is
//! `adapter_list`); pin/unpin by name (`/v1/pin_lora_adapter`, `/v1/unpin_lora_adapter`: the
//! adapter is paged in and kept on device until unpinned; refused with a 409 when it would leave
//! no device slot for other adapters; an unknown name is a 404). Loading validates the config and the tensor header
//! against the base model (weights are paged in on first use); a bad one is a 400 and changes
//! nothing. Unloading never disturbs running sequences: their pager lease keeps the weights.
//! What always holds: `lora_name` is in the adapter-name alphabet (`lora::check_adapter_name`,
//! checked first); `lora_path` is confined to the adapter roots (`AdapterRoots`); a taken
//! name is only replaced with `"load_inplace": true` (409 otherwise); the base model's name is
//! never an adapter's; errors name the adapter, never a server path; paths are listed only to
//! callers `auth` lets see them.

use super::api_error::ApiError;
use super::openai::{LoadAdapterRequest, UnloadAdapterRequest};
use super::state::AppState;
use super::validate::parse_body;
use crate::error::Error;
use crate::lora::check_adapter_name;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use std::sync::Arc;

pub async fn load(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let run = move || -> Result<String, ApiError> {
        let r: LoadAdapterRequest = parse_body(&body)?;
        let name = r.lora_name.as_str();
        check_adapter_name(name)?;
        let base = &state.model_name;
        if name == base || name.starts_with(&format!("{base}:")) {
            return Err(
                Error::invalid("lora_name", "is the base model's name; choose another").into(),
            );
        }
        if !r.load_inplace && state.registry.get_id(name).is_some() {
            return Err(Error::conflict(
                "lora_name",
                format!(
                "adapter `{name}` is already registered; pass \"load_inplace\": true to replace it"
            ),
            )
            .into());
        }
        // Registration reads the config and the safetensors header only; weights are paged in
        // by the engine's pager when a request first uses the adapter. `lora_path` is a folder
        // under the adapter roots, or a hub id (downloaded into the hub cache when missing).
        let register = || -> crate::error::Result<()> {
            let dir = state.opts.adapter_roots.resolve(name, &r.lora_path)?;
            if r.load_inplace {
                if let (_, Some(old)) = state.registry.replace(name, &dir)? {
                    state.engine.pager().forget(old);
                }
            } else {
                state.registry.register(name, &dir)?;
            }
            Ok(())
        };
        register().map_err(|e| {
            tracing::info!(adapter = %name, error = %e, "adapter load refused");
            e.about_adapter(name)
        })?;
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

/// `POST /v1/pin_lora_adapter {"lora_name"}`: keeps the adapter on device (paged in now if needed).
pub async fn pin(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    set_pin(&state, &body, true)
}

/// `POST /v1/unpin_lora_adapter {"lora_name"}`: releases the admin's pin (a no-op if none).
pub async fn unpin(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    set_pin(&state, &body, false)
}

fn set_pin(state: &AppState, body: &Bytes, pin: bool) -> Response {
    let run = || -> Result<String, ApiError> {
        let r: UnloadAdapterRequest = parse_body(body)?;
        let spec = state.registry.spec(&r.lora_name).ok_or_else(|| {
            Error::NotFound(format!("adapter `{}` is not registered", r.lora_name))
        })?;
        match pin {
            true => state.engine.pager().pin(&spec)?,
            false => _ = state.engine.pager().unpin(spec.id),
        }
        tracing::info!(adapter = %r.lora_name, pinned = pin, "adapter pin set by the admin");
        Ok(r.lora_name)
    };
    let verb = if pin { "pinned" } else { "unpinned" };
    match run() {
        Ok(name) => Json(json!({"status": "ok", "pinned": pin, "message": format!("Success: LoRA adapter '{name}' {verb}.")})).into_response(),
        Err(e) => e.into_response(),
    }
}
