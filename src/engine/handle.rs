//! The engine on its own thread, driven through channels: `EngineHandle::submit` queues a request
//! and returns a `RequestStream` of events. A request whose adapter must be paged in is
//! acknowledged when its adapters are ready, or answered with the page-in error, so a caller gets
//! an error before any event. Dropping the stream (a client that went away) aborts the sequence,
//! which frees its KV blocks and adapter pins on the next loop turn. Dropping the last handle
//! stops the thread once in-flight work is done.

use super::llm_engine::{EngineStats, LlmEngine};
use super::request::{GenerateRequest, SeqEvent};
use super::sequence::SeqId;
use crate::error::{Error, Result};
use crate::lora::AdapterPager;
use crate::metrics::Metrics;
use crate::model::Model;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc as tmpsc, oneshot};

enum Command {
    Submit(
        SeqId,
        GenerateRequest,
        tmpsc::UnboundedSender<SeqEvent>,
        oneshot::Sender<Result<()>>,
    ),
    Abort(SeqId),
}

#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Command>,
    next_id: Arc<AtomicU64>,
    stats: Arc<Mutex<EngineStats>>,
    model: Arc<Model>,
    pager: Arc<AdapterPager>,
    max_adapters_per_step: usize,
}

/// Events of one request, in order; the last one has `finish` set.
pub struct RequestStream {
    pub id: SeqId,
    rx: tmpsc::UnboundedReceiver<SeqEvent>,
    tx: mpsc::Sender<Command>,
    done: bool,
}

impl RequestStream {
    pub async fn next(&mut self) -> Option<SeqEvent> {
        let ev = self.rx.recv().await;
        if ev.as_ref().is_none_or(|e| e.finish.is_some()) {
            self.done = true;
        }
        ev
    }

    /// True once the final event was received.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Blocking variant for non-async callers (CLI, tests).
    pub fn blocking_next(&mut self) -> Option<SeqEvent> {
        let ev = self.rx.blocking_recv();
        if ev.as_ref().is_none_or(|e| e.finish.is_some()) {
            self.done = true;
        }
        ev
    }
}

impl Drop for RequestStream {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.tx.send(Command::Abort(self.id));
        }
    }
}

impl EngineHandle {
    pub fn spawn(engine: LlmEngine) -> Self {
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(Mutex::new(engine.stats()));
        let model = engine.model().clone();
        let pager = engine.pager().clone();
        let max_adapters_per_step = engine.config().max_adapters_per_step;
        let st = stats.clone();
        std::thread::Builder::new()
            .name("openlora-engine".into())
            .spawn(move || run(engine, rx, st))
            .expect("spawn engine thread");
        EngineHandle {
            tx,
            next_id: Arc::new(AtomicU64::new(1)),
            stats,
            model,
            pager,
            max_adapters_per_step,
        }
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

    pub fn stats(&self) -> EngineStats {
        self.stats.lock().expect("stats").clone()
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
                rx: erx,
                tx: self.tx.clone(),
                done: false,
            },
        ))
    }
}

fn run(mut engine: LlmEngine, rx: mpsc::Receiver<Command>, stats: Arc<Mutex<EngineStats>>) {
    let mut sinks: HashMap<SeqId, tmpsc::UnboundedSender<SeqEvent>> = HashMap::new();
    // Requests queued while their adapters page in: acknowledged once ready or failed.
    let mut acks: HashMap<SeqId, oneshot::Sender<Result<()>>> = HashMap::new();
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
            match cmd {
                Command::Submit(id, req, sink, ack) => match engine.add_request(id, req) {
                    Ok(ready) => {
                        sinks.insert(id, sink);
                        match ready {
                            true => drop(ack.send(Ok(()))),
                            false => drop(acks.insert(id, ack)),
                        }
                    }
                    Err(e) => drop(ack.send(Err(e))),
                },
                Command::Abort(id) => {
                    engine.abort(id);
                    sinks.remove(&id);
                    acks.remove(&id);
                }
            }
        }
        let events = engine.step();
        for id in engine.take_paged_in() {
            if let Some(ack) = acks.remove(&id) {
                let _ = ack.send(Ok(()));
            }
        }
        for (id, e) in engine.take_failed() {
            sinks.remove(&id);
            if let Some(ack) = acks.remove(&id) {
                let _ = ack.send(Err(e));
            }
        }
        for (id, ev) in events {
            let finished = ev.finish.is_some();
            let delivered = sinks.get(&id).is_some_and(|s| s.send(ev).is_ok());
            if finished || !delivered {
                sinks.remove(&id);
                if !delivered {
                    engine.abort(id);
                }
            }
        }
        *stats.lock().expect("stats") = engine.stats();
    }
}
