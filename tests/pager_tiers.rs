//! Pager mechanics on the tiny model with a one- or two-slot device tier: pinned adapters are
//! never evicted (a page-in waits for a pin to go instead), evicted adapters drop to the host tier,
//! unregistering drops every copy, and a request whose adapter cannot be paged in yet never stalls
//! the rest of the batch; an admin pin keeps an adapter on device until unpinned.

mod common;
use common::*;
use openlora::config::EngineConfig;
use openlora::engine::{GenerateRequest, LlmEngine, SeqId};
use openlora::error::Error;
use openlora::lora::{AdapterPager, AdapterRegistry, AdapterSpec, Lease, PagerConfig, Tier};
use openlora::metrics::Metrics;
use openlora::model::Model;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn setup(device_slots: usize) -> (Arc<Model>, AdapterRegistry, Arc<AdapterPager>) {
    let dir = fixtures().join("tiny");
    let model = Arc::new(Model::load(&dir.join("model")).unwrap());
    let reg = AdapterRegistry::new(model.config().clone());
    for n in ["a4", "a8", "a16"] {
        reg.register(n, &dir.join("adapters").join(n)).unwrap();
    }
    let pager = AdapterPager::new(
        model.config().clone(),
        PagerConfig {
            device_slots,
            ..Default::default()
        },
        Arc::new(Metrics::new()),
    )
    .unwrap();
    (model, reg, Arc::new(pager))
}

fn wait_ready(pager: &AdapterPager, lease: &mut Lease) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while lease.poll().unwrap().is_none() {
        assert!(Instant::now() < deadline, "page-in did not finish");
        pager.wait_for_load(Duration::from_millis(5));
    }
}

fn spec(reg: &AdapterRegistry, n: &str) -> Arc<AdapterSpec> {
    reg.spec(n).unwrap()
}

#[test]
fn pinned_adapters_are_never_evicted() {
    let (_, reg, pager) = setup(2);
    let (a, b, c) = (spec(&reg, "a4"), spec(&reg, "a8"), spec(&reg, "a16"));
    assert_eq!(pager.tier(a.id), Tier::Disk);
    let mut la = pager.lease(vec![a.clone()]);
    let mut lb = pager.lease(vec![b.clone()]);
    wait_ready(&pager, &mut la);
    wait_ready(&pager, &mut lb);
    let a_slot = la.poll().unwrap().unwrap()[0];
    let a_weights = pager.slots().get(a_slot).unwrap().adapter;
    // Both slots pinned: C's page-in must wait, whatever time passes.
    let mut lc = pager.lease(vec![c.clone()]);
    std::thread::sleep(Duration::from_millis(300));
    assert!(lc.poll().unwrap().is_none(), "a pinned adapter was evicted");
    assert_eq!(
        (pager.tier(a.id), pager.tier(b.id)),
        (Tier::Device, Tier::Device)
    );
    // A's slot still holds the same weights.
    assert_eq!(la.poll().unwrap().unwrap()[0], a_slot);
    assert!(Arc::ptr_eq(
        &pager.slots().get(a_slot).unwrap().adapter,
        &a_weights
    ));
    assert_eq!(pager.stats().device_evictions, 0);
    // Releasing B's pin (its sequence finished) lets C in; B drops to the host tier.
    drop(lb);
    wait_ready(&pager, &mut lc);
    assert_eq!(pager.tier(b.id), Tier::Host);
    assert_eq!(pager.tier(a.id), Tier::Device);
    assert_eq!(pager.pins(a.id), 1);
    let s = pager.stats();
    assert_eq!((s.device_evictions, s.device_resident, s.pinned), (1, 2, 2));
    // Unregistering drops every copy; a pinned one goes with its last pin.
    pager.forget(b.id);
    assert_eq!(pager.tier(b.id), Tier::Disk);
    pager.forget(a.id);
    assert_eq!(
        pager.tier(a.id),
        Tier::Device,
        "pinned: kept until released"
    );
    drop(la);
    assert_eq!(pager.tier(a.id), Tier::Disk);
}

#[test]
fn a_cold_adapter_never_stalls_the_batch() {
    let (model, reg, pager) = setup(1);
    // The only device slot is pinned by a long request elsewhere: a8 cannot be paged in.
    let mut hold = pager.lease(vec![spec(&reg, "a4")]);
    wait_ready(&pager, &mut hold);
    let mut engine =
        LlmEngine::with_pager(model.clone(), EngineConfig::default(), pager.clone()).unwrap();
    let cold = GenerateRequest {
        prompt_ids: vec![5, 6, 7],
        adapters: vec![(reg.resolve("a8").unwrap(), 1.0)],
        params: greedy_params(6),
    };
    let base = request(&[1, 2, 3, 4], vec![], greedy_params(6));
    assert!(!engine.add_request(SeqId(1), cold.clone()).unwrap());
    assert!(engine.add_request(SeqId(2), base.clone()).unwrap());
    let mut base_out = Vec::new();
    for _ in 0..6 {
        for (id, ev) in engine.step() {
            assert_eq!(id, SeqId(2), "the cold request cannot have run yet");
            base_out.extend(ev.token);
        }
    }
    assert_eq!(
        base_out,
        run_alone(&model, base),
        "base request ran to the end"
    );
    assert_eq!(engine.stats().waiting, 1);
    // The slot frees: the cold request is paged in and runs, with the same output as alone.
    drop(hold);
    let (out, _) = run_engine(&mut engine, vec![]);
    let direct = reg.load("a8").unwrap();
    let alone = run_alone(
        &model,
        request(&[5, 6, 7], vec![(direct, 1.0)], greedy_params(6)),
    );
    assert_eq!(out[&SeqId(1)], alone);
    assert_eq!(engine.take_paged_in(), vec![SeqId(1)]);
}

#[test]
fn an_admin_pin_keeps_an_adapter_on_device_until_unpinned() {
    let (_, reg, pager) = setup(2);
    let (a, b, c) = (spec(&reg, "a4"), spec(&reg, "a8"), spec(&reg, "a16"));
    // Pinning pages the adapter in without any request.
    pager.pin(&a).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while pager.tier(a.id) != Tier::Device {
        assert!(
            Instant::now() < deadline,
            "the pinned adapter was never paged in"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(pager.is_held(a.id));
    assert_eq!((pager.stats().held, pager.stats().pinned), (1, 1));
    // A second admin pin would leave no slot for other adapters: refused (409), nothing changes.
    let refused = pager.pin(&b).unwrap_err();
    assert!(matches!(refused, Error::Conflict { .. }), "{refused}");
    assert!(!pager.is_held(b.id));
    // Traffic through the one other slot never moves the pinned adapter, nor waits on it.
    for s in [&b, &c, &b, &c] {
        let mut l = pager.lease(vec![s.clone()]);
        wait_ready(&pager, &mut l);
    }
    assert_eq!(pager.tier(a.id), Tier::Device);
    assert!(pager.stats().device_evictions >= 3);
    // Unpinned, it is an ordinary LRU entry again: the next two page-ins evict it.
    assert!(pager.unpin(a.id));
    assert!(!pager.unpin(a.id), "unpinning twice is a no-op");
    for s in [&b, &c] {
        let mut l = pager.lease(vec![s.clone()]);
        wait_ready(&pager, &mut l);
    }
    assert_ne!(pager.tier(a.id), Tier::Device);
    // Unregistering drops the pin with every copy.
    pager.pin(&b).unwrap();
    pager.forget(b.id);
    assert!(!pager.is_held(b.id));
}
