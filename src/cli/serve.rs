//! `openlora serve`: flags > environment (`OPENLORA_*`) > TOML config file > defaults, merged and
//! validated once into the engine and server options. Resolves `--model` (a local file or folder,
//! else a hub id fetched into the hub cache: `hub::resolve_model`), loads it (with progress), registers
//! every adapter folder under `--adapters-dir` and every `--hub-adapter` (lazily: weights are paged
//! in on first use within the `--adapter-*` budgets), serves until SIGTERM/Ctrl-C, then drains
//! in-flight requests up to `--shutdown-timeout` seconds and exits 0. An engine panic fails the
//! in-flight requests (500) and the engine is rebuilt in place (`EngineHandle::spawn_supervised`). With `--ledger` every call is
//! metered (see `ledger`); with `--chain-rpc` too, payers are admitted against their deposits and
//! usage settles on chain from a background worker; with `--adapter-registry-address` adapters
//! are verified and priced from chain and a sync task keeps those terms fresh. Runtime adapter loads are confined to
//! `--adapter-roots` (default: the adapters dir and the hub cache); who may use the admin
//! endpoints is decided in `server::auth` (`--admin-key`, `--insecure-open-admin`).

use super::runtime_args::RuntimeArgs;
use anyhow::Context;
use openlora::config::EngineConfig;
use openlora::engine::{EngineHandle, LlmEngine};
use openlora::exec::{DeviceKind, ExecConfig};
use openlora::ledger::chain_gate::ChainGate;
use openlora::ledger::chain_sync::ChainSync;
use openlora::ledger::{MeterConfig, MeteringArgs, MeteringFile};
use openlora::lora::{AdapterGate, AdapterPager, AdapterRegistry, AdapterRoots, PagerConfig};
use openlora::metrics::Metrics;
use openlora::model::Model;
use openlora::server::{self, AppState, ServerOptions, ToolCallParser};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args, Debug, Default)]
pub struct ServeArgs {
    /// A .gguf file, an HF model folder (config.json + safetensors + tokenizer.json), or a
    /// Hugging Face hub id: `org/name[@rev]` (safetensors, sharded or not) or
    /// `org/name[@rev]:file.gguf`, from the hub cache, downloaded into it when missing.
    #[arg(long, env = "OPENLORA_MODEL")]
    pub model: Option<String>,
    /// The GGUF file to load from the hub repo `--model org/name` (or from a local folder).
    #[arg(long, env = "OPENLORA_GGUF_FILE")]
    pub gguf_file: Option<String>,
    /// Name the base model is served under (default: the file or folder name).
    #[arg(long, env = "OPENLORA_SERVED_MODEL_NAME")]
    pub served_model_name: Option<String>,
    /// Folder of adapters: one PEFT folder each, registered under the folder name.
    #[arg(long, env = "OPENLORA_ADAPTERS_DIR")]
    pub adapters_dir: Option<PathBuf>,
    #[arg(long, env = "OPENLORA_HOST")]
    pub host: Option<String>,
    #[arg(long, env = "OPENLORA_PORT")]
    pub port: Option<u16>,
    /// TOML file with any of these settings (snake_case keys; `api_keys` as a table).
    #[arg(long, env = "OPENLORA_CONFIG")]
    pub config: Option<PathBuf>,
    /// `key=payer` (repeatable): bearer API keys and the payer account each is billed to.
    #[arg(long = "api-key", env = "OPENLORA_API_KEYS", value_delimiter = ',')]
    pub api_keys: Vec<String>,
    /// Key for the adapter admin endpoints. Without it they are disabled when API keys are set,
    /// and answer only loopback peers when no key is set.
    #[arg(long, env = "OPENLORA_ADMIN_KEY")]
    pub admin_key: Option<String>,
    /// INSECURE: open the adapter admin endpoints to anyone when no admin key is set.
    #[arg(long, env = "OPENLORA_INSECURE_OPEN_ADMIN")]
    pub insecure_open_admin: bool,
    /// Do not serve the web console at `/` (it is on by default; it holds no secret).
    #[arg(long, env = "OPENLORA_NO_WEBUI")]
    pub no_webui: bool,
    /// Folders `/v1/load_lora_adapter` may read adapters from (repeatable; default: the adapters
    /// dir and the hub cache). Paths are canonicalized; symlinks leaving them are refused.
    #[arg(
        long = "adapter-roots",
        env = "OPENLORA_ADAPTER_ROOTS",
        value_delimiter = ','
    )]
    pub adapter_roots: Vec<PathBuf>,
    /// KV cache memory in MiB (the CPU executor's KV budget; on the device executor a cap on
    /// what --gpu-memory-utilization leaves, default 1024 on --device candle-cpu, none on CUDA).
    #[arg(long, env = "OPENLORA_KV_CACHE_MB")]
    pub kv_cache_mb: Option<usize>,
    /// Fraction of the device's memory the device executor may use (vLLM semantics): the KV
    /// cache gets what the weights and the adapter slot pool leave of it. On --device candle-cpu
    /// the device memory is a stand-in, the host's MemAvailable.
    #[arg(long, env = "OPENLORA_GPU_MEMORY_UTILIZATION")]
    pub gpu_memory_utilization: Option<f64>,
    #[arg(long, env = "OPENLORA_MAX_BATCH_TOKENS")]
    pub max_batch_tokens: Option<usize>,
    /// Token-equivalents one step may cost while streams are decoding: prefill chunks of long
    /// prompts shrink to fit, bounding inter-token latency (see `engine::scheduler`).
    #[arg(long, env = "OPENLORA_MAX_STEP_COST")]
    pub max_step_cost: Option<usize>,
    #[arg(long, env = "OPENLORA_MAX_NUM_SEQS")]
    pub max_num_seqs: Option<usize>,
    #[arg(long, env = "OPENLORA_MAX_ADAPTERS_PER_STEP")]
    pub max_adapters_per_step: Option<usize>,
    /// Reuse the KV blocks of cached prompt prefixes (the default; blocks are keyed by adapter
    /// identity, so they are never shared across adapters or adapter reloads).
    #[arg(long, overrides_with = "no_enable_prefix_caching")]
    pub enable_prefix_caching: bool,
    /// Turn the prefix cache off.
    #[arg(
        long,
        env = "OPENLORA_NO_PREFIX_CACHING",
        overrides_with = "enable_prefix_caching"
    )]
    pub no_enable_prefix_caching: bool,
    /// Adapters kept in the compute-ready (device) tier at once: the device's adapter slot pool
    /// (default: 64 on the CPU executor; on the device executor, whose pool is allocated up front,
    /// --max-adapters-per-step, 16).
    #[arg(long, env = "OPENLORA_ADAPTER_DEVICE_SLOTS", alias = "max-loras")]
    pub adapter_device_slots: Option<usize>,
    /// Host memory for adapter files, in MiB.
    #[arg(long, env = "OPENLORA_ADAPTER_HOST_MB")]
    pub adapter_host_mb: Option<usize>,
    /// Hugging Face hub adapter ids (`org/name` or `org/name@revision`, repeatable), resolved in the
    /// local hub cache (`HF_HOME`/`HF_HUB_CACHE`), downloaded into it when missing (not with
    /// `HF_HUB_OFFLINE=1`); registered under `org/name`.
    #[arg(
        long = "hub-adapter",
        env = "OPENLORA_HUB_ADAPTERS",
        value_delimiter = ','
    )]
    pub hub_adapters: Vec<String>,
    /// Waiting requests beyond which new ones get 429.
    #[arg(long, env = "OPENLORA_MAX_QUEUE")]
    pub max_queue: Option<usize>,
    /// Seconds to finish in-flight requests after SIGTERM.
    #[arg(long, env = "OPENLORA_SHUTDOWN_TIMEOUT")]
    pub shutdown_timeout: Option<u64>,
    /// How the model writes tool calls (parsed from `tool_choice: auto` replies, and the form
    /// `required`/named calls are constrained to): `hermes` (default) or `llama3_json`.
    #[arg(long, env = "OPENLORA_TOOL_CALL_PARSER", value_enum)]
    pub tool_call_parser: Option<ToolCallParser>,
    /// Folder of the Model Factory (uploaded files, fine-tuning jobs in SQLite, fine-tuned
    /// adapters); turns on the OpenAI files and fine-tuning endpoints (admin key).
    #[arg(long, env = "OPENLORA_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Threads a fine-tuning job may use (serving keeps the rest; default 1).
    #[arg(long, env = "OPENLORA_TRAINING_THREADS")]
    pub training_threads: Option<usize>,
    /// Nice value of the training threads, 0-19 (default 19, the lowest priority: serving threads
    /// get the cores first).
    #[arg(long, env = "OPENLORA_TRAINING_NICE", value_parser = clap::value_parser!(i32).range(0..=19))]
    pub training_nice: Option<i32>,
    /// Largest fine-tuning file upload, in MiB (default 64).
    #[arg(long, env = "OPENLORA_MAX_UPLOAD_MB")]
    pub max_upload_mb: Option<usize>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    #[command(flatten)]
    pub metering: MeteringArgs,
}

