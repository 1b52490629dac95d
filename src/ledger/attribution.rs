//! Proof of Attribution: which data contributors a completion draws on.
//!
//! A datanet is a JSONL corpus, one record per line: `{"text": "...", "contributor": "0x..."}`
//! (or `"tokens": [ids]` instead of `"text"`). Its records are tokenized with the served model's
//! tokenizer, concatenated with a separator no token equals, and indexed by a suffix array. For a
//! completion, a left-to-right greedy scan takes at each position the longest span that occurs in
//! the corpus; a span of at least `min_span` tokens gives its length to the contributors of the
//! records it occurs in (split evenly between distinct contributors, at most `MAX_OCCURRENCES`
//! looked at), then the scan jumps past it. What always holds:
//! - weights are integers (token-length units x 1000), deterministic for the same corpus and output;
//! - no span of `min_span` tokens => `None`, and the caller falls back to the datanet's static
//!   shares (tokens contributed per contributor).

use crate::error::{Error, Result};
use crate::model::Tokenizer;
use crate::progress::{Progress, Unit};
use alloy::primitives::Address;
use std::collections::BTreeMap;
use std::path::Path;

/// Occurrences of one span looked at to find its contributors.
pub const MAX_OCCURRENCES: usize = 64;
const SEPARATOR: u32 = u32::MAX;

/// A suffix array over a token sequence (prefix doubling, O(n log^2 n)).
pub struct SuffixIndex {
    tokens: Vec<u32>,
    sa: Vec<u32>,
}

impl SuffixIndex {
    pub fn new(tokens: Vec<u32>) -> Self {
        let sa = build_suffix_array(&tokens);
        SuffixIndex { tokens, sa }
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    fn at(&self, suffix: u32, offset: usize) -> Option<u32> {
        self.tokens.get(suffix as usize + offset).copied()
    }

    /// Longest prefix of `query` occurring in the corpus: (length, SA range of its occurrences).
    pub fn longest_match(&self, query: &[u32]) -> (usize, std::ops::Range<usize>) {
        let (mut lo, mut hi) = (0usize, self.sa.len());
        let mut len = 0;
        for (off, &q) in query.iter().enumerate() {
            if q == SEPARATOR {
                break;
            }
            let range = &self.sa[lo..hi];
            // Within [lo, hi) the suffixes share `off` tokens, so they are sorted by token `off`.
            let key = |s: &u32| self.at(*s, off).map_or(-1i64, |t| t as i64);
            let a = range.partition_point(|s| key(s) < q as i64);
            let b = range.partition_point(|s| key(s) <= q as i64);
            if a == b {
                break;
            }
            (lo, hi) = (lo + a, lo + b);
            len = off + 1;
        }
        if len == 0 {
            (0, 0..0)
        } else {
            (len, lo..hi)
        }
    }

    /// Start positions of the suffixes in an SA range.
    pub fn positions(&self, range: std::ops::Range<usize>) -> impl Iterator<Item = usize> + '_ {
        self.sa[range].iter().map(|&p| p as usize)
    }
}

/// Suffix array by prefix doubling: ranks of 2k-prefixes from ranks of k-prefixes.
pub fn build_suffix_array(s: &[u32]) -> Vec<u32> {
    let n = s.len();
    if n == 0 {
        return vec![];
    }
    let mut sorted: Vec<u32> = s.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut rank: Vec<u32> = s
        .iter()
        .map(|t| sorted.binary_search(t).expect("present") as u32)
        .collect();
    let mut sa: Vec<u32> = (0..n as u32).collect();
    let mut next = vec![0u32; n];
    let mut k = 1usize;
    loop {
        let key = |i: u32| -> u64 {
            let i = i as usize;
            let second = if i + k < n { rank[i + k] as u64 + 1 } else { 0 };
            ((rank[i] as u64) << 32) | second
        };
        sa.sort_unstable_by_key(|&i| key(i));
        next[sa[0] as usize] = 0;
        for j in 1..n {
            let bump = (key(sa[j - 1]) != key(sa[j])) as u32;
            next[sa[j] as usize] = next[sa[j - 1] as usize] + bump;
        }
        std::mem::swap(&mut rank, &mut next);
        if rank[sa[n - 1] as usize] as usize == n - 1 || k >= n {
            return sa;
        }
        k *= 2;
    }
}

