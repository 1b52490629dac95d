//! Every Prometheus metric openlora exports: names are the constants below (durations end in
//! `_seconds`), registered once in `Metrics::new`. The `vllm:` names are the ones the Kubernetes
//! Gateway API Inference Extension reads from model servers (`vllm:cache_config_info` gives its
//! prefix scorer the KV block size and the pool's block count). `LORA_RESIDENT_INFO` is what a
//! LoRA-affinity router reads to see which adapters a replica holds ready (not only the ones in
//! flight): one series, labelled like `vllm:lora_requests_info`, whose `running_lora_adapters`
//! label lists the device-tier adapters (bounded by the device slots, whatever the number of
//! adapters registered).

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub const REQUESTS_TOTAL: &str = "openlora_requests_total";
pub const TTFT_SECONDS: &str = "openlora_time_to_first_token_seconds";
pub const ITL_SECONDS: &str = "openlora_inter_token_latency_seconds";
pub const E2E_SECONDS: &str = "openlora_e2e_request_latency_seconds";
pub const PROMPT_TOKENS_TOTAL: &str = "openlora_prompt_tokens_total";
pub const GENERATION_TOKENS_TOTAL: &str = "openlora_generation_tokens_total";
pub const QUEUE_LENGTH: &str = "openlora_queue_length";
pub const RUNNING_SEQUENCES: &str = "openlora_running_sequences";
pub const KV_CACHE_USAGE_RATIO: &str = "openlora_kv_cache_usage_ratio";
pub const PREEMPTIONS_TOTAL: &str = "openlora_preemptions_total";
pub const ENGINE_RESTARTS_TOTAL: &str = "openlora_engine_restarts_total";
pub const ADAPTER_LOADS_TOTAL: &str = "openlora_adapter_loads_total";
pub const ADAPTER_EVICTIONS_TOTAL: &str = "openlora_adapter_evictions_total";
pub const ADAPTER_HITS_TOTAL: &str = "openlora_adapter_hits_total";
pub const ADAPTER_MISSES_TOTAL: &str = "openlora_adapter_misses_total";
pub const ADAPTERS_RESIDENT: &str = "openlora_adapters_resident";
pub const ADAPTER_LOAD_SECONDS: &str = "openlora_adapter_load_seconds";
pub const ADAPTERS_REGISTERED: &str = "openlora_adapters_registered";
pub const ADAPTERS_PINNED: &str = "openlora_adapters_pinned";
pub const ADAPTER_PAGE_IN_WAIT_SECONDS: &str = "openlora_adapter_page_in_wait_seconds";
pub const LORA_RESIDENT_INFO: &str = "openlora_lora_resident_info";
pub const MODEL_LOAD_SECONDS: &str = "openlora_model_load_seconds";
pub const LEDGER_RECORDS_TOTAL: &str = "openlora_ledger_records_total";
pub const LEDGER_UNSETTLED_RECORDS: &str = "openlora_ledger_unsettled_records";
pub const SETTLEMENT_LAG_SECONDS: &str = "openlora_settlement_lag_seconds";
pub const SETTLEMENT_BATCH_CALLS: &str = "openlora_settlement_batch_calls";
pub const SETTLEMENT_BATCHES_TOTAL: &str = "openlora_settlement_batches_total";
pub const SETTLEMENT_GAS_USED_TOTAL: &str = "openlora_settlement_gas_used_total";
pub const SETTLEMENT_FAILURES_TOTAL: &str = "openlora_settlement_failures_total";
/// How unsettleable records ended: `retried` (settled after the cause went) or `written_off`.
pub const UNSETTLEABLE_OUTCOMES_TOTAL: &str = "openlora_unsettleable_outcomes_total";
pub const ATTRIBUTION_SECONDS: &str = "openlora_attribution_seconds";
pub const ADAPTER_REFUSALS_TOTAL: &str = "openlora_adapter_refusals_total";
pub const DATANET_EXCLUDED: &str = "openlora_datanet_excluded";
pub const PREFIX_CACHE_QUERIES_TOTAL: &str = "openlora_prefix_cache_queries_total";
pub const PREFIX_CACHE_HITS_TOTAL: &str = "openlora_prefix_cache_hits_total";
/// vLLM's `prefix_cache_queries` / `prefix_cache_hits` counters (exposed with `_total`).
pub const VLLM_PREFIX_CACHE_QUERIES_TOTAL: &str = "vllm:prefix_cache_queries_total";
pub const VLLM_PREFIX_CACHE_HITS_TOTAL: &str = "vllm:prefix_cache_hits_total";

