//! `Meter`: what the HTTP layer talks to. It prices a call (`price`), admits it against the
//! payer's funds (`admit`), and hands out a `CallMeter` that watches the call's tokens and writes
//! its `UsageRecord` exactly once: explicitly (`record`, whose `Commit` is awaited before the final
//! body or SSE chunk is sent) or, when the client goes away first, on `Drop`. Records are written
//! by the ledger writer thread (`writer`, group commit), never on the caller's thread. A call that produced no completion
//! token writes nothing, and neither does a call the server failed (`void`: an engine panic is
//! not the payer's to pay). Recording runs attribution against the adapter's datanets; a datanet
//! excluded by the `DatanetVerifier` (records differ from its on-chain root) gets no attribution
//! (source `excluded:<reason>`, its part paid as for a missing datanet).

use super::attribution::Datanet;
use super::datanet_verifier::DatanetVerifier;
use super::funds::{Funds, Reservation};
use super::pricing::{AdapterTerms, PriceBook};
use super::record::{
    datanet_attribution, output_hash, split_call, DatanetAttribution, OutputSpan, PricedPart,
    RequestId, UsageRecord,
};
use super::store::Store;
use super::writer::{Commit, Settle, Writer};
use crate::clock::unix_now;
use crate::engine::{FinishReason, SeqEvent};
use crate::error::Result;
use crate::lora::AdapterRef;
use crate::metrics::Metrics;
use alloy::primitives::{keccak256, Address, B256, U256};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Instant;

pub struct Meter {
    pub store: Arc<Store>,
    prices: PriceBook,
    /// Indexed datanets by id; the Model Factory adds the ones its jobs train on.
    datanets: RwLock<HashMap<String, Arc<Datanet>>>,
    min_span: usize,
    /// `None` without a chain: calls are recorded but not checked against deposits.
    pub funds: Option<Arc<Funds>>,
    pub operator: Address,
    metrics: Arc<Metrics>,
    writer: Arc<Writer>,
    /// With the on-chain registry: which datanets match their on-chain root.
    pub datanet_verifier: Option<Arc<DatanetVerifier>>,
}

/// The priced adapters of one call: (terms, weight as given, share in ppm of the mix).
#[derive(Clone)]
pub struct Pricing {
    parts: Vec<(Arc<AdapterTerms>, f32, u64)>,
    adapter_id: B256,
}

impl Pricing {
    /// Cost per adapter part of `input` prompt and `output` completion tokens.
    pub fn costs(&self, input: u64, output: u64) -> Vec<U256> {
        if self.parts.len() == 1 {
            return vec![self.parts[0].0.price.quote(input, output)];
        }
        let total_ppm: u64 = self.parts.iter().map(|p| p.2).sum();
        self.parts
            .iter()
            .map(|(t, _, ppm)| {
                let p = &t.price;
                let num = (U256::from(input) * p.per_m_input + U256::from(output) * p.per_m_output)
                    * U256::from(*ppm);
                num.div_ceil(U256::from(1_000_000u64) * U256::from(total_ppm))
            })
            .collect()
    }

    pub fn cost(&self, input: u64, output: u64) -> U256 {
        self.costs(input, output).into_iter().sum()
    }
}

impl Meter {
    pub fn new(
        store: Arc<Store>,
        prices: PriceBook,
        datanets: HashMap<String, Arc<Datanet>>,
        min_span: usize,
        funds: Option<Arc<Funds>>,
        operator: Address,
        metrics: Arc<Metrics>,
    ) -> Self {
        Meter {
            writer: Arc::new(Writer::spawn(store.clone(), metrics.clone())),
            store,
            prices,
            datanets: RwLock::new(datanets),
            min_span,
            funds,
            operator,
            metrics,
            datanet_verifier: None,
        }
    }

    /// Attributes only to datanets `verifier` has checked against their on-chain root.
    pub fn with_datanet_verifier(mut self, verifier: Arc<DatanetVerifier>) -> Self {
        self.datanet_verifier = Some(verifier);
        self
    }

    /// Adds (or replaces) datanet `d`: calls recorded from now on attribute to it (with the
    /// on-chain registry, to the on-chain datanet `keccak256(d.id)`).
    pub fn add_datanet(&self, d: Arc<Datanet>) {
        self.prices.name_datanet(&d.id);
        let mut map = self.datanets.write().unwrap_or_else(|p| p.into_inner());
        map.insert(d.id.clone(), d);
    }