/// One indexed datanet.
pub struct Datanet {
    pub id: String,
    /// Distinct contributors, in order of first appearance.
    pub contributors: Vec<Address>,
    /// Tokens contributed by each contributor: the static shares.
    pub static_shares: Vec<u64>,
    index: SuffixIndex,
    /// Start position of each record in the index, ascending.
    record_starts: Vec<u32>,
    /// Contributor (index into `contributors`) of each record.
    record_contributor: Vec<u32>,
}

/// Per-contributor weights of one completion against one datanet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribution {
    /// (contributor, weight), contributors in address order, weights > 0.
    pub weights: Vec<(Address, u64)>,
    /// Output tokens covered by matched spans; 0 = static shares.
    pub matched_tokens: u64,
    /// The matched spans, as output token ranges `[start, end)` in output order (empty for
    /// static shares).
    pub spans: Vec<(u32, u32)>,
}

impl Datanet {
    /// Builds the index from (contributor, token ids) records.
    pub fn from_records(id: &str, records: Vec<(Address, Vec<u32>)>) -> Self {
        let mut contributors: Vec<Address> = vec![];
        let mut static_shares = vec![];
        let mut tokens = Vec::new();
        let mut record_starts = vec![];
        let mut record_contributor = vec![];
        for (who, toks) in records {
            let c = match contributors.iter().position(|a| *a == who) {
                Some(c) => c,
                None => {
                    contributors.push(who);
                    static_shares.push(0);
                    contributors.len() - 1
                }
            };
            static_shares[c] += toks.len() as u64;
            record_starts.push(tokens.len() as u32);
            record_contributor.push(c as u32);
            tokens.extend(toks.into_iter().filter(|&t| t != SEPARATOR));
            tokens.push(SEPARATOR);
        }
        Datanet {
            id: id.to_string(),
            contributors,
            static_shares,
            index: SuffixIndex::new(tokens),
            record_starts,
            record_contributor,
        }
    }

