//! Runs a `ValidRequest` on the engine and shapes the result as OpenAI chat or text completion,
//! either one JSON body or an SSE stream (`data: {...}` frames, usage chunk, `data: [DONE]`).
//! Metrics (TTFT, inter-token latency, end-to-end, tokens, outcome) are recorded here, once.
//! Dropping the SSE body (client gone) drops the `RequestStream`, which aborts the sequence.
//! With metering on, the payer is admitted against its funds before the request is queued, and
//! the call's usage record is committed before the final JSON body or the final SSE chunk (usage
//! chunk / `[DONE]`) is produced; a client that goes away earlier gets its call recorded as
//! cancelled when the `CallMeter` drops. A call the engine failed (it panicked) is a 500
//! `server_error` (a stream gets an error event, then `[DONE]`) and its meter is voided: the
//! payer is not billed for the server's failure.
//! With `n > 1`, generation `g`'s choice `j` is choice `g·n + j` of the response; the prompt of
//! each generation is counted once (usage, metering), as OpenAI does.

use super::api_error::ApiError;
use super::chat_reply::{self, ChatDeltas};
use super::openai::Usage;
use super::state::{unix_now, AppState};
use super::validate::ValidRequest;
use crate::engine::{check_choices, FinishReason, RequestStream, SeqEvent, TokenLogprob};
use crate::error::Error;
use crate::ledger::{CallMeter, Commit, RequestId};
use crate::model::Model;
use alloy::primitives::Address;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::stream::{self, Stream, StreamExt};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq)]
pub enum Kind {
    Chat,
    Completion,
}

impl Kind {
    /// The request field holding the prompt.
    pub fn prompt_param(self) -> &'static str {
        match self {
            Kind::Chat => "messages",
            Kind::Completion => "prompt",
        }
    }
}

/// Per-request metric bookkeeping.
struct Timer {
    state: Arc<AppState>,
    label: String,
    start: Instant,
    last: Option<Instant>,
    done: bool,
}

impl Drop for Timer {
    fn drop(&mut self) {
        if !self.done {
            // The client went away before the last token.
            self.state
                .metrics
                .requests
                .with_label_values(&[&self.label, "cancelled"])
                .inc();
        }
    }
}

impl Timer {
    fn token(&mut self) {
        let now = Instant::now();
        match self.last {
            None => self
                .state
                .metrics
                .ttft
                .with_label_values(&[&self.label])
                .observe((now - self.start).as_secs_f64()),
            Some(prev) => self
                .state
                .metrics
                .itl
                .with_label_values(&[&self.label])
                .observe((now - prev).as_secs_f64()),
        }
        self.last = Some(now);
    }

    fn finish(&mut self, usage: Usage, outcome: &str) {
        self.done = true;
        let m = &self.state.metrics;
        m.e2e
            .with_label_values(&[&self.label])
            .observe(self.start.elapsed().as_secs_f64());
        m.prompt_tokens
            .with_label_values(&[&self.label])
            .inc_by(usage.prompt_tokens as u64);
        m.generation_tokens
            .with_label_values(&[&self.label])
            .inc_by(usage.completion_tokens as u64);
        m.requests.with_label_values(&[&self.label, outcome]).inc();
    }
}

fn token_text(model: &Model, id: u32) -> String {
    model
        .tokenizer
        .as_ref()
        .and_then(|t| t.decode(&[id], false).ok())
        .unwrap_or_default()
}

fn chat_logprobs(model: &Model, lps: &[TokenLogprob]) -> Value {
    let entry = |id: u32, lp: f32| {
        let t = token_text(model, id);
        json!({"token": t, "logprob": lp, "bytes": t.as_bytes()})
    };
    let content: Vec<Value> = lps
        .iter()
        .map(|l| {
            let mut e = entry(l.token, l.logprob);
            e["top_logprobs"] = l.top.iter().map(|&(id, lp)| entry(id, lp)).collect();
            e
        })
        .collect();
    json!({"content": content})
}

fn completion_logprobs(model: &Model, lps: &[TokenLogprob], offset0: usize) -> Value {
    let mut offset = offset0;
    let (mut tokens, mut token_lps, mut tops, mut offsets) = (vec![], vec![], vec![], vec![]);
    for l in lps {
        let t = token_text(model, l.token);
        offsets.push(offset);
        offset += t.len();
        tokens.push(t);
        token_lps.push(l.logprob);
        tops.push(
            l.top
                .iter()
                .map(|&(id, lp)| (token_text(model, id), json!(lp)))
                .collect::<serde_json::Map<_, _>>(),
        );
    }
    json!({"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": tops, "text_offset": offsets})
}

