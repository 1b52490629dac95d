//! The engine thread: the step loop of `LlmEngine` run under `catch_unwind`. A panic anywhere in
//! the loop fails every in-flight request with `Error::EngineFailed` (its stream ends with that
//! error; a request not yet acknowledged gets it as its answer), marks the handle not ready and
//! drops the broken engine (its sequences return their KV blocks and adapter pins). With a
//! `Rebuild` the thread then builds a fresh engine (same model, pager and config), counts it in
//! `openlora_engine_restarts_total` and serves on, ready again; without one it ends, and later
//! submissions get `EngineStopped`.
//!
//! What always holds: no request waits on a failed engine, and `ready` is true exactly while a
//! live engine serves.

use super::fault::Fault;
use super::handle::{Command, EventSink, Shared};
use super::llm_engine::LlmEngine;
use super::request::SeqEvent;
use super::sequence::SeqId;
use crate::error::{Error, Result};
use std::any::Any;
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::Duration;
use tokio::sync::oneshot;

/// Builds the engine again after a panic.
pub(super) type Rebuild = Box<dyn FnMut() -> Result<LlmEngine> + Send>;

/// The message every in-flight request gets when the engine fails.
const FAILED: &str =
    "the engine failed while running this request (it restarts); retry the request";

/// Requests the engine thread answers.
#[derive(Default)]
struct InFlight {
    /// Each request's sink, with its choices not yet finished.
    sinks: HashMap<SeqId, (EventSink, usize)>,
    /// Submissions not yet acknowledged (adapters paging in, or being added right now).
    acks: HashMap<SeqId, oneshot::Sender<Result<()>>>,
}

impl InFlight {
    fn apply(&mut self, engine: &mut LlmEngine, cmd: Command) {
        match cmd {
            Command::Submit(id, req, sink, ack) => {
                // Held here first, so that a panic while adding fails this request too.
                self.sinks.insert(id, (sink, req.params.n.max(1)));
                self.acks.insert(id, ack);
                match engine.add_request(id, req) {
                    Ok(true) => self.ack(id, Ok(())),
                    Ok(false) => {}
                    Err(e) => {
                        self.sinks.remove(&id);
                        self.ack(id, Err(e));
                    }
                }
            }
            Command::Abort(id) => {
                engine.abort(id);
                self.sinks.remove(&id);
                self.acks.remove(&id);
            }
        }
    }

    fn ack(&mut self, id: SeqId, r: Result<()>) {
        if let Some(ack) = self.acks.remove(&id) {
            let _ = ack.send(r);
        }
    }

    /// Hands out one step's results: page-ins done, page-ins failed, sampled tokens.
    fn deliver(&mut self, engine: &mut LlmEngine, events: Vec<(SeqId, SeqEvent)>) {
        for id in engine.take_paged_in() {
            self.ack(id, Ok(()));
        }
        for (id, e) in engine.take_failed() {
            let sink = self.sinks.remove(&id);
            match self.acks.remove(&id) {
                Some(ack) => drop(ack.send(Err(e))),
                None => drop(sink.map(|(s, _)| s.send(Err(e)))),
            }
        }
        for (id, ev) in events {
            let finished = ev.finish.is_some();
            let Some((sink, left)) = self.sinks.get_mut(&id) else {
                engine.abort(id);
                continue;
            };
            let delivered = sink.send(Ok(ev)).is_ok();
            *left -= usize::from(finished);
            if *left == 0 || !delivered {
                self.sinks.remove(&id);
                if !delivered {
                    engine.abort(id);
                }
            }
        }
    }

    /// Fails every request (the engine failed); returns how many.
    fn fail_all(&mut self) -> usize {
        let n = self.sinks.len();
        for (id, ack) in self.acks.drain() {
            self.sinks.remove(&id);
            let _ = ack.send(Err(Error::EngineFailed(FAILED.into())));
        }
        for (_, (sink, _)) in self.sinks.drain() {
            let _ = sink.send(Err(Error::EngineFailed(FAILED.into())));
        }
        n
    }
}

pub(super) fn run(
    mut engine: LlmEngine,
    mut rebuild: Option<Rebuild>,
    rx: mpsc::Receiver<Command>,
    shared: Arc<Shared>,
) {
    let metrics = engine.pager().metrics().clone();
    let mut fault = Fault::from_env();
    let mut inflight = InFlight::default();
    loop {
        let served = catch_unwind(AssertUnwindSafe(|| {
            serve(&mut engine, &rx, &mut inflight, &shared, &mut fault)
        }));
        let Err(panic) = served else { return };
        shared.ready.store(false, Ordering::SeqCst);
        let failed = inflight.fail_all();
        tracing::error!(
            panic = panic_message(&*panic),
            failed_requests = failed,
            "the engine panicked; its in-flight requests failed"
        );
        // The broken engine goes first (its KV memory too); its drop must not take the thread down.
        let _ = catch_unwind(AssertUnwindSafe(move || drop(engine)));
        let Some(rebuild) = rebuild.as_mut() else {
            return;
        };
        fault.before_restart();
        let Some(fresh) = rebuild_engine(rebuild, &rx) else {
            return;
        };
        engine = fresh;
        metrics.engine_restarts.inc();
        *shared.stats.lock().unwrap_or_else(|p| p.into_inner()) = engine.stats();
        shared.ready.store(true, Ordering::SeqCst);
        tracing::warn!("the engine restarted");
    }
}

/// The step loop; returns when every handle and stream is gone.
fn serve(
    engine: &mut LlmEngine,
    rx: &mpsc::Receiver<Command>,
    inflight: &mut InFlight,
    shared: &Shared,
    fault: &mut Fault,
) {
    loop {
        // Block when idle; otherwise drain commands without waiting.
        let first = if engine.has_work() {
            rx.try_recv().ok()
        } else {
            match rx.recv() {
                Ok(c) => Some(c),
                Err(_) => return,
            }
        };
        for cmd in first
            .into_iter()
            .chain(std::iter::from_fn(|| rx.try_recv().ok()))
        {
            inflight.apply(engine, cmd);
        }
        fault.before_step(engine);
        let events = engine.step();
        inflight.deliver(engine, events);
        *shared.stats.lock().unwrap_or_else(|p| p.into_inner()) = engine.stats();
    }
}

/// Calls `rebuild` until it succeeds, with backoff; submissions arriving meanwhile are refused.
/// `None` when every handle is gone.
fn rebuild_engine(rebuild: &mut Rebuild, rx: &mpsc::Receiver<Command>) -> Option<LlmEngine> {
    let mut delay = Duration::from_millis(100);
    loop {
        match catch_unwind(AssertUnwindSafe(rebuild.as_mut())) {
            Ok(Ok(engine)) => return Some(engine),
            Ok(Err(e)) => tracing::error!(error = %e, "rebuilding the engine failed; retrying"),
            Err(p) => tracing::error!(
                panic = panic_message(&*p),
                "rebuilding the engine panicked; retrying"
            ),
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_secs(5));
        loop {
            match rx.try_recv() {
                Ok(Command::Submit(_, _, _, ack)) => {
                    let _ = ack.send(Err(Error::Unavailable(
                        "the engine is restarting; retry later".into(),
                    )));
                }
                Ok(Command::Abort(_)) => {}
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => return None,
            }
        }
    }
}

fn panic_message(p: &(dyn Any + Send)) -> &str {
    p.downcast_ref::<&str>()
        .copied()
        .or_else(|| p.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}
