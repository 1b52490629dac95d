//! The OpenAI-compatible HTTP server (axum). Requests are validated once (`validate`) into engine
//! requests, run and shaped by `generate`, errors mapped once (`api_error`). `run(listener, state,
//! shutdown)` serves until `shutdown` resolves, then stops accepting and drains in-flight work.
//! Who may call what is decided in `auth`. Structured outputs are read in `structured`, tool
//! calling in `tools` (requests) and `tool_parser` (replies). The web console (`webui`) is
//! served at `/` unless turned off. Every error status the server answers (413, 405,
//! unknown routes, extractor rejections) carries an OpenAI-shaped JSON body.

mod adapter_list;
mod admin;
mod api_error;
mod auth;
mod chat_reply;
mod fine_tuning;
mod generate;
mod multipart;
mod openai;
mod receipts;
mod state;
mod structured;
mod tool_parser;
mod tools;
mod validate;
mod webui;

pub use api_error::ApiError;
pub use state::{unix_now, AppState, ServerOptions};
pub use tool_parser::{ToolCall, ToolCallParser, ToolCallStream};

use crate::engine::EngineHandle;
use crate::ledger::Meter;
use crate::lora::AdapterRegistry;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use generate::Kind;
use serde_json::json;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use validate::{parse_body, ValidRequest};

impl AppState {
    pub fn new(
        engine: EngineHandle,
        registry: Arc<AdapterRegistry>,
        opts: ServerOptions,
    ) -> Arc<Self> {
        Self::with_meter(engine, registry, opts, None)
    }

    /// A server that meters every call into `meter`. One metrics registry per process: the
    /// engine's (its pager reports into it), which the meter must have been opened with too.
    pub fn with_meter(
        engine: EngineHandle,
        registry: Arc<AdapterRegistry>,
        opts: ServerOptions,
        meter: Option<Arc<Meter>>,
    ) -> Arc<Self> {
        let metrics = engine.metrics().clone();
        metrics.adapters_registered.set(registry.len() as i64);
        let positions = engine.model().config().max_positions;
        let max_context = opts.max_context.map_or(positions, |m| m.min(positions));

        // At least chars / (longest token) tokens, and a normalizer shrinks text at most 3x (NFKC
        // composition): a text beyond this bound certainly exceeds the context.
        let max_prompt_chars = engine.model().tokenizer.as_ref().map_or(usize::MAX, |t| {
            engine
                .max_seq_len()
                .saturating_mul(t.max_token_chars())
                .saturating_mul(4)
        });
        let state = Arc::new(AppState {
            max_prompt_chars,
            max_context,
            model_name: engine.model().name.clone(),
            default_max_tokens: opts.default_max_tokens,
            engine,
            registry,
            metrics,
            opts,
            meter,
            created: state::unix_now(),
            grammar: Default::default(),
            factory: Default::default(),
        });
        warm_grammar_compiler(&state);
        state
    }
}

