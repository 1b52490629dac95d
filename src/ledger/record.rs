//! One metered call (`UsageRecord`) and how it becomes a receipt leaf and a per-recipient split.
//!
//! What always holds:
//! - `receipt_id = keccak256(request_id ++ output_hash)`, so the on-chain leaf commits to the
//!   output; `output_hash = keccak256` of every choice's output token ids (u32 big-endian, choices
//!   separated by 0xFFFFFFFF);
//! - a record's `splits` sum exactly to its `amount`: per adapter part, owner and contributors get
//!   their bps (rounded down), the operator the rest; the contributors' part goes to datanets by
//!   weight and within a datanet by attribution weights (the last one takes the rounding
//!   remainder); a datanet that is not loaded pays its part to the adapter owner.

use super::attribution::Attribution;
use super::pricing::{AdapterTerms, BPS};
use crate::chain::Receipt;
use alloy::primitives::{keccak256, Address, B256, U256};
use serde::Serialize;
use std::collections::BTreeMap;

/// The id a call is known by (`chatcmpl-...` / `cmpl-...`), unique in the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct RequestId(pub String);

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// How one datanet's share of a call was attributed.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct DatanetAttribution {
    pub adapter: String,
    pub datanet: String,
    pub weight_bps: u16,
    /// "spans" (matched output spans), "static" (contributor shares), "missing" (not loaded) or
    /// "excluded:<reason>" (records differ from the on-chain root: paid as missing).
    pub source: String,
    pub matched_tokens: u64,
    /// (contributor, weight)
    pub contributors: Vec<(Address, u64)>,
    /// The output spans found in the datanet (absent when none: static shares).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spans: Vec<OutputSpan>,
}

/// Output tokens `[start, end)` of choice `choice` found in a datanet's records.
#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct OutputSpan {
    pub choice: u32,
    pub start: u32,
    pub end: u32,
}

/// One adapter's part of a call: its terms, normalized mix share and cost.
#[derive(Debug, Clone)]
pub struct PricedPart {
    pub terms: std::sync::Arc<AdapterTerms>,
    /// The adapter's weight in a mix, as given (1.0 for a single adapter).
    pub weight: f32,
    pub cost: U256,
}

/// Everything the ledger keeps about one call.
#[derive(Debug, Clone)]
pub struct UsageRecord {
    pub request_id: RequestId,
    pub payer: Address,
    pub operator: Address,
    /// Receipt adapter id: `keccak256(adapter names joined by "+")`, or of "base".
    pub adapter_id: B256,
    pub parts: Vec<PricedPart>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub amount: U256,
    /// Unix seconds.
    pub timestamp: u64,
    /// stop / length / cancelled
    pub finish: String,
    pub output_hash: B256,
    pub attribution: Vec<DatanetAttribution>,
    /// (recipient, gross amount before the batch's protocol fee); sums to `amount`.
    pub splits: Vec<(Address, U256)>,
}

pub fn output_hash(outputs: &[Vec<u32>]) -> B256 {
    let mut bytes = Vec::new();
    for (i, o) in outputs.iter().enumerate() {
        if i > 0 {
            bytes.extend_from_slice(&u32::MAX.to_be_bytes());
        }
        for t in o {
            bytes.extend_from_slice(&t.to_be_bytes());
        }
    }
    keccak256(bytes)
}

pub fn receipt_id(request_id: &RequestId, output_hash: B256) -> B256 {
    let mut bytes = request_id.0.as_bytes().to_vec();
    bytes.extend_from_slice(output_hash.as_slice());
    keccak256(bytes)
}

impl UsageRecord {
    pub fn receipt(&self) -> Receipt {
        Receipt {
            receipt_id: receipt_id(&self.request_id, self.output_hash),
            adapter_id: self.adapter_id,
            payer: self.payer,
            operator: self.operator,
            input_tokens: self.prompt_tokens,
            output_tokens: self.completion_tokens,
            cost: self.amount,
            timestamp: self.timestamp,
        }
    }
}

fn bps_of(x: U256, bps: u64) -> U256 {
    x * U256::from(bps) / U256::from(BPS)
}

/// Divides `amount` by integer weights; the last entry takes the rounding remainder.
fn pro_rata(amount: U256, weights: &[(Address, u64)]) -> Vec<(Address, U256)> {
    let total: u64 = weights.iter().map(|(_, w)| *w).sum();
    if total == 0 || weights.is_empty() {
        return vec![];
    }
    let mut out = Vec::with_capacity(weights.len());
    let mut given = U256::ZERO;
    for (i, (who, w)) in weights.iter().enumerate() {
        let x = if i + 1 == weights.len() {
            amount - given
        } else {
            amount * U256::from(*w) / U256::from(total)
        };
        given += x;
        out.push((*who, x));
    }
    out
}

