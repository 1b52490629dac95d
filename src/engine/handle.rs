//! The engine on its own thread, driven through channels: `EngineHandle::submit` queues a request
//! and returns a `RequestStream` of events. A request whose adapter must be paged in is
//! acknowledged when its adapters are ready, or answered with the page-in error, so a caller gets
//! an error before any event. Dropping the stream (a client that went away) aborts the sequence,
//! which frees its KV blocks and adapter pins on the next loop turn. Dropping the last handle
//! stops the thread once in-flight work is done.
//!
//! What always holds: a stream ends either with the final event (`finish` set) of every choice, or with an error
//! (`RequestStream::error`): the engine failed (a panic, see `supervisor`) or stopped. The thread
//! loop lives in `supervisor`, which contains a panic, fails every in-flight request, and (when
//! the handle was built with `spawn_supervised`) restarts the engine; `is_ready` is false meanwhile.

use super::llm_engine::{EngineStats, LlmEngine};
use super::request::{GenerateRequest, SeqEvent};
use super::sequence::SeqId;
use super::supervisor::{self, Rebuild};
use crate::error::{Error, Result};
use crate::lora::AdapterPager;
use crate::metrics::Metrics;
use crate::model::Model;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc as tmpsc, oneshot};

/// Where the engine thread sends a request's events; an `Err` ends the stream (engine failure).
pub(super) type EventSink = tmpsc::UnboundedSender<Result<SeqEvent>>;

pub(super) enum Command {
    Submit(
        SeqId,
        GenerateRequest,
        EventSink,
        oneshot::Sender<Result<()>>,
    ),
    Abort(SeqId),
}

/// What the engine thread publishes to every handle.
pub(super) struct Shared {
    pub stats: Mutex<EngineStats>,
    /// False while the engine is down (after a panic, until it is rebuilt; for good without one).
    pub ready: AtomicBool,
}

#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Command>,
    next_id: Arc<AtomicU64>,
    shared: Arc<Shared>,
    model: Arc<Model>,
    pager: Arc<AdapterPager>,
    max_adapters_per_step: usize,
    max_num_seqs: usize,
    max_seq_len: usize,
}

/// Events of one request, in order (the `n` choices' interleaved, each tagged with its index); it
/// ends after every choice's final event (`finish` set), unless the engine failed.
pub struct RequestStream {
    pub id: SeqId,
    /// Choices whose final event has not come yet.
    left: usize,
    rx: tmpsc::UnboundedReceiver<Result<SeqEvent>>,
    tx: mpsc::Sender<Command>,
    /// The final event was received.
    finished: bool,
    /// No more events will come (finished, failed or the engine thread went away).
    ended: bool,
    error: Option<Error>,
}

impl RequestStream {
    pub async fn next(&mut self) -> Option<SeqEvent> {
        if self.ended {
            return None;
        }
        let ev = self.rx.recv().await;
        self.accept(ev)
    }

    /// Blocking variant for non-async callers (CLI, tests).
    pub fn blocking_next(&mut self) -> Option<SeqEvent> {
        if self.ended {
            return None;
        }
        let ev = self.rx.blocking_recv();
        self.accept(ev)
    }

    fn accept(&mut self, ev: Option<Result<SeqEvent>>) -> Option<SeqEvent> {
        match ev {
            Some(Ok(ev)) => {
                if ev.finish.is_some() {
                    self.left = self.left.saturating_sub(1);
                    if self.left == 0 {
                        self.finished = true;
                        self.ended = true;
                    }
                }
                Some(ev)
            }
            Some(Err(e)) => {
                self.error = Some(e);
                self.ended = true;
                None
            }
            None => {
                self.ended = true;
                None
            }
        }
    }

    /// True once no more events will come.
    pub fn is_done(&self) -> bool {
        self.ended
    }

