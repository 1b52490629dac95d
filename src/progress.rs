//! Progress of long work an operator waits on (hub downloads, model loading, datanet indexing):
//! an indicatif bar on stderr when stderr is a terminal, otherwise a plain `openlora: ...` line
//! on stderr at most every `LOG_EVERY` and one when the work ends. What always holds: nothing is
//! written to stdout (a `generate` answer stays clean), and a `Progress` dropped before `finish`
//! (an error) leaves no half-drawn bar behind.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// Seconds between two plain log lines when stderr is not a terminal.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// What the counted units are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Bytes: shown in KiB/MiB/GiB with a rate and an ETA.
    Bytes,
    /// Whole items, named in the plural (`tensors`, `records`).
    Items(&'static str),
}

/// One piece of work with an optional known total.
pub struct Progress {
    what: String,
    unit: Unit,
    total: Option<u64>,
    done: u64,
    started: Instant,
    last_log: Instant,
    bar: Option<ProgressBar>,
}

/// True when progress should be drawn as a bar (stderr is a terminal).
pub fn interactive() -> bool {
    std::io::stderr().is_terminal()
}

impl Progress {
    /// Starts reporting `what` (e.g. "downloading org/name model.safetensors").
    pub fn new(what: impl Into<String>, total: Option<u64>, unit: Unit) -> Self {
        let what = what.into();
        let bar = interactive().then(|| bar(&what, total, unit));
        let now = Instant::now();
        Progress {
            what,
            unit,
            total,
            done: 0,
            started: now,
            last_log: now,
            bar,
        }
    }

    /// Counts `n` more units done.
    pub fn inc(&mut self, n: u64) {
        self.done += n;
        match &self.bar {
            Some(b) => b.inc(n),
            None if self.last_log.elapsed() >= LOG_EVERY => {
                self.last_log = Instant::now();
                eprintln!("openlora: {}: {}", self.what, self.line());
            }
            None => {}
        }
    }

    pub fn done(&self) -> u64 {
        self.done
    }

    /// Ends the work with a summary (`done` units, time, rate).
    pub fn finish(mut self) {
        let summary = format!(
            "{}: {} in {:.1}s",
            self.what,
            self.amount(self.done),
            self.started.elapsed().as_secs_f64()
        );
        match self.bar.take() {
            Some(b) => b.finish_with_message(summary),
            None => eprintln!("openlora: {summary}"),
        }
    }

    fn amount(&self, n: u64) -> String {
        match self.unit {
            Unit::Bytes => indicatif::HumanBytes(n).to_string(),
            Unit::Items(name) => format!("{n} {name}"),
        }
    }

    /// `done / total (pct), rate, ETA` for the plain log line.
    fn line(&self) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = self.done as f64 / secs;
        let rate = match self.unit {
            Unit::Bytes => format!("{}/s", indicatif::HumanBytes(rate as u64)),
            Unit::Items(name) => format!("{rate:.0} {name}/s"),
        };
        match self.total {
            Some(t) if t > 0 => {
                let left = t.saturating_sub(self.done) as f64 / (self.done as f64 / secs).max(1e-9);
                format!(
                    "{} / {} ({:.0}%), {rate}, ETA {}",
                    self.amount(self.done),
                    self.amount(t),
                    100.0 * self.done as f64 / t as f64,
                    indicatif::HumanDuration(Duration::from_secs_f64(left.min(1e7)))
                )
            }
            _ => format!("{}, {rate}", self.amount(self.done)),
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(b) = self.bar.take() {
            b.abandon();
        }
    }
}

fn bar(what: &str, total: Option<u64>, unit: Unit) -> ProgressBar {
    let pb = match total {
        Some(t) => ProgressBar::new(t),
        None => ProgressBar::new_spinner(),
    };
    let template = match (unit, total.is_some()) {
        (Unit::Bytes, true) => "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
        (Unit::Bytes, false) => "{spinner} {msg} {bytes} {bytes_per_sec}",
        (Unit::Items(_), true) => "{msg} [{bar:30}] {pos}/{len} ETA {eta}",
        (Unit::Items(_), false) => "{spinner} {msg} {pos}",
    };
    let style = ProgressStyle::with_template(template)
        .expect("valid progress template")
        .progress_chars("=> ");
    pb.set_style(style);
    pb.set_message(what.to_string());
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}

/// A reader that counts the bytes read through it into a `Progress`.
pub struct ProgressReader<R> {
    inner: R,
    progress: Progress,
}

impl<R> ProgressReader<R> {
    pub fn new(inner: R, progress: Progress) -> Self {
        ProgressReader { inner, progress }
    }

    pub fn into_progress(self) -> Progress {
        self.progress
    }
}

impl<R: std::io::Read> std::io::Read for ProgressReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.inc(n as u64);
        Ok(n)
    }
}
