//! The pager at scale on the tiny model: 2,000 generated adapters (mixed ranks and target sets),
//! device budget 32, host budget 256, 1,000 requests whose adapters are drawn Zipf(1.0), 32 in
//! flight. Every request must finish, each output must equal the same request run alone (weights
//! read straight from disk), evictions must happen in both tiers, and an adapter pinned for the
//! whole run must stay on device, untouched.

mod common;
use common::*;
use openlora::config::EngineConfig;
use openlora::engine::{GenerateRequest, LlmEngine, SamplingParams, SeqId};
use openlora::lora::write_random_adapter;
use openlora::lora::{AdapterPager, AdapterRegistry, AdapterSpec, PagerConfig, Proj, Tier};
use openlora::metrics::Metrics;
use openlora::model::Model;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ADAPTERS: usize = 2000;
const REQUESTS: usize = 1000;
const CONCURRENCY: usize = 32;

fn target_sets() -> Vec<Vec<Proj>> {
    use Proj::*;
    vec![
        vec![Q, V],
        vec![Q, K, V, O],
        vec![Gate, Up, Down],
        Proj::ALL.to_vec(),
        vec![O],
        vec![Down, Q],
    ]
}

fn write_adapters(root: &Path, model: &Model, n: usize) -> Vec<(String, PathBuf)> {
    let ranks = [1, 2, 4, 8, 16];
    let sets = target_sets();
    (0..n)
        .map(|i| {
            let name = format!("z{i:04}");
            let dir = root.join(&name);
            let targets = &sets[(i / ranks.len()) % sets.len()];
            write_random_adapter(
                &dir,
                model.config(),
                ranks[i % ranks.len()],
                targets,
                i as u64,
            )
            .unwrap();
            (name, dir)
        })
        .collect()
}

/// Ranks 0.. drawn with probability proportional to 1/(k+1).
struct Zipf(Vec<f64>);

impl Zipf {
    fn new(n: usize) -> Self {
        let mut acc = 0.0;
        Zipf(
            (0..n)
                .map(|k| {
                    acc += 1.0 / (k + 1) as f64;
                    acc
                })
                .collect(),
        )
    }

    fn sample(&self, rng: &mut StdRng) -> usize {
        let u = rng.random_range(0.0..*self.0.last().unwrap());
        self.0.partition_point(|&c| c < u).min(self.0.len() - 1)
    }
}

fn workload(specs: &[Arc<AdapterSpec>]) -> Vec<(Arc<AdapterSpec>, GenerateRequest)> {
    let mut rng = StdRng::seed_from_u64(7);
    let zipf = Zipf::new(specs.len());
    (0..REQUESTS)
        .map(|i| {
            let spec = specs[zipf.sample(&mut rng)].clone();
            let len = 2 + i % 9;
            let prompt: Vec<u32> = (0..len).map(|j| ((i * 13 + j * 29) % 256) as u32).collect();
            let params = if i % 4 == 3 {
                SamplingParams {
                    temperature: 0.8,
                    seed: Some(i as u64),
                    max_tokens: 4,
                    ignore_eos: true,
                    ..Default::default()
                }
            } else {
                greedy_params(4)
            };
            let req = GenerateRequest {
                prompt_ids: prompt,
                adapters: vec![(spec.clone().into(), 1.0)],
                params,
            };
            (spec, req)
        })
        .collect()
}

/// Runs `work` with at most `CONCURRENCY` requests in the engine; returns every output.
fn run_concurrent(
    engine: &mut LlmEngine,
    work: &[(Arc<AdapterSpec>, GenerateRequest)],
) -> Vec<Vec<u32>> {
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); work.len()];
    let (mut next, mut done, mut in_flight) = (0, 0, 0);
    let deadline = Instant::now() + Duration::from_secs(600);
    while done < work.len() {
        while in_flight < CONCURRENCY && next < work.len() {
            engine
                .add_request(SeqId(next as u64), work[next].1.clone())
                .unwrap();
            next += 1;
            in_flight += 1;
        }
        for (id, ev) in engine.step() {
            out[id.0 as usize].extend(ev.token);
            if ev.finish.is_some() {
                done += 1;
                in_flight -= 1;
            }
        }
        let failed = engine.take_failed();
        assert!(failed.is_empty(), "page-ins failed: {failed:?}");
        assert!(
            Instant::now() < deadline,
            "workload did not finish ({done} done)"
        );
    }
    out
}