fn request_id(kind: Kind) -> String {
    let prefix = if kind == Kind::Chat {
        "chatcmpl"
    } else {
        "cmpl"
    };
    format!("{prefix}-{:032x}", rand::random::<u128>())
}

/// Choices the request asks for (every generation's `n`, `best_of` included).
fn choices(req: &ValidRequest) -> usize {
    req.gens.iter().map(|g| g.params.n).sum()
}

/// A request that could never run whatever the load is a client error (400), found before it is
/// metered: a generation's `n` above the sequence cap, or more choices than the queue holds.
fn check_limits(state: &AppState, req: &ValidRequest) -> Result<(), ApiError> {
    for g in &req.gens {
        check_choices(g.params.n, state.engine.max_num_seqs())?;
    }
    let total = choices(req);
    if total > state.opts.max_queue {
        return Err(Error::invalid(
            "n",
            format!(
                "{total} choices exceed the server's queue of {} (--max-queue)",
                state.opts.max_queue
            ),
        )
        .into());
    }
    Ok(())
}

/// Submits every generation of the request; a rejected one fails the whole request. The queue
/// cap counts choices, waiting and asked for.
async fn submit(state: &AppState, req: &mut ValidRequest) -> Result<Vec<RequestStream>, ApiError> {
    let stats = state.engine.stats();
    if stats.waiting + choices(req) > state.opts.max_queue {
        return Err(ApiError::new(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "the request queue is full; retry later",
        ));
    }
    let mut streams = Vec::with_capacity(req.gens.len());
    for g in req.gens.drain(..) {
        streams.push(state.engine.submit(g).await?);
    }
    Ok(streams)
}

/// Prices and admits a metered call (before it is queued); `None` when metering is off.
fn open_meter(
    state: &AppState,
    req: &ValidRequest,
    payer: Option<Address>,
    id: &str,
) -> Result<Option<CallMeter>, ApiError> {
    let (Some(meter), Some(payer)) = (&state.meter, payer) else {
        return Ok(None);
    };
    let mix = req
        .gens
        .first()
        .map(|g| g.adapters.as_slice())
        .unwrap_or(&[]);
    // A bad manifest is reported by adapter name, never by its path on the server.
    let pricing = meter
        .price(mix)
        .map_err(|e| e.about_adapter(&req.adapter_label))?;
    let gens: Vec<(u64, u64)> = req
        .gens
        .iter()
        .map(|g| {
            let n = g.params.n as u64;
            (g.prompt_ids.len() as u64, g.params.max_tokens as u64 * n)
        })
        .collect();
    let reservation = meter.admit(payer, &pricing, &gens)?;
    Ok(Some(meter.begin(
        RequestId(id.to_string()),
        payer,
        pricing,
        reservation,
        req.gens.iter().map(|g| g.params.n).sum(),
    )))
}

pub async fn respond(
    state: Arc<AppState>,
    kind: Kind,
    mut req: ValidRequest,
    payer: Option<Address>,
) -> Response {
    let id = request_id(kind);
    // A request refused before it runs is counted under its error type.
    let reject = |e: ApiError, label: &str| {
        let e = e.prompt_param(kind.prompt_param());
        state
            .metrics
            .requests
            .with_label_values(&[label, e.error_type()])
            .inc();
        e.into_response()
    };
    let n = req.gens.first().map_or(1, |g| g.params.n);
    if let Err(e) = check_limits(&state, &req) {
        return reject(e, &req.adapter_label);
    }
    let call = match open_meter(&state, &req, payer, &id) {
        Ok(c) => c,
        Err(e) => return reject(e, &req.adapter_label),
    };
    let streams = match submit(&state, &mut req).await {
        Ok(s) => s,
        Err(e) => return reject(e, &req.adapter_label),
    };
    let timer = Timer {
        state: state.clone(),
        label: req.adapter_label.clone(),
        start: Instant::now(),
        last: None,
        done: false,
    };
    if req.stream {
        stream_response(state, kind, req, (streams, n), timer, id, call).into_response()
    } else {
        collect_response(state, kind, req, (streams, n), timer, id, call).await
    }
}

/// Choice `index` of the response for an event of generation `g`, and the usage that event
/// reports for it: the prompt belongs to the generation's choice 0 only (counted once).
fn choice_of(g: usize, n: usize, ev: &SeqEvent) -> (usize, Usage) {
    let prompt = if ev.index == 0 { ev.prompt_tokens } else { 0 };
    (g * n + ev.index, Usage::new(prompt, ev.completion_tokens))
}

