//! The synchronous engine: `step()` = schedule -> plan -> the executor runs it -> sample and
//! stream. Owns the executor (behind the backend seam), the block allocator and every sequence. A finished or aborted sequence is
//! dropped at once, which returns its KV blocks and its adapter pins. Registered adapters are
//! paged in by the `AdapterPager` off this thread; a step never waits for one unless there is
//! nothing else to run.

use super::detokenizer::TextStep;
use super::request::{FinishReason, GenerateRequest, SeqEvent, TokenLogprob};
use super::scheduler::{Scheduled, Scheduler};
use super::sequence::{SeqId, Sequence};
use crate::config::EngineConfig;
use crate::error::{Error, Result};
use crate::exec::{self, ExecConfig, Executor, StepPlan};
use crate::kv_cache::BlockAllocator;
use crate::lora::{AdapterPager, AdapterRef, PagerConfig};
use crate::metrics::Metrics;
use crate::model::Model;
use rayon::prelude::*;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

pub struct LlmEngine {
    model: Arc<Model>,
    executor: Box<dyn Executor>,
    alloc: BlockAllocator,
    scheduler: Scheduler,
    pager: Arc<AdapterPager>,
}

#[derive(Debug, Clone, Default)]
pub struct EngineStats {
    /// Choices waiting / running (a request with `n` choices counts `n`, as in vLLM v1).
    pub waiting: usize,
    pub running: usize,
    pub kv_blocks_used: usize,
    pub kv_blocks_total: usize,
    /// Tokens per KV block.
    pub kv_block_size: usize,
    pub preemptions: u64,
    /// Prefix-cache lookups so far, in prompt tokens: asked for / found cached.
    pub prefix_cache_queries: u64,
    pub prefix_cache_hits: u64,
    /// Cached blocks evicted to make room.
    pub prefix_cache_evictions: u64,
    /// Distinct adapter names of running / waiting sequences, sorted.
    pub running_adapters: Vec<String>,
    pub waiting_adapters: Vec<String>,
}

/// A request of `n` choices fits a sequence cap of `max_num_seqs` (all choices run at once, so a
/// larger `n` could never be scheduled).
pub fn check_choices(n: usize, max_num_seqs: usize) -> Result<()> {
    if n > max_num_seqs {
        return Err(Error::invalid(
            "n",
            format!(
                "n = {n} choices exceed the server's limit of {max_num_seqs} concurrent sequences (--max-num-seqs)"
            ),
        ));
    }
    Ok(())
}

fn adapter_names<'a>(seqs: impl Iterator<Item = &'a Sequence>) -> Vec<String> {
    let mut v: Vec<String> = seqs
        .flat_map(|s| s.adapter_names().map(String::from))
        .collect();
    v.sort();
    v.dedup();
    v
}

impl LlmEngine {
    /// An engine with its own pager (default budgets for its device, private metrics).
    pub fn new(model: Arc<Model>, cfg: EngineConfig) -> Result<Self> {
        let pager = AdapterPager::new(
            model.config().clone(),
            PagerConfig::for_device(cfg.device, cfg.max_adapters_per_step),
            Arc::new(Metrics::new()),
        )?;
        Self::with_pager(model, cfg, Arc::new(pager))
    }

    pub fn with_pager(
        model: Arc<Model>,
        cfg: EngineConfig,
        pager: Arc<AdapterPager>,
    ) -> Result<Self> {
        cfg.validate()?;
        let exec_cfg = ExecConfig {
            num_blocks: cfg.num_blocks,
            block_size: cfg.block_size,
            kv_dtype: cfg.kv_dtype,
            device: cfg.device,
            max_lora_rank: cfg.max_lora_rank,
            lora_dtype: cfg.lora_dtype,
            qmatmul: cfg.qmatmul,
        };
        let executor = exec::create(&model, &exec_cfg, pager.slots().clone())?;
        let alloc = BlockAllocator::with_prefix_caching(
            cfg.num_blocks,
            cfg.block_size,
            cfg.enable_prefix_caching,
        );
        let attn_k = model.config().attention_positions_per_token();
        Ok(LlmEngine {
            model,
            executor,
            alloc,
            scheduler: Scheduler::new(cfg, attn_k),
            pager,
        })
    }

    pub fn pager(&self) -> &Arc<AdapterPager> {
        &self.pager
    }

    /// The executor's one-line description (device, formats, KV cache).
    pub fn describe(&self) -> String {
        self.executor.describe()
    }