/// The same settings as a TOML file.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    model: Option<String>,
    gguf_file: Option<String>,
    served_model_name: Option<String>,
    adapters_dir: Option<PathBuf>,
    host: Option<String>,
    port: Option<u16>,
    #[serde(default)]
    api_keys: HashMap<String, String>,
    admin_key: Option<String>,
    #[serde(default)]
    insecure_open_admin: bool,
    webui: Option<bool>,
    #[serde(default)]
    adapter_roots: Vec<PathBuf>,
    kv_cache_mb: Option<usize>,
    gpu_memory_utilization: Option<f64>,
    max_batch_tokens: Option<usize>,
    max_step_cost: Option<usize>,
    max_num_seqs: Option<usize>,
    max_adapters_per_step: Option<usize>,
    enable_prefix_caching: Option<bool>,
    adapter_device_slots: Option<usize>,
    adapter_host_mb: Option<usize>,
    #[serde(default)]
    hub_adapters: Vec<String>,
    max_queue: Option<usize>,
    shutdown_timeout: Option<u64>,
    tool_call_parser: Option<ToolCallParser>,
    data_dir: Option<PathBuf>,
    training_threads: Option<usize>,
    training_nice: Option<i32>,
    max_upload_mb: Option<usize>,
    dtype: Option<String>,
    quantize: Option<String>,
    kv_cache_dtype: Option<String>,
    activations: Option<String>,
    threads: Option<usize>,
    device: Option<String>,
    max_lora_rank: Option<usize>,
    lora_dtype: Option<String>,
    #[serde(default)]
    qmatmul: bool,
    #[serde(default)]
    metering: MeteringFile,
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let file: FileConfig = match &args.config {
        Some(p) => toml::from_str(
            &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        )
        .with_context(|| format!("parsing {}", p.display()))?,
        None => FileConfig::default(),
    };
    let model_arg = args
        .model
        .or(file.model)
        .context("--model is required (a .gguf file, an HF folder or a hub id)")?;
    let gguf_file = args.gguf_file.or(file.gguf_file);
    let mut api_keys = file.api_keys;
    for kv in &args.api_keys {
        let (k, payer) = kv.split_once('=').unwrap_or((kv.as_str(), "anonymous"));
        api_keys.insert(k.to_string(), payer.to_string());
    }
    let defaults = EngineConfig::default();
    let mut engine_cfg = EngineConfig {
        max_batch_tokens: args
            .max_batch_tokens
            .or(file.max_batch_tokens)
            .unwrap_or(defaults.max_batch_tokens),
        max_step_cost: args
            .max_step_cost
            .or(file.max_step_cost)
            .unwrap_or(defaults.max_step_cost),
        max_num_seqs: args
            .max_num_seqs
            .or(file.max_num_seqs)
            .unwrap_or(defaults.max_num_seqs),
        max_adapters_per_step: args
            .max_adapters_per_step
            .or(file.max_adapters_per_step)
            .unwrap_or(defaults.max_adapters_per_step),
        enable_prefix_caching: match (args.enable_prefix_caching, args.no_enable_prefix_caching) {
            (_, true) => false,
            (true, _) => true,
            _ => file
                .enable_prefix_caching
                .unwrap_or(defaults.enable_prefix_caching),
        },
        ..defaults
    };
    let meter_cfg = MeterConfig::merge(args.metering, file.metering)?;
    let payers = match &meter_cfg {
        Some(_) => payer_addresses(&api_keys)?,
        None => vec![],
    };
    let adapters_dir = args.adapters_dir.or(file.adapters_dir);
    let mut roots = args.adapter_roots;
    if roots.is_empty() {
        roots = file.adapter_roots;
    }
    if roots.is_empty() {
        roots.extend(adapters_dir.clone());
        roots.push(openlora::lora::hub::cache_from_env().path().clone());
    }
    let mut opts = ServerOptions {
        api_keys,
        admin_key: args.admin_key.or(file.admin_key),
        insecure_open_admin: args.insecure_open_admin || file.insecure_open_admin,
        adapter_roots: AdapterRoots::new(roots),
        max_queue: args.max_queue.or(file.max_queue).unwrap_or(256),
        tool_call_parser: args
            .tool_call_parser
            .or(file.tool_call_parser)
            .unwrap_or_default(),
        webui: !args.no_webui && file.webui.unwrap_or(true),
        max_upload_bytes: args.max_upload_mb.or(file.max_upload_mb).unwrap_or(64) << 20,
        ..Default::default()
    };
    let data_dir = args.data_dir.or(file.data_dir);
    let training_threads = args.training_threads.or(file.training_threads).unwrap_or(1);
    anyhow::ensure!(training_threads > 0, "--training-threads must be > 0");
    let training_nice = args
        .training_nice
        .or(file.training_nice)
        .unwrap_or(openlora::factory::TRAINING_NICE);
    anyhow::ensure!(
        (0..=19).contains(&training_nice),
        "training_nice must be 0-19"
    );
    if opts.insecure_open_admin && opts.admin_key.is_none() {
        tracing::warn!("--insecure-open-admin: anyone who can reach this server may load, replace and unload adapters");
        eprintln!("openlora: WARNING: --insecure-open-admin: the adapter admin endpoints are open to anyone who can reach this server");
    }
    let host = args
        .host
        .or(file.host)
        .unwrap_or_else(|| "127.0.0.1".into());
    let port = args.port.or(file.port).unwrap_or(8000);
    let kv_mb = args.kv_cache_mb.or(file.kv_cache_mb).unwrap_or(1024);
    let pager_defaults = PagerConfig::default();
    let explicit_slots = args.adapter_device_slots.or(file.adapter_device_slots);
    let mut pager_cfg = PagerConfig {
        device_slots: explicit_slots.unwrap_or(pager_defaults.device_slots),
        host_bytes: args
            .adapter_host_mb
            .or(file.adapter_host_mb)
            .map_or(pager_defaults.host_bytes, |mb| mb << 20),
        ..pager_defaults
    };
    let mut hub_adapters = file.hub_adapters;
    hub_adapters.extend(args.hub_adapters);
    let shutdown_timeout = Duration::from_secs(
        args.shutdown_timeout
            .or(file.shutdown_timeout)
            .unwrap_or(30),
    );

    let runtime = args.runtime.or(RuntimeArgs {
        dtype: file.dtype,
        quantize: file.quantize,
        kv_cache_dtype: file.kv_cache_dtype,
        activations: file.activations,
        threads: file.threads,
        device: file.device,
        max_lora_rank: file.max_lora_rank,
        lora_dtype: file.lora_dtype,
        qmatmul: file.qmatmul,
    });
    let load_options = runtime.load_options()?;
    let kv_dtype = runtime.kv_dtype()?;
    let threads = runtime.init_threads()?;
    eprintln!("openlora: {threads} compute threads");
    let source = openlora::hub::resolve_model(&model_arg, gguf_file.as_deref())
        .with_context(|| format!("resolving model {model_arg}"))?;
    eprintln!("openlora: loading {model_arg}");
    let load_started = std::time::Instant::now();
    let mut model = Model::load_with(&source.path, &load_options)
        .with_context(|| format!("loading model {model_arg}"))?;
    if let Some(name) = args.served_model_name.or(file.served_model_name) {
        model.name = name;
    } else if let Some(name) = source.hub_name {
        model.name = name;
    }
    let load_seconds = load_started.elapsed().as_secs_f64();
    eprintln!(
        "openlora: loaded {} ({} layers, hidden {}) in {load_seconds:.1}s",
        model.name,
        model.config().layers,
        model.config().hidden
    );
    let m = model.config();
    engine_cfg = runtime.engine_config(engine_cfg)?;
    engine_cfg.device = openlora::exec::resolve_device(engine_cfg.device);
    anyhow::ensure!(
        !(engine_cfg.qmatmul && engine_cfg.device == DeviceKind::Cpu),
        "--qmatmul applies to the device executor (--device cuda or candle-cpu); the CPU executor keeps GGUF blocks by default"
    );
    if explicit_slots.is_none() {
        let d = PagerConfig::for_device(engine_cfg.device, engine_cfg.max_adapters_per_step);
        pager_cfg.device_slots = d.device_slots;
    }
    engine_cfg.num_blocks = match engine_cfg.device {
        DeviceKind::Cpu => engine_cfg.blocks_for_memory(
            kv_mb << 20,
            kv_dtype.resolve(load_options.dtype).bytes_per_token(m),
        ),
        dev => {
            let exec_cfg = ExecConfig {
                num_blocks: 0,
                block_size: engine_cfg.block_size,
                kv_dtype,
                device: dev,
                max_lora_rank: engine_cfg.max_lora_rank,
                lora_dtype: engine_cfg.lora_dtype,
                qmatmul: engine_cfg.qmatmul,
            };
            let explicit = args.kv_cache_mb.or(file.kv_cache_mb);
            let cap = match dev {
                DeviceKind::CandleCpu => Some(kv_mb),
                _ => explicit,
            };
            let utilization = args
                .gpu_memory_utilization
                .or(file.gpu_memory_utilization)
                .unwrap_or(0.9);
            let plan = openlora::exec::device::plan_memory(
                &model,
                &exec_cfg,
                pager_cfg.device_slots,
                utilization,
                cap.map(|mb| mb << 20),
            )?;
            eprintln!("openlora: {}", plan.describe());
            plan.blocks
        }
    };
    opts.max_context = Some(engine_cfg.num_blocks * engine_cfg.block_size);
    // One metrics registry per process: the pager, the engine, the server and the meter share it.
    let metrics = Arc::new(Metrics::new());
    metrics.model_load_seconds.set(load_seconds);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let registry = Arc::new(AdapterRegistry::new(m.clone()));
    // With --adapter-registry-address the chain decides what is served (`ledger::chain_gate`).
    let catalog = openlora::ledger::chain_catalog(meter_cfg.as_ref())?;
    let registry_cfg = meter_cfg
        .as_ref()
        .and_then(|m| m.chain.as_ref()?.registry.clone());
    // The factory registers what it trains in the same registries, signing as the operator.
    let factory_chain = match meter_cfg.as_ref().and_then(|m| m.chain.as_ref()) {
        Some(c) if c.registry.is_some() && data_dir.is_some() => {
            let r = c.registry.as_ref().expect("checked");
            let registrar = openlora::chain::Registrar::connect_lazy(
                &c.rpc_url,
                &c.operator_key,
                r.adapter_registry,
            )?;
            Some(openlora::factory::FactoryChain {
                registrar: Arc::new(registrar),
                runtime: rt.handle().clone(),
            })
        }
        _ => None,
    };
    let gate = match (&catalog, &registry_cfg) {
        (Some(c), Some(r)) => {
            let g: Arc<dyn AdapterGate> = Arc::new(ChainGate::new(
                c.clone(),
                rt.handle().clone(),
                r.require_onchain,
                metrics.clone(),
            ));
            registry.set_gate(g.clone());
            Some(g)
        }
        _ => None,
    };
    if let Some(dir) = &adapters_dir {
        register_dir(&registry, dir)?;
    }
    for id in &hub_adapters {
        openlora::lora::hub::register(&registry, id)
            .with_context(|| format!("registering hub adapter {id}"))?;
    }
    let pager = AdapterPager::new(m.clone(), pager_cfg, metrics.clone())?;
    if let Some(g) = &gate {
        pager.set_gate(g.clone());
    }
    let model = Arc::new(model);
    let (meter, _settlement_worker) = match meter_cfg {
        Some(cfg) => {
            let ledger = cfg.ledger.clone();
            let (m, w) = rt
                .block_on(openlora::ledger::open(
                    cfg,
                    model.tokenizer.as_ref(),
                    payers,
                    metrics.clone(),
                    catalog.clone(),
                ))
                .with_context(|| format!("opening the ledger {}", ledger.display()))?;
            eprintln!(
                "openlora: metering into {} (settlement {})",
                ledger.display(),
                if w.is_some() { "on" } else { "off" }
            );
            (Some(m), w)
        }
        None => (None, None),
    };
    let pager = Arc::new(pager);
    let _chain_sync = match (catalog, &meter, registry_cfg) {
        (Some(catalog), Some(meter), Some(r)) => Some(start_chain_sync(
            &rt, catalog, meter, &registry, &pager, r.refresh,
        )),
        _ => None,
    };
    let engine = LlmEngine::with_pager(model.clone(), engine_cfg.clone(), pager.clone())?;
    eprintln!("openlora: {}", engine.describe());
    // Supervised: after a panic the engine is rebuilt from the same model, pager and config.
    let (m2, cfg2) = (model.clone(), engine_cfg.clone());
    let engine = EngineHandle::spawn_supervised(engine, move || {
        LlmEngine::with_pager(m2.clone(), cfg2.clone(), pager.clone())
    });
    let state = AppState::with_meter(engine, registry.clone(), opts, meter.clone());
    if let Some(dir) = data_dir {
        let factory_opts = openlora::factory::FactoryOptions {
            data_dir: dir.clone(),
            training_threads,
            training_nice,
            max_file_bytes: state.opts.max_upload_bytes,
            chain: factory_chain,
            // Fine-tuning follows the serving device when it is CUDA (`--device cuda`), else the CPU.
            training_device: match engine_cfg.device {
                DeviceKind::Cuda(n) => openlora::train::training_device(DeviceKind::Cuda(n))?,
                _ => candle_core::Device::Cpu,
            },
        };
        let f = openlora::factory::Factory::open(
            factory_opts,
            model.clone(),
            registry.clone(),
            meter,
            metrics.clone(),
        )
        .with_context(|| format!("opening the model factory in {}", dir.display()))?;
        f.start()?;
        let _ = state.factory.set(f);
        eprintln!(
            "openlora: fine-tuning on ({} training threads, data in {})",
            training_threads,
            dir.display()
        );
    }
    tracing::info!(model = %model.name, adapters = registry.len(), kv_blocks = engine_cfg.num_blocks, prefix_caching = engine_cfg.enable_prefix_caching, "serving");

    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind((host.as_str(), port))
            .await
            .with_context(|| format!("binding {host}:{port}"))?;
        let addr = listener.local_addr()?;
        eprintln!(
            "openlora: serving {} with {} adapters on http://{addr}/v1",
            model.name,
            registry.len()
        );
        // After the bind, so the pass does not compete with start-up for the CPU.
        validate_in_background(registry.clone());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            shutdown_signal().await;
            eprintln!(
                "openlora: shutting down, draining in-flight requests (up to {}s)",
                shutdown_timeout.as_secs()
            );
            let _ = stop_tx.send(());
            tokio::time::sleep(shutdown_timeout).await;
            eprintln!("openlora: drain deadline reached, exiting");
            std::process::exit(0);
        });
        server::run(listener, state, async move {
            let _ = stop_rx.await;
        })
        .await?;
        eprintln!("openlora: stopped");
        Ok(())
    })
}

