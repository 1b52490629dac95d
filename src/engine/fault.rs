//! A test-only fault trigger, compiled in with the cargo feature `fault-injection` (never in a
//! release build): with `OPENLORA_FAULT_PANIC_AFTER_STEPS=N` the engine thread panics right before
//! its N-th step that has at least `OPENLORA_FAULT_PANIC_MIN_SEQS` (default 1) sequences in
//! flight, once per process; `OPENLORA_FAULT_RESTART_DELAY_MS` holds the restart back so a test
//! can watch `/ready` turn 503. Without the feature every hook is a no-op and nothing is read.

use super::llm_engine::LlmEngine;

#[cfg(feature = "fault-injection")]
pub(super) struct Fault {
    panic_at: Option<u64>,
    min_seqs: usize,
    steps: u64,
    restart_delay: std::time::Duration,
}

#[cfg(feature = "fault-injection")]
impl Fault {
    pub fn from_env() -> Self {
        let var = |k: &str| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        Fault {
            panic_at: var("OPENLORA_FAULT_PANIC_AFTER_STEPS"),
            min_seqs: var("OPENLORA_FAULT_PANIC_MIN_SEQS").unwrap_or(1) as usize,
            steps: 0,
            restart_delay: std::time::Duration::from_millis(
                var("OPENLORA_FAULT_RESTART_DELAY_MS").unwrap_or(0),
            ),
        }
    }

    pub fn before_step(&mut self, engine: &LlmEngine) {
        let Some(at) = self.panic_at else { return };
        let s = engine.stats();
        if s.waiting + s.running < self.min_seqs {
            return;
        }
        self.steps += 1;
        if self.steps >= at {
            self.panic_at = None;
            panic!(
                "fault injection: engine panic at step {at} with {} sequences running",
                s.running
            );
        }
    }

    pub fn before_restart(&self) {
        std::thread::sleep(self.restart_delay);
    }
}

#[cfg(not(feature = "fault-injection"))]
pub(super) struct Fault;

#[cfg(not(feature = "fault-injection"))]
impl Fault {
    pub fn from_env() -> Self {
        Fault
    }

    #[inline]
    pub fn before_step(&mut self, _engine: &LlmEngine) {}

    pub fn before_restart(&self) {}
}