pub const VLLM_WAITING: &str = "vllm:num_requests_waiting";
pub const VLLM_RUNNING: &str = "vllm:num_requests_running";
pub const VLLM_KV_USAGE: &str = "vllm:kv_cache_usage_perc";
pub const VLLM_LORA_INFO: &str = "vllm:lora_requests_info";
/// vLLM's cache-config info gauge (value 1): the Inference Extension's prefix scorer reads its
/// `block_size` and `num_gpu_blocks` labels.
pub const VLLM_CACHE_CONFIG_INFO: &str = "vllm:cache_config_info";

const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub ttft: HistogramVec,
    pub itl: HistogramVec,
    pub e2e: HistogramVec,
    pub prompt_tokens: IntCounterVec,
    pub generation_tokens: IntCounterVec,
    pub queue_length: IntGauge,
    pub running: IntGauge,
    pub kv_usage: Gauge,
    pub preemptions: IntCounter,
    pub prefix_cache_queries: IntCounter,
    pub prefix_cache_hits: IntCounter,
    pub vllm_prefix_cache_queries: IntCounter,
    pub vllm_prefix_cache_hits: IntCounter,
    pub engine_restarts: IntCounter,
    pub adapter_loads: IntCounterVec,
    pub adapter_evictions: IntCounterVec,
    pub adapter_hits: IntCounterVec,
    pub adapter_misses: IntCounterVec,
    pub adapters_resident: IntGaugeVec,
    pub adapter_load_seconds: HistogramVec,
    pub adapters_registered: IntGauge,
    pub adapters_pinned: IntGauge,
    pub adapter_page_in_wait: Histogram,
    pub lora_resident_info: GaugeVec,
    pub model_load_seconds: Gauge,
    pub ledger_records: IntCounter,
    pub ledger_unsettled: IntGauge,
    pub settlement_lag: Gauge,
    pub settlement_batch_calls: Histogram,
    pub settlement_batches: IntCounter,
    pub settlement_gas: IntCounter,
    pub settlement_failures: IntCounterVec,
    pub unsettleable_outcomes: IntCounterVec,
    pub attribution_seconds: Histogram,
    pub adapter_refusals: IntCounterVec,
    pub datanet_excluded: IntGaugeVec,
    pub vllm_waiting: Gauge,
    pub vllm_running: Gauge,
    pub vllm_kv_usage: Gauge,
    pub vllm_lora_info: GaugeVec,
    pub vllm_cache_config_info: GaugeVec,
}

fn hist(name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    HistogramVec::new(
        HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
        labels,
    )
    .expect("valid histogram")
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter")
}