/// Builds the grammar compiler in the background (~0.5 s for a 49k vocabulary) so the first
/// structured request does not wait for it; a request that comes first builds it itself.
fn warm_grammar_compiler(state: &Arc<AppState>) {
    if state.engine.model().tokenizer.is_none() {
        return;
    }
    let weak = Arc::downgrade(state);
    let spawned = std::thread::Builder::new()
        .name("openlora-grammar".into())
        .spawn(move || {
            if let Some(Err(e)) = weak.upgrade().map(|s| s.grammar_compiler().map(|_| ())) {
                tracing::warn!("grammar compiler: {e}");
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("grammar compiler thread: {e}");
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    let admin = Router::new()
        .route("/v1/load_lora_adapter", post(admin::load))
        .route("/v1/unload_lora_adapter", post(admin::unload))
        .route("/v1/pin_lora_adapter", post(admin::pin))
        .route("/v1/unpin_lora_adapter", post(admin::unpin))
        .route("/v1/adapters", get(adapter_list::list))
        .route(
            "/v1/files",
            post(fine_tuning::upload_file)
                .layer(DefaultBodyLimit::max(state.upload_limit()))
                .get(fine_tuning::list_files),
        )
        .route(
            "/v1/files/{file_id}",
            get(fine_tuning::get_file).delete(fine_tuning::delete_file),
        )
        .route(
            "/v1/files/{file_id}/content",
            get(fine_tuning::file_content),
        )
        .route(
            "/v1/fine_tuning/jobs",
            post(fine_tuning::create_job).get(fine_tuning::list_jobs),
        )
        .route("/v1/fine_tuning/jobs/{job_id}", get(fine_tuning::get_job))
        .route(
            "/v1/fine_tuning/jobs/{job_id}/cancel",
            post(fine_tuning::cancel_job),
        )
        .route(
            "/v1/fine_tuning/jobs/{job_id}/events",
            get(fine_tuning::job_events),
        )
        .route(
            "/v1/fine_tuning/jobs/{job_id}/checkpoints",
            get(fine_tuning::job_checkpoints),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_admin,
        ));
    let api = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/v1/receipts/{request_id}", get(receipts::get))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_api_key,
        ));
    let console = match state.opts.webui {
        true => webui::routes(),
        false => Router::new(),
    };
    Router::new()
        .merge(admin)
        .merge(api)
        .merge(console)
        .route("/health", get(|| async { "ok" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .fallback(|method: Method, uri: Uri| async move {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!("Invalid URL ({method} {})", uri.path()),
            )
        })
        .layer(DefaultBodyLimit::max(state.opts.max_body_bytes))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            reject_oversized,
        ))
        .layer(middleware::map_response_with_state(
            state.clone(),
            openai_error_body,
        ))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "internal error (the server keeps running)",
            )
            .into_response()
        }))
        .with_state(state)
}

/// Serves on `listener` until `shutdown` completes; in-flight requests are then drained.
pub async fn run(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // The peer address lets the admin endpoints tell loopback callers apart (`auth`).
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// Bodies announced larger than this (or than an upload's limit) are refused without being read (the connection closes).
const DRAIN_CAP: u64 = 64 << 20;
/// How long an oversized body may take to arrive before the 413 goes out anyway.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A body whose Content-Length exceeds the limit gets its 413 only after the body has been read
/// and discarded (up to `DRAIN_CAP`, `DRAIN_TIMEOUT`): answering while the client is still sending
/// would close the connection under it, and the client would see a reset instead of the error.
async fn reject_oversized(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let limit = match req.uri().path() {
        "/v1/files" => state.upload_limit(),
        _ => state.opts.max_body_bytes,
    } as u64;
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match announced {
        Some(n) if n > limit => {
            if n <= DRAIN_CAP {
                use futures::StreamExt;
                let mut body = req.into_body().into_data_stream();
                let drain = async { while let Some(Ok(_)) = body.next().await {} };
                let _ = tokio::time::timeout(DRAIN_TIMEOUT, drain).await;
            }
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                format!("request body too large (limit {limit} bytes)"),
            )
            .into_response()
        }
        _ => next.run(req).await,
    }
}

/// Gives every error response without a JSON body (axum's 413, 405, extractor rejections) the
/// OpenAI error shape, keeping its status and headers (`Allow` on 405).
async fn openai_error_body(State(state): State<Arc<AppState>>, res: Response) -> Response {
    let status = res.status();
    let json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if json || !(status.is_client_error() || status.is_server_error()) {
        return res;
    }
    let message = match status {
        StatusCode::PAYLOAD_TOO_LARGE => format!(
            "request body too large (limit {} bytes)",
            state.opts.max_body_bytes
        ),
        StatusCode::METHOD_NOT_ALLOWED => "method not allowed for this endpoint".to_string(),
        s => s.canonical_reason().unwrap_or("error").to_string(),
    };
    let kind = match status.is_server_error() {
        true => "server_error",
        false => "invalid_request_error",
    };
    let (mut parts, _) = res.into_parts();
    let body = ApiError::new(status, kind, message).into_response();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.extend(body.headers().clone());
    Response::from_parts(parts, body.into_body())
}

/// With metering on, the account a call is billed to: the payer of the caller's API key.
/// Keys without a payer address (the admin key) cannot run metered calls.
fn payer(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<alloy::primitives::Address>, ApiError> {
    if state.meter.is_none() {
        return Ok(None);
    }
    auth::bearer_of(headers)
        .and_then(|k| auth::payer_of(&state.opts, k))
        .and_then(|p| p.parse().ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::FORBIDDEN,
                "permission_error",
                "metered calls need an API key that is billed to a payer address",
            )
        })
}