/// Gross per-recipient amounts of one call (sorted by address, zero amounts dropped).
pub fn split_call(
    parts: &[PricedPart],
    attribution: &[DatanetAttribution],
    operator: Address,
) -> Vec<(Address, U256)> {
    let mut out: BTreeMap<Address, U256> = BTreeMap::new();
    for p in parts {
        let t = &p.terms;
        let owner = bps_of(p.cost, t.split.owner_bps as u64);
        let pool = bps_of(p.cost, t.split.contributors_bps as u64);
        *out.entry(operator).or_default() += p.cost - owner - pool;
        *out.entry(t.owner).or_default() += owner;
        let mut given = U256::ZERO;
        for (i, (datanet, w)) in t.datanets.iter().enumerate() {
            let share = if i + 1 == t.datanets.len() {
                pool - given
            } else {
                bps_of(pool, *w as u64)
            };
            given += share;
            let paid = attribution
                .iter()
                .find(|a| a.adapter == t.name && &a.datanet == datanet)
                .map(|a| pro_rata(share, &a.contributors))
                .unwrap_or_default();
            if paid.is_empty() {
                *out.entry(t.owner).or_default() += share;
            }
            for (who, x) in paid {
                *out.entry(who).or_default() += x;
            }
        }
        if t.datanets.is_empty() {
            *out.entry(t.owner).or_default() += pool;
        }
    }
    out.into_iter().filter(|(_, x)| !x.is_zero()).collect()
}

/// The attribution record of one datanet from an index result.
pub fn datanet_attribution(
    adapter: &str,
    datanet: &str,
    weight_bps: u16,
    found: Option<Attribution>,
    source: &str,
    spans: Vec<OutputSpan>,
) -> DatanetAttribution {
    let (contributors, matched_tokens) = found
        .map(|a| (a.weights, a.matched_tokens))
        .unwrap_or_default();
    DatanetAttribution {
        adapter: adapter.to_string(),
        datanet: datanet.to_string(),
        weight_bps,
        source: source.to_string(),
        matched_tokens,
        contributors,
        spans,
    }
}

#[cfg(test)]
mod tests {
    use super::super::pricing::{FeeSplit, Price};
    use super::*;
    use std::sync::Arc;

    #[test]
    fn splits_sum_to_the_cost() {
        let owner = Address::repeat_byte(0xA0);
        let op = Address::repeat_byte(0x0F);
        let terms = Arc::new(AdapterTerms {
            name: "a".into(),
            adapter_id: B256::ZERO,
            owner,
            price: Price {
                per_m_input: U256::ZERO,
                per_m_output: U256::ZERO,
            },
            datanets: vec![("d1".into(), 7000), ("d2".into(), 3000), ("gone".into(), 0)],
            split: FeeSplit {
                owner_bps: 7000,
                contributors_bps: 2000,
                operator_bps: 1000,
            },
        });
        let attr = vec![
            datanet_attribution(
                "a",
                "d1",
                7000,
                Some(Attribution {
                    weights: vec![(Address::repeat_byte(1), 1), (Address::repeat_byte(2), 2)],
                    matched_tokens: 3,
                    spans: vec![(0, 3)],
                }),
                "spans",
                vec![],
            ),
            datanet_attribution(
                "a",
                "d2",
                3000,
                Some(Attribution {
                    weights: vec![(Address::repeat_byte(3), 5)],
                    matched_tokens: 0,
                    spans: vec![],
                }),
                "static",
                vec![],
            ),
        ];
        for cost in [0u64, 1, 7, 999, 1_000_003, 123_456_789_012] {
            let parts = vec![PricedPart {
                terms: terms.clone(),
                weight: 1.0,
                cost: U256::from(cost),
            }];
            let s = split_call(&parts, &attr, op);
            let sum: U256 = s.iter().map(|(_, x)| *x).sum();
            assert_eq!(sum, U256::from(cost));
            if cost == 1_000_003 {
                let get = |a: Address| {
                    s.iter()
                        .find(|(w, _)| *w == a)
                        .map(|(_, x)| *x)
                        .unwrap_or_default()
                };
                assert_eq!(get(owner), U256::from(700_002u64));
                assert_eq!(
                    get(Address::repeat_byte(3)),
                    U256::from(200_000u64 - 140_000)
                );
            }
        }
    }
}