/// The event as the meter sees it: its usage (`choice_of`).
fn metered(ev: &SeqEvent, usage: Usage) -> SeqEvent {
    SeqEvent {
        prompt_tokens: usage.prompt_tokens,
        ..ev.clone()
    }
}

#[derive(Default)]
struct Choice {
    text: String,
    logprobs: Vec<TokenLogprob>,
    finish: Option<FinishReason>,
    usage: Usage,
}

async fn collect_response(
    state: Arc<AppState>,
    kind: Kind,
    req: ValidRequest,
    (streams, n): (Vec<RequestStream>, usize),
    mut timer: Timer,
    id: String,
    mut call: Option<CallMeter>,
) -> Response {
    let mut choices: Vec<Choice> = (0..streams.len() * n).map(|_| Choice::default()).collect();
    let mut failure = None;
    for (g, mut s) in streams.into_iter().enumerate() {
        while let Some(ev) = s.next().await {
            timer.token();
            let (i, usage) = choice_of(g, n, &ev);
            if let Some(m) = call.as_mut() {
                m.observe(i, &metered(&ev, usage));
            }
            let c = &mut choices[i];
            c.text.push_str(&ev.text);
            c.logprobs.extend(ev.logprob);
            c.usage = usage;
            if ev.finish.is_some() {
                c.finish = ev.finish;
            }
        }
        failure = s.error();
        if failure.is_some() {
            break;
        }
    }
    let usage = total_usage(&choices.iter().map(|c| c.usage).collect::<Vec<_>>());
    if let Some(keep) = req.best_of_keep {
        choices = best_of(choices, n, keep);
    }
    if let Some(e) = failure {
        // The server failed the call: not billed.
        if let Some(m) = call.take() {
            m.void();
        }
        timer.finish(usage, e.error_type());
        return ApiError::from(e).into_response();
    }
    if let Some(m) = call.as_mut() {
        if let Err(e) = m.record().wait().await {
            timer.finish(usage, e.error_type());
            return ApiError::from(e).into_response();
        }
    }
    timer.finish(usage, "ok");
    let model = state.engine.model();
    let body = match kind {
        Kind::Chat => json!({
            "id": id, "object": "chat.completion", "created": unix_now(), "model": req.model,
            "choices": choices.iter().enumerate().map(|(i, c)| {
                let (message, finish) = chat_reply::message(req.tools, &c.text, c.finish);
                json!({
                    "index": i,
                    "message": message,
                    "logprobs": if req.logprobs { chat_logprobs(model, &c.logprobs) } else { Value::Null },
                    "finish_reason": finish,
                })
            }).collect::<Vec<_>>(),
            "usage": usage,
        }),
        Kind::Completion => json!({
            "id": id, "object": "text_completion", "created": unix_now(), "model": req.model,
            "choices": choices.iter().enumerate().map(|(i, c)| json!({
                "index": i, "text": c.text,
                "logprobs": if req.logprobs { completion_logprobs(model, &c.logprobs, 0) } else { Value::Null },
                "finish_reason": c.finish.map(FinishReason::as_str),
            })).collect::<Vec<_>>(),
            "usage": usage,
        }),
    };
    Json(body).into_response()
}

/// Of every `per_gen` consecutive choices (one generation's), the `keep` with the highest mean
/// token logprob, best first (`best_of`; usage still counts every generated token).
fn best_of(choices: Vec<Choice>, per_gen: usize, keep: usize) -> Vec<Choice> {
    let mean = |c: &Choice| {
        let n = c.logprobs.len().max(1) as f64;
        c.logprobs.iter().map(|l| l.logprob as f64).sum::<f64>() / n
    };
    let mut out = Vec::new();
    let mut it = choices.into_iter().peekable();
    while it.peek().is_some() {
        let mut gen: Vec<Choice> = it.by_ref().take(per_gen).collect();
        gen.sort_by(|a, b| mean(b).total_cmp(&mean(a)));
        out.extend(gen.into_iter().take(keep));
    }
    out
}

fn total_usage(usages: &[Usage]) -> Usage {
    usages.iter().fold(Usage::default(), |u, x| {
        Usage::new(
            u.prompt_tokens + x.prompt_tokens,
            u.completion_tokens + x.completion_tokens,
        )
    })
}

/// The end of a stream that failed: an OpenAI-shaped error event, then `[DONE]`.
fn error_events(e: ApiError) -> Vec<Result<Event, Infallible>> {
    let body =
        json!({"error": {"message": e.message, "type": e.kind, "param": e.param, "code": e.code}});
    vec![
        Ok(Event::default().data(body.to_string())),
        Ok(Event::default().data("[DONE]")),
    ]
}