/// Reads the on-chain adapter terms and datanet roots once (so the first requests see them),
/// then keeps them fresh from a task on `rt`.
fn start_chain_sync(
    rt: &tokio::runtime::Runtime,
    catalog: Arc<openlora::chain::AdapterCatalog>,
    meter: &openlora::ledger::Meter,
    registry: &Arc<AdapterRegistry>,
    pager: &Arc<AdapterPager>,
    interval: Duration,
) -> openlora::ledger::chain_sync::SyncHandle {
    let (names, reg, pg) = (registry.clone(), registry.clone(), pager.clone());
    let sync = ChainSync {
        catalog,
        datanets: meter.datanet_verifier.clone(),
        names: Box::new(move || names.names()),
        forget: Box::new(move |name| {
            if let Some(id) = reg.get_id(name) {
                pg.forget(id);
            }
        }),
        interval,
    };
    let mut datanet_registry = None;
    let first = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), sync.round(&mut datanet_registry)).await
    });
    if first.is_err() {
        tracing::warn!("first read of on-chain adapter terms and datanet roots timed out");
    }
    let _enter = rt.enter();
    sync.spawn(datanet_registry)
}

/// With metering on, every API key must bill a payer address.
fn payer_addresses(
    api_keys: &HashMap<String, String>,
) -> anyhow::Result<Vec<alloy::primitives::Address>> {
    anyhow::ensure!(
        !api_keys.is_empty(),
        "metering needs API keys mapped to payer addresses (--api-key key=0x...)"
    );
    let mut out = Vec::new();
    for payer in api_keys.values() {
        let a: alloy::primitives::Address = payer
            .parse()
            .with_context(|| format!("payer `{payer}` is not an address (metering is on)"))?;
        if !out.contains(&a) {
            out.push(a);
        }
    }
    out.sort();
    Ok(out)
}