    /// Why the stream ended without its final event (`None` while running or once finished):
    /// `EngineFailed` after an engine panic, the page-in error, or `EngineStopped`.
    pub fn error(&mut self) -> Option<Error> {
        if !self.ended || self.finished {
            return None;
        }
        Some(self.error.take().unwrap_or(Error::EngineStopped))
    }
}

impl Drop for RequestStream {
    fn drop(&mut self) {
        if !self.ended {
            let _ = self.tx.send(Command::Abort(self.id));
        }
    }
}

impl EngineHandle {
    /// An engine that is not restarted: after a panic its in-flight requests fail and later
    /// submissions get `EngineStopped` (the CLI and tests).
    pub fn spawn(engine: LlmEngine) -> Self {
        Self::start(engine, None)
    }

    /// `engine`, rebuilt by `rebuild` after a panic (same model, pager and config; the pager and
    /// the metrics outlive the engine).
    pub fn spawn_supervised(
        engine: LlmEngine,
        rebuild: impl FnMut() -> Result<LlmEngine> + Send + 'static,
    ) -> Self {
        Self::start(engine, Some(Box::new(rebuild)))
    }

    fn start(engine: LlmEngine, rebuild: Option<Rebuild>) -> Self {
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            stats: Mutex::new(engine.stats()),
            ready: AtomicBool::new(true),
        });
        let handle = EngineHandle {
            tx,
            next_id: Arc::new(AtomicU64::new(1)),
            shared: shared.clone(),
            model: engine.model().clone(),
            pager: engine.pager().clone(),
            max_adapters_per_step: engine.config().max_adapters_per_step,
            max_num_seqs: engine.config().max_num_seqs,
            max_seq_len: engine.max_seq_len(),
        };
        std::thread::Builder::new()
            .name("openlora-engine".into())
            .spawn(move || supervisor::run(engine, rebuild, rx, shared))
            .expect("spawn engine thread");
        handle
    }

    /// False while the engine is down (it panicked and is being rebuilt, or stopped for good).
    pub fn is_ready(&self) -> bool {
        self.shared.ready.load(Ordering::SeqCst)
    }

    /// Most tokens (prompt + completion) one sequence may hold.
    pub fn max_seq_len(&self) -> usize {
        self.max_seq_len
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    pub fn pager(&self) -> &Arc<AdapterPager> {
        &self.pager
    }

    /// The metrics the engine's pager reports to (the server exports these).
    pub fn metrics(&self) -> &Arc<Metrics> {
        self.pager.metrics()
    }

    pub fn max_adapters_per_step(&self) -> usize {
        self.max_adapters_per_step
    }

    /// Choices that may run at once (`--max-num-seqs`).
    pub fn max_num_seqs(&self) -> usize {
        self.max_num_seqs
    }

    pub fn stats(&self) -> EngineStats {
        self.shared
            .stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Queues a request; errors (invalid or too long) come back before any event.
    pub async fn submit(&self, req: GenerateRequest) -> Result<RequestStream> {
        let (_, ack, stream) = self.send(req)?;
        ack.await.map_err(|_| Error::EngineStopped)??;
        Ok(stream)
    }

    pub fn submit_blocking(&self, req: GenerateRequest) -> Result<RequestStream> {
        let (_, ack, stream) = self.send(req)?;
        ack.blocking_recv().map_err(|_| Error::EngineStopped)??;
        Ok(stream)
    }

    fn send(
        &self,
        req: GenerateRequest,
    ) -> Result<(SeqId, oneshot::Receiver<Result<()>>, RequestStream)> {
        let id = SeqId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let left = req.params.n.max(1);
        let (etx, erx) = tmpsc::unbounded_channel();
        let (atx, arx) = oneshot::channel();
        self.tx
            .send(Command::Submit(id, req, etx, atx))
            .map_err(|_| Error::EngineStopped)?;
        Ok((
            id,
            arx,
            RequestStream {
                id,
                left,
                rx: erx,
                tx: self.tx.clone(),
                finished: false,
                ended: false,
                error: None,
            },
        ))
    }
}
