//! OpenAI's files and fine-tuning endpoints over the Model Factory (`crate::factory`), behind the
//! admin key (training changes what clients get): `POST/GET /v1/files`, `GET/DELETE
//! /v1/files/{id}`, `GET /v1/files/{id}/content`, `POST/GET /v1/fine_tuning/jobs`, `GET
//! /v1/fine_tuning/jobs/{id}`, `POST .../cancel`, `GET .../events`, `GET .../checkpoints`.
//! Lists are newest first, paged with `after` (an id) and `limit` (1..=100, default 20).
//! Without `--data-dir` the factory is off and these routes answer 404 saying so. Factory work
//! (SQLite, files, tokenizing) runs on the blocking pool, never on an async worker.

use super::api_error::ApiError;
use super::multipart;
use super::state::AppState;
use crate::error::{Error, Result};
use crate::factory::{objects, CheckpointId, EventId, Factory, FileId, JobId};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

type Params = Query<HashMap<String, String>>;

/// Runs `f` with the factory on the blocking pool; shapes its answer as JSON.
async fn with_factory<F>(state: Arc<AppState>, f: F) -> Response
where
    F: FnOnce(&Factory) -> Result<Value> + Send + 'static,
{
    let Some(factory) = state.factory.get().cloned() else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "fine-tuning is off on this server (start it with --data-dir)",
        )
        .into_response();
    };
    let done = tokio::task::spawn_blocking(move || f(&factory))
        .await
        .unwrap_or_else(|e| Err(Error::Internal(format!("fine-tuning: {e}"))));
    match done {
        Ok(v) => Json(v).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// `limit` (default 20, at most 100).
fn limit(q: &HashMap<String, String>) -> Result<usize> {
    match q.get("limit") {
        None => Ok(20),
        Some(s) => s
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=100).contains(n))
            .ok_or_else(|| Error::invalid("limit", "must be an integer between 1 and 100")),
    }
}

/// An `after` cursor of id type `T`: absent, or exactly the form `parse` accepts.
fn after<T>(q: &HashMap<String, String>, parse: fn(&str) -> Option<T>) -> Result<Option<T>> {
    q.get("after")
        .map(|s| parse(s).ok_or_else(|| Error::invalid("after", "is not an id of this list")))
        .transpose()
}

pub async fn upload_file(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    with_factory(state, move |f| {
        let parts = multipart::parse(&body, &multipart::boundary(&ct)?)?;
        let purpose = parts
            .get("purpose")
            .map(|p| String::from_utf8_lossy(&p.data).trim().to_string())
            .ok_or_else(|| Error::invalid("purpose", "is required"))?;
        let file = parts
            .get("file")
            .ok_or_else(|| Error::invalid("file", "is required"))?;
        let name = file.filename.as_deref().unwrap_or("upload.jsonl");
        Ok(objects::file(&f.upload(name, &purpose, &file.data)?))
    })
    .await
}

pub async fn list_files(State(state): State<Arc<AppState>>, Query(q): Params) -> Response {
    with_factory(state, move |f| {
        let (limit, after) = (limit(&q)?, after(&q, FileId::parse)?);
        let page = f
            .store
            .files(q.get("purpose").map(String::as_str), after.as_ref(), limit)?;
        Ok(objects::list(&page, objects::file))
    })
    .await
}

pub async fn get_file(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    with_factory(state, move |f| Ok(objects::file(&f.file(&id)?))).await
}

pub async fn delete_file(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    with_factory(state, move |f| {
        f.delete_file(&id)?;
        Ok(objects::file_deleted(&id))
    })
    .await
}

pub async fn file_content(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    let Some(factory) = state.factory.get().cloned() else {
        return with_factory(state, |_| Ok(Value::Null)).await;
    };
    let done = tokio::task::spawn_blocking(move || factory.file_content(&id))
        .await
        .unwrap_or_else(|e| Err(Error::Internal(format!("file content: {e}"))));
    match done {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

pub async fn create_job(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    with_factory(state, move |f| {
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| Error::invalid("body", format!("not valid JSON ({e})")))?;
        Ok(objects::job(&f.create_job(&v)?))
    })
    .await
}

pub async fn list_jobs(State(state): State<Arc<AppState>>, Query(q): Params) -> Response {
    with_factory(state, move |f| {
        let page = f
            .store
            .jobs(after(&q, JobId::parse)?.as_ref(), limit(&q)?)?;
        Ok(objects::list(&page, objects::job))
    })
    .await
}

pub async fn get_job(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    with_factory(state, move |f| Ok(objects::job(&f.job(&id)?))).await
}

pub async fn cancel_job(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    with_factory(state, move |f| Ok(objects::job(&f.cancel(&id)?))).await
}

pub async fn job_events(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(q): Params,
) -> Response {
    with_factory(state, move |f| {
        let job = f.job(&id)?;
        let page = f
            .store
            .events(&job.id, after(&q, EventId::parse)?.as_ref(), limit(&q)?)?;
        Ok(objects::list(&page, objects::event))
    })
    .await
}

pub async fn job_checkpoints(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(q): Params,
) -> Response {
    with_factory(state, move |f| {
        let job = f.job(&id)?;
        let after = after(&q, CheckpointId::parse)?;
        let page = f.store.checkpoints(&job.id, after.as_ref(), limit(&q)?)?;
        let model = job
            .fine_tuned_model
            .clone()
            .unwrap_or_else(|| f.fine_tuned_name(&job));
        Ok(objects::list(&page, |c| objects::checkpoint(c, &model)))
    })
    .await
}