    fn datanet(&self, id: &str) -> Option<Arc<Datanet>> {
        let map = self.datanets.read().unwrap_or_else(|p| p.into_inner());
        map.get(id).cloned()
    }

    /// The ledger's one writer (the settlement worker writes through it too).
    pub fn writer(&self) -> Arc<Writer> {
        self.writer.clone()
    }

    /// Blocks until every record queued so far is committed (tests, tools).
    pub fn flush(&self) {
        self.writer.flush();
    }

    /// The terms `adapter` is served under now: on-chain, its manifest's, or the default price.
    pub fn terms(&self, adapter: &AdapterRef) -> Result<Arc<AdapterTerms>> {
        self.prices.terms(adapter)
    }

    /// Terms of each adapter of the mix (the base model's when empty).
    pub fn price(&self, mix: &[(AdapterRef, f32)]) -> Result<Pricing> {
        if mix.is_empty() {
            let base = Arc::new(self.prices.base());
            let adapter_id = base.adapter_id;
            return Ok(Pricing {
                parts: vec![(base, 1.0, 1_000_000)],
                adapter_id,
            });
        }
        let mut parts = Vec::with_capacity(mix.len());
        for (a, w) in mix {
            let ppm = ((w.abs() as f64) * 1e6).round().max(1.0) as u64;
            let terms = self.prices.terms(a).inspect_err(|e| {
                if let crate::error::Error::AdapterRefused { .. } = e {
                    self.metrics
                        .adapter_refusals
                        .with_label_values(&["inactive"])
                        .inc();
                }
            })?;
            parts.push((terms, *w, ppm));
        }
        let label: Vec<&str> = parts.iter().map(|p| p.0.name.as_str()).collect();
        let adapter_id = if parts.len() == 1 {
            parts[0].0.adapter_id
        } else {
            keccak256(label.join("+").as_bytes())
        };
        Ok(Pricing { parts, adapter_id })
    }

    /// Reserves the worst case of generations `(prompt tokens, max tokens)` against `payer`'s funds.
    pub fn admit(
        &self,
        payer: Address,
        pricing: &Pricing,
        gens: &[(u64, u64)],
    ) -> Result<Option<Reservation>> {
        let Some(funds) = &self.funds else {
            return Ok(None);
        };
        let worst: U256 = gens.iter().map(|(p, m)| pricing.cost(*p, *m)).sum();
        funds.reserve(payer, worst).map(Some)
    }

    pub fn begin(
        self: &Arc<Self>,
        request_id: RequestId,
        payer: Address,
        pricing: Pricing,
        reservation: Option<Reservation>,
        choices: usize,
    ) -> CallMeter {
        CallMeter {
            meter: self.clone(),
            request_id,
            payer,
            pricing,
            reservation,
            outputs: vec![vec![]; choices],
            prompt: vec![0; choices],
            completion: vec![0; choices],
            finish: vec![None; choices],
            recorded: false,
        }
    }

    fn attribute(&self, pricing: &Pricing, outputs: &[Vec<u32>]) -> Vec<DatanetAttribution> {
        let mut out = vec![];
        for (t, _, _) in &pricing.parts {
            for (id, w) in &t.datanets {
                let d = self.datanet(id);
                let Some(d) = d else {
                    out.push(datanet_attribution(
                        &t.name,
                        id,
                        *w,
                        None,
                        "missing",
                        vec![],
                    ));
                    continue;
                };
                let excluded = self.datanet_verifier.as_ref().and_then(|v| v.excluded(id));
                if let Some(reason) = excluded {
                    let source = format!("excluded:{reason}");
                    out.push(datanet_attribution(&t.name, id, *w, None, &source, vec![]));
                    continue;
                }
                let mut weights: BTreeMap<Address, u64> = BTreeMap::new();
                let mut matched = 0;
                let mut spans = vec![];
                for (choice, o) in outputs.iter().enumerate() {
                    if let Some(a) = d.attribute(o, self.min_span) {
                        matched += a.matched_tokens;
                        spans.extend(a.spans.iter().map(|&(start, end)| OutputSpan {
                            choice: choice as u32,
                            start,
                            end,
                        }));
                        for (who, x) in a.weights {
                            *weights.entry(who).or_default() += x;
                        }
                    }
                }
                let a = if matched > 0 {
                    super::attribution::Attribution {
                        weights: weights.into_iter().collect(),
                        matched_tokens: matched,
                        spans: vec![],
                    }
                } else {
                    d.static_weights()
                };
                let source = if matched > 0 { "spans" } else { "static" };
                out.push(datanet_attribution(&t.name, id, *w, Some(a), source, spans));
            }
        }
        out
    }
}