#[test]
fn zipf_2000_adapters_device_32_host_256() {
    let model = Arc::new(Model::load(&fixtures().join("tiny/model")).unwrap());
    let scratch = Scratch::new("pager-zipf");
    let folders = write_adapters(&scratch.0, &model, ADAPTERS);
    let registry = AdapterRegistry::new(model.config().clone());
    let start = Instant::now();
    for (name, dir) in &folders {
        registry.register(name, dir).unwrap();
    }
    eprintln!("registered {ADAPTERS} adapters in {:?}", start.elapsed());
    let specs: Vec<Arc<AdapterSpec>> = folders
        .iter()
        .map(|(n, _)| registry.spec(n).unwrap())
        .collect();

    let pager = Arc::new(
        AdapterPager::new(
            model.config().clone(),
            PagerConfig {
                device_slots: 32,
                host_slots: 256,
                host_bytes: 1 << 30,
            },
            Arc::new(Metrics::new()),
        )
        .unwrap(),
    );
    // Pin the coldest adapter for the whole run, as a running sequence would.
    let pinned_spec = specs[ADAPTERS - 1].clone();
    let mut pin = pager.lease(vec![pinned_spec.clone()]);
    let pinned_slot = loop {
        if let Some(p) = pin.poll().unwrap() {
            break p[0];
        }
        pager.wait_for_load(Duration::from_millis(5));
    };
    let pinned = pager.slots().get(pinned_slot).unwrap().adapter;

    let work = workload(&specs);
    let distinct: std::collections::HashSet<_> = work.iter().map(|(s, _)| s.id).collect();
    eprintln!(
        "{REQUESTS} requests over {} distinct adapters",
        distinct.len()
    );
    let cfg = EngineConfig {
        max_num_seqs: CONCURRENCY,
        max_adapters_per_step: 16,
        ..Default::default()
    };
    let mut engine = LlmEngine::with_pager(model.clone(), cfg, pager.clone()).unwrap();
    let start = Instant::now();
    let outputs = run_concurrent(&mut engine, &work);
    let stats = pager.stats();
    eprintln!("concurrent run in {:?}: {stats:?}", start.elapsed());

    // Evictions happened in both tiers; budgets held; the pinned adapter never moved.
    assert!(stats.device_evictions > 0, "{stats:?}");
    assert!(stats.host_evictions > 0, "{stats:?}");
    assert!(stats.device_resident <= 32 && stats.host_resident <= 256);
    assert!(stats.hits > 0 && stats.misses > 0);
    assert_eq!(pager.tier(pinned_spec.id), Tier::Device);
    assert_eq!(pager.pins(pinned_spec.id), 1);
    assert_eq!(pin.poll().unwrap().unwrap()[0], pinned_slot);
    assert!(Arc::ptr_eq(
        &pager.slots().get(pinned_slot).unwrap().adapter,
        &pinned
    ));
    // Every finished sequence released its pins: only the test's own lease is left.
    assert_eq!(stats.pinned, 1, "{stats:?}");

    // Each output equals the same request run alone, with weights loaded directly from disk.
    let mut alone = LlmEngine::new(model.clone(), EngineConfig::default()).unwrap();
    let mut direct = HashMap::new();
    for (i, (spec, req)) in work.iter().enumerate() {
        assert_eq!(outputs[i].len(), 4, "request {i} did not finish");
        let weights = direct
            .entry(spec.id)
            .or_insert_with(|| registry.load(&spec.name).unwrap())
            .clone();
        let mut req = req.clone();
        req.adapters = vec![(weights.into(), 1.0)];
        let (out, _) = run_engine(&mut alone, vec![vec![(SeqId(0), req)]]);
        assert_eq!(
            outputs[i],
            out[&SeqId(0)],
            "request {i} ({}) differs from the same request alone",
            spec.name
        );
    }
}
