//! A minimal Hugging Face hub on 127.0.0.1: `GET /{org}/{name}/resolve/main/{file}` answers from a
//! local folder per repo with the headers `hf-hub` and our downloader read (`etag` = a hash of the
//! content, `x-repo-commit`, ranged `content-range`). Weight files (`.safetensors`, `.gguf`) are
//! redirected to `/cdn/...` with `x-linked-etag`, as the real hub does for LFS files. Every
//! request is counted in `hits`; anything else is a 404.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub const COMMIT: &str = "3333333333333333333333333333333333333333";

pub struct MiniHub {
    pub url: String,
    pub hits: Arc<AtomicUsize>,
}

impl MiniHub {
    /// Serves each `(org/name, folder)` at revision `main`.
    pub fn serve(repos: Vec<(&str, PathBuf)>) -> MiniHub {
        let repos: HashMap<String, PathBuf> =
            repos.into_iter().map(|(r, d)| (r.to_string(), d)).collect();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                h.fetch_add(1, Ordering::SeqCst);
                let repos = repos.clone();
                std::thread::spawn(move || answer(stream, &repos));
            }
        });
        MiniHub { url, hits }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// The file a `resolve` or `cdn` path names, if the repo has it (no `..` escapes).
fn lookup(repos: &HashMap<String, PathBuf>, path: &str) -> Option<PathBuf> {
    let rest = path.strip_prefix("/cdn").unwrap_or(path);
    let mut parts = rest.trim_start_matches('/').splitn(5, '/');
    let (org, name, kind, rev, file) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    if kind != "resolve" || rev != "main" || file.split('/').any(|p| p == ".." || p.is_empty()) {
        return None;
    }
    let f = repos.get(&format!("{org}/{name}"))?.join(file);
    f.is_file().then_some(f)
}

fn answer(mut stream: TcpStream, repos: &HashMap<String, PathBuf>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut range = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("range") {
                range = Some(v.trim().to_string());
            }
        }
    }
    let Some(file) = lookup(repos, &path) else {
        let _ = stream
            .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        return;
    };
    let body = std::fs::read(&file).unwrap();
    let etag = format!("{:016x}", fnv(&body));
    let lfs = path.ends_with(".safetensors") || path.ends_with(".gguf");
    if lfs && !path.starts_with("/cdn/") {
        let head = format!(
            "HTTP/1.1 302 Found\r\nlocation: /cdn{path}\r\nx-linked-etag: \"{etag}\"\r\nx-repo-commit: {COMMIT}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        );
        let _ = stream.write_all(head.as_bytes());
        return;
    }
    let n = body.len();
    // `bytes=a-b` or `bytes=a-`.
    let (a, b) = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .map(|(a, b)| {
            (
                a.parse::<usize>().unwrap_or(0),
                b.parse::<usize>().map_or(n - 1, |b| b.min(n - 1)),
            )
        })
        .unwrap_or((0, n.saturating_sub(1)));
    let part = if n == 0 { &body[..] } else { &body[a..=b] };
    let head = format!(
        "HTTP/1.1 200 OK\r\netag: \"{etag}\"\r\nx-repo-commit: {COMMIT}\r\ncontent-range: bytes {a}-{b}/{n}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        part.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(part);
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}