    /// Waiting sequences whose adapters finished paging in since the last call.
    pub fn take_paged_in(&mut self) -> Vec<SeqId> {
        std::mem::take(&mut self.scheduler.paged_in)
    }

    /// Sequences dropped because an adapter page-in failed, with the error for their caller.
    pub fn take_failed(&mut self) -> Vec<(SeqId, Error)> {
        std::mem::take(&mut self.scheduler.failed)
    }

    pub fn config(&self) -> &EngineConfig {
        self.scheduler.config()
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// Most tokens (prompt + completion) one sequence may hold.
    pub fn max_seq_len(&self) -> usize {
        self.model
            .config()
            .max_positions
            .min(self.alloc.num_blocks() * self.alloc.block_size())
    }

    /// Queues a request and starts paging in its adapters. Fails (client error) if it can never
    /// fit the context or the KV pool. Returns true when its adapters are ready (schedulable now);
    /// otherwise it becomes ready later (`take_paged_in`) or fails (`take_failed`).
    pub fn add_request(&mut self, id: SeqId, mut req: GenerateRequest) -> Result<bool> {
        req.params.validate()?;
        check_choices(req.params.n, self.scheduler.config().max_num_seqs)?;
        let vocab = self.model.config().vocab_size as u32;
        if req.prompt_ids.is_empty() {
            return Err(Error::invalid("prompt", "must not be empty"));
        }
        if let Some(t) = req.prompt_ids.iter().find(|&&t| t >= vocab) {
            return Err(Error::invalid(
                "prompt",
                format!("token id {t} is out of range (vocab {vocab})"),
            ));
        }
        let max = self.max_seq_len();
        if req.prompt_ids.len() >= max {
            return Err(Error::ContextLength(format!(
                "This model's maximum context length is {max} tokens. However, your prompt has {} tokens.",
                req.prompt_ids.len()
            )));
        }
        // Completions are cut at the context end ("length"), never rejected for max_tokens alone.
        req.params.max_tokens = req.params.max_tokens.min(max - req.prompt_ids.len());
        let distinct: HashSet<_> = req
            .adapters
            .iter()
            .map(|(a, _)| match a {
                AdapterRef::Paged(s) => s.id,
                AdapterRef::Fixed(a) => a.uid,
            })
            .collect();
        self.check_ranks(&req)?;
        let slots = self.pager.config().device_slots;
        if distinct.len() > slots {
            return Err(Error::invalid(
                "adapters",
                format!("at most {slots} distinct adapters per request (the device budget)"),
            ));
        }
        let mut seq = Sequence::new(id, req, self.alloc.new_table(), &self.pager);
        let ready = seq.poll_ready()?;
        self.scheduler.waiting.push_back(seq);
        Ok(ready)
    }

    /// On the device executor, every adapter of `req` fits the slot pool's `--max-lora-rank`
    /// (checked here, at the edge, so a step never meets an adapter it cannot page in).
    fn check_ranks(&self, req: &GenerateRequest) -> Result<()> {
        let Some(max) = self.executor.max_lora_rank() else {
            return Ok(());
        };
        match req.adapters.iter().find(|(a, _)| a.max_rank() > max) {
            Some((a, _)) => Err(Error::unsupported(
                "model",
                format!(
                    "adapter `{}` has rank {}, above this server's --max-lora-rank {} (the device adapter pool's rank)",
                    a.name(),
                    a.max_rank(),
                    max
                ),
            )),
            None => Ok(()),
        }
    }

    /// Removes a request (every choice) wherever it is; its blocks are freed immediately. Returns
    /// true if found.
    pub fn abort(&mut self, id: SeqId) -> bool {
        let s = &mut self.scheduler;
        let before = s.waiting.len() + s.running.len();
        s.waiting.retain(|q| q.id != id);
        s.running.retain(|q| q.id != id);
        before != s.waiting.len() + s.running.len()
    }

    pub fn has_work(&self) -> bool {
        self.scheduler.has_work()
    }

    pub fn stats(&self) -> EngineStats {
        EngineStats {
            waiting: self.scheduler.waiting_choices(),
            running: self.scheduler.running_choices(),
            kv_blocks_used: self.alloc.num_blocks() - self.alloc.num_free(),
            kv_blocks_total: self.alloc.num_blocks(),
            kv_block_size: self.alloc.block_size(),
            preemptions: self.scheduler.preemptions,
            prefix_cache_queries: self.scheduler.prefix_queries,
            prefix_cache_hits: self.scheduler.prefix_hits,
            prefix_cache_evictions: self.alloc.num_evictions(),
            running_adapters: adapter_names(self.scheduler.running.iter()),
            waiting_adapters: adapter_names(self.scheduler.waiting.iter()),
        }
    }

    /// Runs one step; returns an event for every sequence that sampled a token this step.
    pub fn step(&mut self) -> Vec<(SeqId, SeqEvent)> {
        let mut plan = self.scheduler.schedule();
        if plan.is_empty() {
            if self.scheduler.running.is_empty() && self.scheduler.failed.is_empty() {
                // Only sequences waiting for page-ins: sleep until one lands instead of spinning.
                self.pager.wait_for_load(Duration::from_millis(2));
            }
            return Vec::new();
        }
        // Group rows by adapter mix so each adapter is one SGMV segment.
        plan.sort_by_key(|s| self.scheduler.running[s.idx].adapter_key());
        let step = build_plan(&mut self.scheduler.running, &plan);
        match self.run_with_masks(&step, &plan) {
            Ok(logits) => self.postprocess(&plan, &logits),
            // An executor failure is the server's: it must not go unnoticed (the supervisor
            // fails the in-flight requests and restarts the engine).
            Err(e) => panic!("executor step failed: {e}"),
        }
    }

    /// Runs the step; the grammar masks of the constrained rows that sample this step are
    /// computed meanwhile on the compute pool (they depend on the tokens so far only). A step with
    /// no constrained row runs exactly as before.
    fn run_with_masks(&mut self, step: &StepPlan, plan: &[Scheduled]) -> Result<Vec<f32>> {
        let running = &mut self.scheduler.running;
        let mut sampling = vec![false; running.len()];
        for s in plan {
            sampling[s.idx] =
                running[s.idx].constraint.is_some() && running[s.idx].samples_after(s.tokens);
        }
        if !sampling.contains(&true) {
            return self.executor.step(step);
        }
        let executor = &mut self.executor;
        // On the compute pool: the masks' task is stolen by a worker the forward pass leaves idle.
        let (logits, ()) = rayon::join(
            || executor.step(step),
            || {
                running
                    .par_iter_mut()
                    .zip(&sampling)
                    .filter(|(_, s)| **s)
                    .for_each(|(seq, _)| seq.constraint.as_mut().expect("constrained").prepare())
            },
        );
        logits
    }

    /// A request with n > 1 forks its choices once its prompt is computed: they share the
    /// prompt's blocks and sample from the parent's logits row (added to `rows` and `samplers`).
    fn fork_choices(
        &mut self,
        plan: &[Scheduled],
        rows: &mut HashMap<usize, usize>,
        samplers: &mut Vec<usize>,
    ) {
        for s in plan {
            let Some(&row) = rows.get(&s.idx) else {
                continue;
            };
            let parent = &mut self.scheduler.running[s.idx];
            let forks = std::mem::take(&mut parent.forks_left);
            let kids: Vec<Sequence> = (1..=forks).map(|j| parent.fork(j)).collect();
            for kid in kids {
                self.scheduler.running.push(kid);
                let idx = self.scheduler.running.len() - 1;
                rows.insert(idx, row);
                samplers.push(idx);
            }
        }
    }

    fn postprocess(&mut self, plan: &[Scheduled], logits: &[f32]) -> Vec<(SeqId, SeqEvent)> {
        let vocab = self.model.config().vocab_size;
        // Which running sequences sample this step, and their logits row (in plan order).
        let mut rows = HashMap::new();
        for s in plan {
            let seq = &mut self.scheduler.running[s.idx];
            seq.computed += s.tokens;
            seq.blocks
                .register(&seq.identity, &seq.tokens, seq.computed);
            if seq.computed == seq.tokens.len() {
                let row = rows.len();
                rows.insert(s.idx, row); // otherwise a prefill chunk: nothing to sample yet
            }
        }
        let mut samplers: Vec<usize> = plan.iter().map(|s| s.idx).collect();
        self.fork_choices(plan, &mut rows, &mut samplers);
        // Sampling is O(vocab) per sequence and each has its own RNG: run them in parallel.
        let mut sampled: Vec<Option<Sampled>> = self
            .scheduler
            .running
            .par_iter_mut()
            .enumerate()
            .map(|(i, seq)| {
                rows.get(&i)
                    .map(|&r| sample_row(seq, &logits[r * vocab..(r + 1) * vocab]))
            })
            .collect();
        let mut events = Vec::new();
        let mut finished = Vec::new();
        for idx in samplers {
            let Some(Sampled {
                token,
                logprob,
                grammar_done,
            }) = sampled[idx].take()
            else {
                continue;
            };
            let seq = &mut self.scheduler.running[idx];
            let ev = emit(&self.model, seq, token, logprob, grammar_done);
            if ev.finish.is_some() {
                finished.push((seq.id, seq.choice));
            }
            events.push((seq.id, ev));
        }
        self.scheduler
            .running
            .retain(|q| !finished.contains(&(q.id, q.choice)));
        events
    }
}

/// "No token": a constrained row whose grammar allows nothing more (it failed).
const NO_TOKEN: u32 = u32::MAX;

/// One row's sampling result.
struct Sampled {
    token: u32,
    logprob: Option<TokenLogprob>,
    /// The grammar is complete (or failed): the sequence stops here.
    grammar_done: bool,
}

/// Samples one sequence's next token; a constrained row is masked by its grammar first (that
/// row only) and its grammar advances by the token.
fn sample_row(seq: &mut Sequence, row: &[f32]) -> Sampled {
    let prompt = &seq.tokens[..seq.prompt_len];
    let output = &seq.tokens[seq.prompt_len..];
    let Some(c) = seq.constraint.as_mut() else {
        let (token, logprob) = seq.sampler.sample(row, &seq.params, prompt, output);
        return Sampled {
            token,
            logprob,
            grammar_done: false,
        };
    };
    let mut masked = row.to_vec();
    if !c.apply(&mut masked) {
        return Sampled {
            token: NO_TOKEN,
            logprob: None,
            grammar_done: true,
        };
    }
    let (token, logprob) = seq.sampler.sample(&masked, &seq.params, prompt, output);
    c.consume(token);
    Sampled {
        token,
        logprob,
        grammar_done: c.is_done(),
    }
}

/// Appends a sampled token to `seq` and says what the client gets: text, and the finish.
/// `grammar_done`: the row's grammar is complete (or failed), so the sequence stops here.
fn emit(
    model: &Model,
    seq: &mut Sequence,
    token: u32,
    logprob: Option<TokenLogprob>,
    grammar_done: bool,
) -> SeqEvent {
    // NO_TOKEN: the grammar allows nothing more (it failed); no token is produced.
    if token != NO_TOKEN {
        seq.tokens.push(token);
    }
    let n_out = seq.tokens.len() - seq.prompt_len;
    let is_eos = model.eos_ids.contains(&token);
    let is_stop_id = (!seq.params.ignore_eos || grammar_done) && is_eos
        || seq.params.stop_token_ids.contains(&token);
    let (mut text, mut finish) = match is_stop_id {
        true => (seq.detok.flush(), Some(FinishReason::Stop)),
        false => match seq.detok.step(
            model.tokenizer.as_ref(),
            &seq.tokens[seq.prompt_len..],
            &seq.params.stop,
        ) {
            TextStep::Stopped(t) => (t, Some(FinishReason::Stop)),
            TextStep::Continue(t) => (t, None),
        },
    };
    if finish.is_none() && grammar_done {
        // The grammar is complete: its last token's text is released, then it stops.
        text.push_str(&seq.detok.flush());
        finish = Some(FinishReason::Stop);
    }
    if finish.is_none() && n_out >= seq.params.max_tokens {
        text.push_str(&seq.detok.flush());
        finish = Some(FinishReason::Length);
    }
    SeqEvent {
        index: seq.choice,
        token: (token != NO_TOKEN).then_some(token),
        text,
        logprob,
        finish,
        prompt_tokens: seq.prompt_len,
        completion_tokens: n_out,
    }
}

/// Flattens the scheduled sequences into one step plan.
fn build_plan(running: &mut [Sequence], plan: &[Scheduled]) -> StepPlan {
    let mut p = StepPlan::default();
    for s in plan {
        let seq = &mut running[s.idx];
        p.block_copies.extend(seq.blocks.take_copies());
        let seq = &running[s.idx];
        let end = seq.computed + s.tokens;
        p.push_seq(
            &seq.tokens[seq.computed..end],
            seq.computed,
            |pos| seq.blocks.slot(pos),
            seq.blocks.ids(),
            &seq.adapters,
            end == seq.tokens.len(),
        );
    }
    p
}