/// Watches one call and writes its record once.
pub struct CallMeter {
    meter: Arc<Meter>,
    request_id: RequestId,
    payer: Address,
    pricing: Pricing,
    reservation: Option<Reservation>,
    outputs: Vec<Vec<u32>>,
    prompt: Vec<u64>,
    completion: Vec<u64>,
    finish: Vec<Option<FinishReason>>,
    recorded: bool,
}

impl CallMeter {
    pub fn observe(&mut self, choice: usize, ev: &SeqEvent) {
        if choice >= self.outputs.len() {
            return;
        }
        self.outputs[choice].extend(ev.token);
        self.prompt[choice] = ev.prompt_tokens as u64;
        self.completion[choice] = ev.completion_tokens as u64;
        if ev.finish.is_some() {
            self.finish[choice] = ev.finish;
        }
    }

    pub fn request_id(&self) -> &RequestId {
        &self.request_id
    }

    /// The server failed the call (the engine panicked): nothing is recorded or billed, and the
    /// payer's reservation is released. Unlike a client that goes away, which pays for the
    /// tokens it got.
    pub fn void(mut self) {
        self.recorded = true;
        self.reservation = None;
    }

    /// Hands the record to the ledger writer unless already done; nothing when no token was
    /// produced. The `Commit` resolves once the record is durable.
    pub fn record(&mut self) -> Commit {
        if self.recorded {
            return Commit::none();
        }
        self.recorded = true;
        let completion: u64 = self.completion.iter().sum();
        if completion == 0 {
            return Commit::none();
        }
        let m = &self.meter;
        let prompt: u64 = self.prompt.iter().sum();
        let finish = match self
            .finish
            .iter()
            .find(|f| f.is_none_or(|f| f == FinishReason::Cancelled))
        {
            Some(_) => "cancelled",
            None => self.finish[0].map_or("cancelled", FinishReason::as_str),
        };
        let started = Instant::now();
        let attribution = m.attribute(&self.pricing, &self.outputs);
        m.metrics
            .attribution_seconds
            .observe(started.elapsed().as_secs_f64());
        let parts: Vec<PricedPart> = self
            .pricing
            .parts
            .iter()
            .zip(self.pricing.costs(prompt, completion))
            .map(|((terms, weight, _), cost)| PricedPart {
                terms: terms.clone(),
                weight: *weight,
                cost,
            })
            .collect();
        let amount: U256 = parts.iter().map(|p| p.cost).sum();
        let splits = split_call(&parts, &attribution, m.operator);
        let record = UsageRecord {
            request_id: self.request_id.clone(),
            payer: self.payer,
            operator: m.operator,
            adapter_id: self.pricing.adapter_id,
            parts,
            prompt_tokens: prompt,
            completion_tokens: completion,
            amount,
            timestamp: unix_now(),
            finish: finish.to_string(),
            output_hash: output_hash(&self.outputs),
            attribution,
            splits,
        };
        let settle = match (&m.funds, self.reservation.take()) {
            (Some(funds), Some(reservation)) => Some(Settle {
                funds: funds.clone(),
                reservation,
                amount,
            }),
            _ => None,
        };
        m.writer.submit(record, settle)
    }
}

impl Drop for CallMeter {
    /// The client went away: the call is recorded as cancelled, without waiting (the writer logs
    /// a failure).
    fn drop(&mut self) {
        let _ = self.record();
    }
}

#[cfg(test)]
mod tests {
    use super::super::pricing::Price;
    use super::*;
    use crate::chain::Receipt;

