//! A local anvil node for tests and demos: spawned on 127.0.0.1 with an OS-chosen port, OP Stack
//! mode (`--network optimism`), killed when the handle drops. Its stdout is drained on a thread so
//! anvil never blocks on a full pipe.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Private keys of anvil's default dev accounts 0..4 (mnemonic "test test ... junk"). Public
/// knowledge: never use them on a real chain.
pub const DEV_KEYS: [&str; 5] = [
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
    "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a",
];

/// Where anvil is looked for, in order: `$OPENLORA_ANVIL`, the npm package installed by
/// `contracts/ci.sh` (`contracts/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil`), `anvil` on PATH.
pub fn find_anvil() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("OPENLORA_ANVIL") {
        return Some(PathBuf::from(p));
    }
    let npm = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("contracts/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil");
    if npm.is_file() {
        return Some(npm);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("anvil"))
            .find(|p| p.is_file())
    })
}

/// A running anvil; dropping it kills the process.
pub struct LocalAnvil {
    child: Child,
    port: u16,
}

impl LocalAnvil {
    /// Start `bin` (see [`find_anvil`]) in OP Stack mode, plus `extra_args`, and wait until it listens.
    pub fn spawn(bin: &Path, extra_args: &[&str]) -> std::io::Result<Self> {
        Self::spawn_on(bin, 0, extra_args)
    }

    /// Like [`Self::spawn`] on a given port (0 = OS-chosen): to restart a node where clients
    /// expect it, e.g. with `--state <file>` to keep the chain across the restart.
    pub fn spawn_on(bin: &Path, port: u16, extra_args: &[&str]) -> std::io::Result<Self> {
        let port_arg = port.to_string();
        let mut child = Command::new(bin)
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port_arg,
                "--network",
                "optimism",
            ])
            .args(extra_args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .stdin(Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("Listening on ") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr.trim().to_string());
                    }
                }
            }
        });
        let listening = rx.recv_timeout(Duration::from_secs(30));
        let port = listening
            .ok()
            .and_then(|addr| addr.rsplit(':').next().and_then(|p| p.parse().ok()));
        match port {
            Some(port) => Ok(Self { child, port }),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                Err(std::io::Error::other(format!(
                    "{} did not report a listening address",
                    bin.display()
                )))
            }
        }
    }

    /// Stop with SIGTERM (so `--state`/`--dump-state` files are written) and wait for the exit.
    pub fn stop(mut self) -> std::io::Result<()> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        if !status.success() {
            return Err(std::io::Error::other("kill -TERM failed"));
        }
        for _ in 0..200 {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(std::io::Error::other("anvil did not exit after SIGTERM"))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port>`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for LocalAnvil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