impl Metrics {
    pub fn new() -> Self {
        let m = Metrics {
            registry: Registry::new(),
            requests: counter(
                REQUESTS_TOTAL,
                "Requests by adapter and outcome.",
                &["adapter", "outcome"],
            ),
            ttft: hist(
                TTFT_SECONDS,
                "Time from request arrival to the first token.",
                &["adapter"],
            ),
            itl: hist(
                ITL_SECONDS,
                "Time between consecutive tokens of a stream.",
                &["adapter"],
            ),
            e2e: hist(
                E2E_SECONDS,
                "Time from request arrival to its last token.",
                &["adapter"],
            ),
            prompt_tokens: counter(
                PROMPT_TOKENS_TOTAL,
                "Prompt tokens processed, by adapter.",
                &["adapter"],
            ),
            generation_tokens: counter(
                GENERATION_TOKENS_TOTAL,
                "Tokens generated, by adapter.",
                &["adapter"],
            ),
            queue_length: IntGauge::new(QUEUE_LENGTH, "Sequences waiting to be scheduled.")
                .expect("gauge"),
            running: IntGauge::new(RUNNING_SEQUENCES, "Sequences running.").expect("gauge"),
            kv_usage: Gauge::new(
                KV_CACHE_USAGE_RATIO,
                "Fraction of KV cache blocks in use (0..1).",
            )
            .expect("gauge"),
            preemptions: IntCounter::new(PREEMPTIONS_TOTAL, "Sequences preempted for KV space.")
                .expect("counter"),
            prefix_cache_queries: IntCounter::new(
                PREFIX_CACHE_QUERIES_TOTAL,
                "Prompt tokens looked up in the prefix cache.",
            )
            .expect("counter"),
            prefix_cache_hits: IntCounter::new(
                PREFIX_CACHE_HITS_TOTAL,
                "Prompt tokens found in the prefix cache (their KV blocks reused).",
            )
            .expect("counter"),
            vllm_prefix_cache_queries: IntCounter::new(
                VLLM_PREFIX_CACHE_QUERIES_TOTAL,
                "Prefix cache queries, in tokens (vLLM name).",
            )
            .expect("counter"),
            vllm_prefix_cache_hits: IntCounter::new(
                VLLM_PREFIX_CACHE_HITS_TOTAL,
                "Prefix cache hits, in tokens (vLLM name).",
            )
            .expect("counter"),
            engine_restarts: IntCounter::new(
                ENGINE_RESTARTS_TOTAL,
                "Engine restarts after a panic (its in-flight requests failed with a 500).",
            )
            .expect("counter"),
            adapter_loads: counter(
                ADAPTER_LOADS_TOTAL,
                "Adapter loads, by tier loaded into (host: read from disk; device: made compute-ready).",
                &["tier"],
            ),
            adapter_evictions: counter(
                ADAPTER_EVICTIONS_TOTAL,
                "Adapter evictions, by tier.",
                &["tier"],
            ),
            adapter_hits: counter(
                ADAPTER_HITS_TOTAL,
                "Requests whose adapter was already resident, by tier.",
                &["tier"],
            ),
            adapter_misses: counter(
                ADAPTER_MISSES_TOTAL,
                "Requests whose adapter had to be paged in, by the tier it was found in (host, disk).",
                &["tier"],
            ),
            adapters_resident: IntGaugeVec::new(
                Opts::new(ADAPTERS_RESIDENT, "Adapters resident, by tier (device, host)."),
                &["tier"],
            )
            .expect("gauge"),
            adapter_load_seconds: hist(
                ADAPTER_LOAD_SECONDS,
                "Adapter load time, by tier loaded into (host: read from disk; device: made compute-ready).",
                &["tier"],
            ),
            adapters_registered: IntGauge::new(ADAPTERS_REGISTERED, "Adapters registered.")
                .expect("gauge"),
            adapters_pinned: IntGauge::new(
                ADAPTERS_PINNED,
                "Device-tier adapters pinned by running requests or by the admin.",
            )
            .expect("gauge"),
            adapter_page_in_wait: Histogram::with_opts(
                HistogramOpts::new(
                    ADAPTER_PAGE_IN_WAIT_SECONDS,
                    "Time a request whose adapter was not on device waited for it to be paged in.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )
            .expect("histogram"),
            lora_resident_info: GaugeVec::new(
                Opts::new(
                    LORA_RESIDENT_INFO,
                    "LoRA residency, labelled like vllm:lora_requests_info: running_lora_adapters = adapters on device (ready, no page-in), waiting_lora_adapters = adapters queued for a page-in; the value is the unix time of the last change.",
                ),
                &["max_lora", "running_lora_adapters", "waiting_lora_adapters"],
            )
            .expect("gauge"),
            model_load_seconds: Gauge::new(
                MODEL_LOAD_SECONDS,
                "Time the base model took to load at startup.",
            )
            .expect("gauge"),
            ledger_records: IntCounter::new(
                LEDGER_RECORDS_TOTAL,
                "Usage records committed to the ledger.",
            )
            .expect("counter"),
            ledger_unsettled: IntGauge::new(
                LEDGER_UNSETTLED_RECORDS,
                "Usage records not yet settled on chain.",
            )
            .expect("gauge"),
            settlement_lag: Gauge::new(
                SETTLEMENT_LAG_SECONDS,
                "Age of the oldest usage record not yet settled on chain.",
            )
            .expect("gauge"),
            settlement_batch_calls: Histogram::with_opts(
                HistogramOpts::new(SETTLEMENT_BATCH_CALLS, "Calls per settlement batch.").buckets(
                    vec![1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0],
                ),
            )
            .expect("histogram"),
            settlement_batches: IntCounter::new(
                SETTLEMENT_BATCHES_TOTAL,
                "Settlement batches recorded as settled on chain.",
            )
            .expect("counter"),
            settlement_gas: IntCounter::new(
                SETTLEMENT_GAS_USED_TOTAL,
                "Gas used by settlement transactions.",
            )
            .expect("counter"),
            settlement_failures: counter(
                SETTLEMENT_FAILURES_TOTAL,
                "Settlement failures by reason: rpc/chain/ledger (a round that is retried), or a contract revert (e.g. insufficient_escrow: a batch dissolved or a record isolated as unsettleable).",
                &["reason"],
            ),
            unsettleable_outcomes: counter(
                UNSETTLEABLE_OUTCOMES_TOTAL,
                "Unsettleable records by how they ended: retried (the cause went, e.g. a new deposit) or written_off (released from the payer's debt after the grace period).",
                &["outcome"],
            ),
            attribution_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    ATTRIBUTION_SECONDS,
                    "Time to attribute one call's output to datanet contributors.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )
            .expect("histogram"),
            adapter_refusals: counter(
                ADAPTER_REFUSALS_TOTAL,
                "Adapters refused by the on-chain integrity gate (at registration or page-in), by reason.",
                &["reason"],
            ),
            datanet_excluded: IntGaugeVec::new(
                Opts::new(
                    DATANET_EXCLUDED,
                    "1 while a datanet is excluded from attribution (its records do not match its on-chain root), by datanet and reason.",
                ),
                &["datanet", "reason"],
            )
            .expect("gauge"),
            vllm_waiting: Gauge::new(VLLM_WAITING, "Number of requests waiting to be processed.")
                .expect("gauge"),
            vllm_running: Gauge::new(VLLM_RUNNING, "Number of requests currently running.")
                .expect("gauge"),
            vllm_kv_usage: Gauge::new(VLLM_KV_USAGE, "KV-cache usage. 1 means 100 percent usage.")
                .expect("gauge"),
            vllm_lora_info: GaugeVec::new(
                Opts::new(VLLM_LORA_INFO, "Running stats on LoRA requests."),
                &["max_lora", "running_lora_adapters", "waiting_lora_adapters"],
            )
            .expect("gauge"),
            vllm_cache_config_info: GaugeVec::new(
                Opts::new(VLLM_CACHE_CONFIG_INFO, "Information of the LLMEngine CacheConfig."),
                &["block_size", "num_gpu_blocks"],
            )
            .expect("gauge"),
        };
        let r = &m.registry;
        let all: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(m.requests.clone()),
            Box::new(m.ttft.clone()),
            Box::new(m.itl.clone()),
            Box::new(m.e2e.clone()),
            Box::new(m.prompt_tokens.clone()),
            Box::new(m.generation_tokens.clone()),
            Box::new(m.queue_length.clone()),
            Box::new(m.running.clone()),
            Box::new(m.kv_usage.clone()),
            Box::new(m.preemptions.clone()),
            Box::new(m.prefix_cache_queries.clone()),
            Box::new(m.prefix_cache_hits.clone()),
            Box::new(m.vllm_prefix_cache_queries.clone()),
            Box::new(m.vllm_prefix_cache_hits.clone()),
            Box::new(m.engine_restarts.clone()),
            Box::new(m.adapter_loads.clone()),
            Box::new(m.adapter_evictions.clone()),
            Box::new(m.adapter_hits.clone()),
            Box::new(m.adapter_misses.clone()),
            Box::new(m.adapters_resident.clone()),
            Box::new(m.adapter_load_seconds.clone()),
            Box::new(m.adapters_registered.clone()),
            Box::new(m.adapters_pinned.clone()),
            Box::new(m.adapter_page_in_wait.clone()),
            Box::new(m.lora_resident_info.clone()),
            Box::new(m.model_load_seconds.clone()),
            Box::new(m.ledger_records.clone()),
            Box::new(m.ledger_unsettled.clone()),
            Box::new(m.settlement_lag.clone()),
            Box::new(m.settlement_batch_calls.clone()),
            Box::new(m.settlement_batches.clone()),
            Box::new(m.settlement_gas.clone()),
            Box::new(m.settlement_failures.clone()),
            Box::new(m.unsettleable_outcomes.clone()),
            Box::new(m.attribution_seconds.clone()),
            Box::new(m.adapter_refusals.clone()),
            Box::new(m.datanet_excluded.clone()),
            Box::new(m.vllm_waiting.clone()),
            Box::new(m.vllm_running.clone()),
            Box::new(m.vllm_kv_usage.clone()),
            Box::new(m.vllm_lora_info.clone()),
            Box::new(m.vllm_cache_config_info.clone()),
        ];
        for c in all {
            r.register(c).expect("unique metric names");
        }
        m.touch_closed_label_sets();
        m
    }

    /// Creates the zero series of every label value known in advance, so a dashboard or an alert
    /// sees 0 rather than no data before the first event.
    fn touch_closed_label_sets(&self) {
        for tier in ["device", "host"] {
            self.adapter_loads.with_label_values(&[tier]);
            self.adapter_evictions.with_label_values(&[tier]);
            self.adapter_load_seconds.with_label_values(&[tier]);
            self.adapters_resident.with_label_values(&[tier]);
        }
        self.adapter_hits.with_label_values(&["device"]);
        for tier in ["host", "disk"] {
            self.adapter_misses.with_label_values(&[tier]);
        }
        for reason in ["rpc", "chain", "ledger"] {
            self.settlement_failures.with_label_values(&[reason]);
        }
        for outcome in ["retried", "written_off"] {
            self.unsettleable_outcomes.with_label_values(&[outcome]);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("encode metrics");
        String::from_utf8(buf).expect("utf-8 metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