fn stream_response(
    state: Arc<AppState>,
    kind: Kind,
    req: ValidRequest,
    (streams, per_gen): (Vec<RequestStream>, usize),
    timer: Timer,
    id: String,
    mut call: Option<CallMeter>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let created = unix_now();
    let model = state.engine.model().clone();
    let n = streams.len() * per_gen;
    // Each choice's events, then its error if it ended without a final event.
    let tagged = stream::select_all(streams.into_iter().enumerate().map(|(i, s)| {
        stream::unfold(Some(s), |s| async move {
            let mut s = s?;
            if s.is_done() {
                return None;
            }
            match s.next().await {
                Some(ev) => Some((Ok(ev), Some(s))),
                None => s.error().map(|e| (Err(e), None)),
            }
        })
        .map(move |ev| (i, ev))
        .boxed()
    }));
    let object = if kind == Kind::Chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    let chunk = move |choices: Value, usage: Option<Usage>| {
        let mut v = json!({"id": id, "object": object, "created": created, "model": req.model, "choices": choices});
        if let Some(u) = usage {
            v["usage"] = json!(u);
        }
        Event::default().data(v.to_string())
    };
    let first: Vec<Event> = match kind {
        Kind::Chat => (0..n).map(|i| chunk(json!([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]), None)).collect(),
        Kind::Completion => vec![],
    };
    let logprobs = req.logprobs;
    let include_usage = req.include_usage;
    let mut offsets = vec![0usize; n];
    let mut deltas: Vec<ChatDeltas> = (0..n).map(|_| ChatDeltas::new(req.tools)).collect();
    let mut usages = vec![Usage::default(); n];
    let mut finished = 0;
    let mut failed = false;
    // Taken by the end of the stream (the last chunk, or the failure).
    let mut timer = Some(timer);
    let body = tagged.map(move |(g, ev): (usize, Result<SeqEvent, Error>)| {
        let Some(t) = timer.as_mut().filter(|_| !failed) else {
            return stream::iter(vec![]).boxed();
        };
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                // The server failed the call: not billed; the client sees why, then the end.
                failed = true;
                if let Some(m) = call.take() {
                    m.void();
                }
                t.finish(total_usage(&usages), e.error_type());
                return stream::iter(error_events(ApiError::from(e))).boxed();
            }
        };
        t.token();
        let (i, usage) = choice_of(g, per_gen, &ev);
        if let Some(m) = call.as_mut() {
            m.observe(i, &metered(&ev, usage));
        }
        usages[i] = usage;
        let lp: Vec<TokenLogprob> = ev.logprob.into_iter().collect();
        let finish = ev.finish.map(FinishReason::as_str);
        let c = match kind {
            Kind::Chat => {
                let (delta, finish) = deltas[i].delta(&ev.text, ev.finish);
                json!([{
                    "index": i,
                    "delta": delta,
                    "logprobs": if logprobs { chat_logprobs(&model, &lp) } else { Value::Null },
                    "finish_reason": finish,
                }])
            }
            Kind::Completion => {
                let v = json!([{"index": i, "text": ev.text, "logprobs": if logprobs { completion_logprobs(&model, &lp, offsets[i]) } else { Value::Null }, "finish_reason": finish}]);
                offsets[i] += ev.text.len();
                v
            }
        };
        let mut events = vec![chunk.clone()(c, None)];
        if ev.finish.is_some() {
            finished += 1;
        }
        if finished < n {
            return stream::iter(events.into_iter().map(Ok).collect::<Vec<_>>()).boxed();
        }
        let total = total_usage(&usages);
        if include_usage {
            events.push(chunk.clone()(json!([]), Some(total)));
        }
        events.push(Event::default().data("[DONE]"));
        let commit = call.as_mut().map_or(Commit::none(), CallMeter::record);
        let mut t = timer.take().expect("the last chunk comes once");
        // The record is committed (by the ledger writer) before the last chunk leaves.
        stream::once(async move {
            if let Err(e) = commit.wait().await {
                t.finish(total, e.error_type());
                return error_events(ApiError::from(e));
            }
            t.finish(total, "ok");
            events.into_iter().map(Ok).collect()
        })
        .map(stream::iter)
        .flatten()
        .boxed()
    });
    let all = stream::iter(first.into_iter().map(Ok)).chain(body.flatten());
    Sse::new(all).keep_alive(KeepAlive::new().interval(Duration::from_secs(10)))
}