/// Registers each subfolder holding an `adapter_config.json` by name only (`register_pending`):
/// nothing is read before `/ready`; each folder is validated on first use or by the background pass.
fn register_dir(registry: &AdapterRegistry, dir: &Path) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    let adapters: Vec<(String, PathBuf)> = entries
        .into_iter()
        .filter(|p| p.join("adapter_config.json").exists())
        .map(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            (name.to_string(), p)
        })
        .collect();
    let results = registry.register_pending(&adapters);
    let mut ok = 0;
    for ((name, _), r) in adapters.iter().zip(results) {
        match r {
            Ok(_) => ok += 1,
            Err(e) => eprintln!("openlora: skipping adapter {name}: {e}"),
        }
    }
    eprintln!(
        "openlora: registered {ok} adapters from {} in {:.2}s",
        dir.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Validates every pending start-up adapter on a background thread (config and header, in
/// parallel; the integrity gate's check too); a bad one is reported and refused.
fn validate_in_background(registry: Arc<AdapterRegistry>) {
    std::thread::spawn(move || {
        let started = std::time::Instant::now();
        let (ok, refused) = registry.validate_pending();
        if ok + refused.len() == 0 {
            return;
        }
        for (name, why) in &refused {
            eprintln!("openlora: skipping adapter {name}: {why}");
        }
        eprintln!(
            "openlora: validated {ok} adapters in {:.2}s ({} refused)",
            started.elapsed().as_secs_f64(),
            refused.len()
        );
    });
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