async fn chat(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    generate_endpoint(state, headers, body, Kind::Chat).await
}

async fn completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    generate_endpoint(state, headers, body, Kind::Completion).await
}

/// Parses and validates (templating, tokenizing) on the blocking pool, never on an async worker,
/// then runs the request.
async fn generate_endpoint(
    state: Arc<AppState>,
    headers: HeaderMap,
    body: Bytes,
    kind: Kind,
) -> Response {
    let payer = match payer(&state, &headers) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let st = state.clone();
    let valid = tokio::task::spawn_blocking(move || match kind {
        Kind::Chat => parse_body(&body).and_then(|r| ValidRequest::chat(&st, r)),
        Kind::Completion => parse_body(&body).and_then(|r| ValidRequest::completion(&st, r)),
    })
    .await
    .unwrap_or_else(|e| Err(crate::error::Error::Internal(format!("validation: {e}"))));
    match valid {
        Ok(v) => generate::respond(state, kind, v, payer).await,
        Err(e) => reject(&state, e, kind),
    }
}

fn reject(state: &AppState, e: crate::error::Error, kind: Kind) -> Response {
    let e = ApiError::from(e).prompt_param(kind.prompt_param());
    state
        .metrics
        .requests
        .with_label_values(&["none", e.error_type()])
        .inc();
    e.into_response()
}

/// 200 while the engine serves; 503 while it is down (restarting after a panic).
async fn ready(State(state): State<Arc<AppState>>) -> Response {
    if state.engine.is_ready() {
        return "ready".into_response();
    }
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "service_unavailable",
        "the engine is restarting",
    )
    .into_response()
}

async fn models(State(state): State<Arc<AppState>>) -> Response {
    let base = &state.model_name;
    let mut data = vec![
        json!({"id": base, "object": "model", "created": state.created, "owned_by": "openlora", "root": base, "parent": null}),
    ];
    for spec in state.registry.list() {
        let name = &spec.name;
        data.push(json!({"id": name, "object": "model", "created": state.created, "owned_by": "openlora", "root": name, "parent": base}));
    }
    Json(json!({"object": "list", "data": data})).into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let s = state.engine.stats();
    let m = &state.metrics;
    let usage = s.kv_blocks_used as f64 / s.kv_blocks_total.max(1) as f64;
    m.queue_length.set(s.waiting as i64);
    m.running.set(s.running as i64);
    m.kv_usage.set(usage);
    // The engine counts; the counter catches up on scrape.
    m.preemptions
        .inc_by(s.preemptions.saturating_sub(m.preemptions.get()));
    for (c, v) in [
        (&m.prefix_cache_queries, s.prefix_cache_queries),
        (&m.prefix_cache_hits, s.prefix_cache_hits),
        (&m.vllm_prefix_cache_queries, s.prefix_cache_queries),
        (&m.vllm_prefix_cache_hits, s.prefix_cache_hits),
    ] {
        c.inc_by(v.saturating_sub(c.get()));
    }
    vllm_series(m, &s, state.engine.max_adapters_per_step());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        m.render(),
    )
        .into_response()
}

/// The `vllm:` series the Gateway API Inference Extension's endpoint picker reads: load, KV usage,
/// the adapters in flight (one series, stamped with the scrape time) and the cache config.
fn vllm_series(m: &crate::metrics::Metrics, s: &crate::engine::EngineStats, max_lora: usize) {
    let usage = s.kv_blocks_used as f64 / s.kv_blocks_total.max(1) as f64;
    m.vllm_waiting.set(s.waiting as f64);
    m.vllm_running.set(s.running as f64);
    m.vllm_kv_usage.set(usage);
    m.vllm_lora_info.reset();
    m.vllm_lora_info
        .with_label_values(&[
            &max_lora.to_string(),
            &s.running_adapters.join(","),
            &s.waiting_adapters.join(","),
        ])
        .set(state::unix_now() as f64);
    m.vllm_cache_config_info.reset();
    m.vllm_cache_config_info
        .with_label_values(&[&s.kv_block_size.to_string(), &s.kv_blocks_total.to_string()])
        .set(1.0);
}
