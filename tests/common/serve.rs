//! The real `openlora serve` binary as a child process for black-box tests: started on a free
//! loopback port with the given flags, ready once `/ready` answers 200, killed on drop. Its stderr
//! is kept (and echoed) so a test can wait for a log line or show it on failure.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Served {
    pub child: Child,
    pub port: u16,
    pub log: Arc<Mutex<Vec<String>>>,
}

/// The binary under test: this build's, or `OPENLORA_TEST_BIN` (to run a test against another
/// build, e.g. to see it fail on an older one).
pub fn server_bin() -> std::path::PathBuf {
    std::env::var_os("OPENLORA_TEST_BIN")
        .map(Into::into)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_openlora").into())
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Served {
    /// `openlora serve --host 127.0.0.1 --port P <args>`; waits up to `ready_within` for `/ready`.
    pub fn start(args: &[String], ready_within: Duration) -> Served {
        let port = free_port();
        let mut child = Command::new(server_bin())
            .args(["serve", "--host", "127.0.0.1", "--port", &port.to_string()])
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn openlora serve");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (stderr, sink) = (child.stderr.take().unwrap(), log.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[server] {line}");
                sink.lock().unwrap().push(line);
            }
        });
        let mut s = Served { child, port, log };
        s.wait_ready(ready_within);
        s
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// Polls `/ready` until 200; panics with the log if the server exits or the time runs out.
    pub fn wait_ready(&mut self, within: Duration) -> Duration {
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                panic!("server exited ({st}) before ready:\n{}", self.log_text());
            }
            if matches!(get(self.port, "/ready"), Some((200, _))) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < within,
                "not ready within {within:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The server's stderr so far, ANSI colour codes removed.
    pub fn log_text(&self) -> String {
        strip_ansi(&self.log.lock().unwrap().join("\n"))
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.0 GET on loopback (no chunked bodies): `(status, body)`, `None` when the
/// connection fails. Synchronous, for polling from any thread.
pub fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let status = raw.split_whitespace().nth(1)?.parse().ok()?;
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Some((status, body.to_string()))
}

/// The value of the sample `series` (its name and labels exactly as exported, e.g.
/// `vllm:num_requests_running{model_name="m"}` or a bare name) in a Prometheus text.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// `text` without ANSI escape sequences (`ESC [ ... letter`).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// POSTs `body` as JSON: (status, the JSON answer or `null`).
pub async fn post_json(url: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .post(url)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}
