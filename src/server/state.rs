//! Shared state of the HTTP layer: the engine handle, the adapter registry, auth keys, metrics,
//! and the usage meter when metering is on.

use super::tool_parser::ToolCallParser;
pub use crate::clock::unix_now;
use crate::engine::{EngineHandle, GrammarCompiler};
use crate::error::Result;
use crate::factory::Factory;
use crate::ledger::Meter;
use crate::lora::{AdapterRegistry, AdapterRoots};
use crate::metrics::Metrics;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

pub struct ServerOptions {
    /// API key -> payer account id. Empty = no auth on the OpenAI endpoints.
    pub api_keys: HashMap<String, String>,
    /// Admin key for adapter management. `None`: the admin endpoints are disabled when API keys
    /// are set, and answer loopback peers only when no key is set (see `auth`).
    pub admin_key: Option<String>,
    /// `--insecure-open-admin`: admin endpoints open to anyone when no admin key is set.
    pub insecure_open_admin: bool,
    /// The folders `/v1/load_lora_adapter` may read adapters from (`--adapter-roots`).
    pub adapter_roots: AdapterRoots,
    /// Most tokens (prompt + completion) one sequence may hold; `None` = the model's context.
    /// `max_tokens` is clamped to what is left of it at the edge (and so is the metered reservation).
    pub max_context: Option<usize>,
    /// Waiting sequences beyond which new requests get 429.
    pub max_queue: usize,
    pub default_max_tokens: usize,
    pub max_body_bytes: usize,
    /// How the model writes tool calls (`--tool-call-parser`).
    pub tool_call_parser: ToolCallParser,
    /// Serve the web console at `/` (`--no-webui` turns it off).
    pub webui: bool,
    /// Largest fine-tuning file upload, in bytes (`--max-upload-mb`).
    pub max_upload_bytes: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            api_keys: HashMap::new(),
            admin_key: None,
            insecure_open_admin: false,
            adapter_roots: AdapterRoots::default(),
            max_context: None,
            max_queue: 256,
            default_max_tokens: 512,
            max_body_bytes: 4 << 20,
            tool_call_parser: ToolCallParser::default(),
            webui: true,
            max_upload_bytes: 64 << 20,
        }
    }
}

pub struct AppState {
    pub engine: EngineHandle,
    pub registry: Arc<AdapterRegistry>,
    pub metrics: Arc<Metrics>,
    pub model_name: String,
    pub opts: ServerOptions,
    /// Usage metering; `None` = calls are not recorded or billed.
    pub meter: Option<Arc<Meter>>,
    pub default_max_tokens: usize,
    /// Most tokens one sequence may hold (the model's context, or less).
    pub max_context: usize,
    pub created: u64,
    /// A prompt text longer than this (in characters) cannot fit the context whatever it
    /// tokenizes to: rejected before it is tokenized.
    pub max_prompt_chars: usize,
    /// Compiles structured-output grammars; built on the first request that needs one.
    pub grammar: OnceLock<Arc<GrammarCompiler>>,
    /// The Model Factory (fine-tuning API), set once at start-up when `--data-dir` is given.
    pub factory: OnceLock<Arc<Factory>>,
}

impl AppState {
    /// The largest `POST /v1/files` body: the factory's file limit plus room for the form.
    pub fn upload_limit(&self) -> usize {
        self.opts.max_upload_bytes.saturating_add(64 << 10)
    }

    /// The model's grammar compiler (built once, on first use).
    pub fn grammar_compiler(&self) -> Result<Arc<GrammarCompiler>> {
        if let Some(g) = self.grammar.get() {
            return Ok(g.clone());
        }
        let g = Arc::new(GrammarCompiler::new(self.engine.model())?);
        Ok(self.grammar.get_or_init(|| g).clone())
    }
}