    /// Reads `path` (JSONL) and tokenizes `text` records with `tokenizer`.
    pub fn load(id: &str, path: &Path, tokenizer: Option<&Tokenizer>) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_text(id, path, &text, tokenizer)
    }

    /// Indexes the JSONL `text` of the datanet file at `path` (named in errors).
    pub fn from_text(
        id: &str,
        path: &Path,
        text: &str,
        tokenizer: Option<&Tokenizer>,
    ) -> Result<Self> {
        let mut records = vec![];
        let parsed = super::datanet_root::parse_records(text, path)?;
        let what = format!("indexing datanet {id}");
        let mut progress = Progress::new(what, Some(parsed.len() as u64), Unit::Items("records"));
        for (line, r) in parsed {
            progress.inc(1);
            let bad = |m: String| Error::file("datanet", path, format!("line {line}: {m}"));
            let toks = match (r.tokens, r.text) {
                (Some(t), _) => t,
                (None, Some(t)) => tokenizer
                    .ok_or_else(|| bad("a `text` record needs a model with a tokenizer".into()))?
                    .encode(&t, false)?,
                (None, None) => return Err(bad("needs `text` or `tokens`".into())),
            };
            records.push((r.contributor, toks));
        }
        let indexed = Self::from_records(id, records);
        progress.finish();
        Ok(indexed)
    }

    pub fn corpus_tokens(&self) -> usize {
        self.index.len()
    }

    fn contributor_at(&self, pos: usize) -> usize {
        let rec = self.record_starts.partition_point(|&s| s as usize <= pos) - 1;
        self.record_contributor[rec] as usize
    }

    /// Span-based weights of `output`, or `None` when no span of `min_span` tokens matches.
    pub fn attribute(&self, output: &[u32], min_span: usize) -> Option<Attribution> {
        let min_span = min_span.max(1);
        let mut weights: BTreeMap<Address, u64> = BTreeMap::new();
        let mut matched = 0u64;
        let mut spans = vec![];
        let mut i = 0;
        while i + min_span <= output.len() {
            let (len, range) = self.index.longest_match(&output[i..]);
            if len < min_span {
                i += 1;
                continue;
            }
            let mut who: Vec<usize> = self
                .index
                .positions(range)
                .take(MAX_OCCURRENCES)
                .map(|p| self.contributor_at(p))
                .collect();
            who.sort_unstable();
            who.dedup();
            let units = len as u64 * 1000;
            for (k, c) in who.iter().enumerate() {
                // Even split; the remainder goes to the first contributor.
                let share =
                    units / who.len() as u64 + if k == 0 { units % who.len() as u64 } else { 0 };
                *weights.entry(self.contributors[*c]).or_default() += share;
            }
            matched += len as u64;
            spans.push((i as u32, (i + len) as u32));
            i += len;
        }
        (matched > 0).then(|| Attribution {
            weights: weights.into_iter().collect(),
            matched_tokens: matched,
            spans,
        })
    }

    /// The fallback: tokens contributed per contributor.
    pub fn static_weights(&self) -> Attribution {
        let mut w: Vec<(Address, u64)> = self
            .contributors
            .iter()
            .copied()
            .zip(self.static_shares.iter().copied())
            .filter(|(_, s)| *s > 0)
            .collect();
        w.sort();
        Attribution {
            weights: w,
            matched_tokens: 0,
            spans: vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_sa(s: &[u32]) -> Vec<u32> {
        let mut sa: Vec<u32> = (0..s.len() as u32).collect();
        sa.sort_by(|&a, &b| s[a as usize..].cmp(&s[b as usize..]));
        sa
    }

    #[test]
    fn suffix_array_matches_naive_sort() {
        let mut x = 12345u64;
        for n in [1usize, 2, 3, 7, 64, 500] {
            for alphabet in [1u64, 2, 5, 1000] {
                let s: Vec<u32> = (0..n)
                    .map(|_| {
                        x = x
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        ((x >> 33) % alphabet) as u32
                    })
                    .collect();
                assert_eq!(
                    build_suffix_array(&s),
                    naive_sa(&s),
                    "n={n} alphabet={alphabet}"
                );
            }
        }
    }

    fn addr(b: u8) -> Address {
        Address::repeat_byte(b)
    }

    #[test]
    fn a_reproduced_span_attributes_to_its_contributor() {
        let x: Vec<u32> = (100..140).collect();
        let y: Vec<u32> = (200..240).collect();
        let d = Datanet::from_records(
            "d",
            vec![(addr(1), y.clone()), (addr(2), x.clone()), (addr(1), y)],
        );
        // Output: noise, 12 tokens from X's record, noise.
        let mut out = vec![7, 8, 9];
        out.extend_from_slice(&x[5..17]);
        out.extend([3, 3]);
        let a = d.attribute(&out, 8).expect("span found");
        assert_eq!(a.weights, vec![(addr(2), 12_000)]);
        assert_eq!(a.matched_tokens, 12);
        assert_eq!(a.spans, vec![(3, 15)], "the 12 tokens after 3 of noise");
        // Shorter than min_span: no attribution; static shares are tokens contributed.
        assert!(d.attribute(&x[0..5], 8).is_none());
        assert_eq!(
            d.static_weights().weights,
            vec![(addr(1), 80), (addr(2), 40)]
        );
    }

    #[test]
    fn spans_do_not_cross_records_and_shared_spans_split() {
        let a: Vec<u32> = (1..=10).collect();
        let b: Vec<u32> = (11..=20).collect();
        let d = Datanet::from_records(
            "d",
            vec![
                (addr(1), a.clone()),
                (addr(2), b.clone()),
                (addr(3), a.clone()),
            ],
        );
        // a ++ b is not a span of one record: two spans, a (shared by 1 and 3) and b.
        let out: Vec<u32> = a.iter().chain(b.iter()).copied().collect();
        let w = d.attribute(&out, 4).unwrap();
        assert_eq!(
            w.weights,
            vec![(addr(1), 5_000), (addr(2), 10_000), (addr(3), 5_000)]
        );
        assert_eq!(w.matched_tokens, 20);
    }
}