    fn ev(token: u32, n: usize, finish: Option<FinishReason>) -> SeqEvent {
        SeqEvent {
            index: 0,
            token: Some(token),
            text: String::new(),
            logprob: None,
            finish,
            prompt_tokens: 5,
            completion_tokens: n,
        }
    }

    #[test]
    fn a_mix_costs_each_adapter_by_its_weight_share() {
        use super::super::pricing::{adapter_id, FeeSplit};
        let terms = |name: &str, p: u64| {
            Arc::new(AdapterTerms {
                name: name.into(),
                adapter_id: adapter_id(name),
                owner: Address::repeat_byte(1),
                price: Price {
                    per_m_input: U256::from(p),
                    per_m_output: U256::from(3 * p),
                },
                datanets: vec![],
                split: FeeSplit::OPERATOR_ONLY,
            })
        };
        let one = Pricing {
            parts: vec![(terms("a", 1_000_000), 1.0, 1_000_000)],
            adapter_id: adapter_id("a"),
        };
        assert_eq!(one.cost(10, 5), U256::from(10 + 15));
        // Weights 0.5 and 1.5: a quarter of a's price plus three quarters of b's, each rounded up.
        let mix = Pricing {
            parts: vec![
                (terms("a", 1_000_000), 0.5, 500_000),
                (terms("b", 2_000_000), -1.5, 1_500_000),
            ],
            adapter_id: B256::ZERO,
        };
        assert_eq!(mix.costs(10, 5), vec![U256::from(7u64), U256::from(38u64)]);
        assert_eq!(mix.cost(10, 5), U256::from(45u64));
    }

    #[test]
    fn a_dropped_call_is_recorded_as_cancelled_an_empty_or_voided_one_not_at_all() {
        let dir = std::env::temp_dir().join(format!("openlora-meter-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store = Arc::new(Store::open(&dir.join("ledger.sqlite")).unwrap());
        let op = Address::repeat_byte(9);
        let price = Price {
            per_m_input: U256::from(1_000_000u64),
            per_m_output: U256::from(2_000_000u64),
        };
        let meter = Arc::new(Meter::new(
            store.clone(),
            PriceBook::new(price, op),
            HashMap::new(),
            4,
            None,
            op,
            Arc::new(Metrics::new()),
        ));
        let payer = Address::repeat_byte(1);
        let begin = |id: &str| {
            meter.begin(
                RequestId(id.into()),
                payer,
                meter.price(&[]).unwrap(),
                None,
                1,
            )
        };
        {
            let mut c = begin("r1");
            c.observe(0, &ev(7, 1, None));
            c.observe(0, &ev(8, 2, None));
        } // the client went away
        meter.flush();
        let r = store.get("r1").unwrap().unwrap();
        assert_eq!(
            (r.finish.as_str(), r.prompt_tokens, r.completion_tokens),
            ("cancelled", 5, 2)
        );
        assert_eq!(r.amount, U256::from(5 + 2 * 2));
        assert_eq!(r.output_hash, output_hash(&[vec![7, 8]]));
        let leaf = Receipt {
            receipt_id: r.receipt_id,
            adapter_id: r.adapter_id,
            payer,
            operator: op,
            input_tokens: 5,
            output_tokens: 2,
            cost: r.amount,
            timestamp: r.created_at,
        }
        .leaf();
        assert_eq!(leaf, r.leaf);
        assert_eq!(r.splits, vec![(op, r.amount)]);
        drop(begin("r2"));
        meter.flush();
        assert!(store.get("r2").unwrap().is_none(), "no tokens, no record");
        let mut c = begin("r3");
        c.observe(0, &ev(1, 1, Some(FinishReason::Stop)));
        c.record().wait_blocking().unwrap();
        drop(c);
        assert_eq!(store.get("r3").unwrap().unwrap().finish, "stop");
        assert_eq!(store.all_amounts().unwrap().len(), 2, "recorded once");
        let mut failed = begin("r4");
        failed.observe(0, &ev(3, 1, None));
        failed.void(); // the server failed it
        assert!(
            store.get("r4").unwrap().is_none(),
            "a voided call is not billed"
        );
        let mut dup = begin("r3");
        dup.observe(0, &ev(1, 1, Some(FinishReason::Stop)));
        assert!(
            dup.record().wait_blocking().is_err(),
            "request ids are unique"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
