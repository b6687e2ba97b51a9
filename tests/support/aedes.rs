//! aedes, an independent MQTT 3.1.1 broker from npm, as a child process for the interop
//! tests: `node tests/brokers/aedes.js PORT` on a free loopback port, stopped by PID.
//!
//! It is installed with `npm ci --prefix tests/brokers` (`.ci/run` does that; the version is
//! pinned in `tests/brokers/package.json` and its lock file). `AEDES_DIR` points at another
//! directory holding `aedes.js` and `node_modules/aedes`; `NODE_BIN` at another `node`.
//! Tests start with [`require_aedes!`](crate::require_aedes): without node or the package
//! they are skipped loudly, and with `CI=true` they fail.

use std::fs;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;

use anyhow::{Context, Result, anyhow, bail};

use super::{
    START_TIMEOUT, STOP_TIMEOUT, find_executable, free_port, in_ci, local_addr, port_accepts,
    send_signal, wait_until,
};

/// A running aedes broker; dropping it SIGKILLs the process (by PID) and removes its temp dir.
#[derive(Debug)]
pub struct Aedes {
    port: u16,
    child: Option<Child>,
    // Declared last: removed after the child is gone.
    dir: tempfile::TempDir,
}

impl Aedes {
    /// The directory holding `aedes.js` and `node_modules/`: `$AEDES_DIR`, else
    /// `tests/brokers` of this crate.
    pub fn install_dir() -> PathBuf {
        std::env::var_os("AEDES_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/brokers"))
    }

    /// `node`: `$NODE_BIN`, else on `PATH`.
    pub fn node() -> Option<PathBuf> {
        match std::env::var_os("NODE_BIN") {
            Some(p) => Some(PathBuf::from(p)).filter(|p| p.is_file()),
            None => find_executable("node"),
        }
    }

    /// What is missing to run aedes, if anything.
    pub fn missing() -> Option<String> {
        if Self::node().is_none() {
            return Some("`node` was not found (set NODE_BIN or install nodejs)".to_owned());
        }
        let package = Self::install_dir().join("node_modules/aedes/package.json");
        (!package.is_file()).then(|| format!("{} does not exist", package.display()))
    }

    /// The installed aedes version (`1.2.0`), from its `package.json`.
    pub fn version() -> Option<String> {
        let path = Self::install_dir().join("node_modules/aedes/package.json");
        let text = fs::read_to_string(path).ok()?;
        let json: serde_json::Value = serde_json::from_str(&text).ok()?;
        json.get("version")?.as_str().map(str::to_owned)
    }

    /// Starts aedes on a free port and waits (at most [`START_TIMEOUT`]) until it says it
    /// listens and its port accepts TCP. A port taken in between makes it exit at once; then
    /// another port is tried (bounded).
    pub fn start() -> Result<Aedes> {
        let node = Self::node().ok_or_else(|| anyhow!("`node` not found"))?;
        let script = Self::install_dir().join("aedes.js");
        let dir = tempfile::Builder::new()
            .prefix("mqtt-responder-aedes-")
            .tempdir()
            .context("create aedes temp dir")?;
        let mut broker = Aedes {
            port: 0,
            child: None,
            dir,
        };
        let mut last_err = None;
        for _ in 0..3 {
            broker.port = free_port();
            match broker.spawn_and_wait(&node, &script) {
                Ok(()) => return Ok(broker),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.expect("at least one attempt"))
    }

    fn spawn_and_wait(&mut self, node: &PathBuf, script: &PathBuf) -> Result<()> {
        let log = fs::File::create(self.log_path())?;
        let child = Command::new(node)
            .arg(script)
            .arg(self.port.to_string())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {} {}", node.display(), script.display()))?;
        self.child = Some(child);
        let port = self.port;
        let mut exited = false;
        let up = wait_until(START_TIMEOUT, || {
            if !self.is_running() {
                exited = true;
                return true;
            }
            self.log().contains("listening on") && port_accepts(port)
        });
        if up && !exited {
            return Ok(());
        }
        if !exited {
            self.kill();
        }
        Err(anyhow!(
            "aedes on 127.0.0.1:{port} {} within {START_TIMEOUT:?}:\n{}",
            if exited {
                "exited"
            } else {
                "did not accept TCP"
            },
            self.log()
        ))
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        local_addr(self.port)
    }

    /// PID of the running process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is alive (reaps it if it has exited).
    pub fn is_running(&mut self) -> bool {
        super::child_running(&mut self.child)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("aedes.log")
    }

    /// What the script printed: one line per client connect, disconnect and error.
    pub fn log(&self) -> String {
        fs::read(self.log_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// SIGTERM by PID, wait (at most [`STOP_TIMEOUT`]) for the exit; SIGKILL after that.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        send_signal(child.id(), "TERM")?;
        let mut exited = false;
        wait_until(STOP_TIMEOUT, || {
            exited = !matches!(child.try_wait(), Ok(None));
            exited
        });
        if !exited {
            child.kill().ok();
            child.wait()?;
            bail!("aedes (pid {}) ignored SIGTERM; killed it", child.id());
        }
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }
}

impl Drop for Aedes {
    fn drop(&mut self) {
        // Strictly this child, by PID; then `dir` removes itself.
        self.kill();
    }
}

/// Skips (returns `None` after a loud banner on stderr) when node or the aedes package is
/// missing; panics instead when `CI=true`. See [`require_aedes!`](crate::require_aedes).
pub fn aedes_or_skip() -> Option<()> {
    let Some(missing) = Aedes::missing() else {
        return Some(());
    };
    let test = thread::current()
        .name()
        .unwrap_or("<unnamed test>")
        .to_owned();
    let how = "install it with `npm ci --prefix tests/brokers` (what .ci/run does) or set \
               AEDES_DIR";
    if in_ci() {
        panic!("CI=true and aedes cannot run: {missing}; {test} cannot run; {how}");
    }
    let bar = "!".repeat(78);
    // The real stderr in one write, as for mosquitto: a skip must show in a passing run.
    let banner = format!(
        "\n{bar}\n!!! SKIPPED {test}: aedes cannot run: {missing}.\n!!! {how}.\n\
         !!! With CI=true this is a failure, not a skip.\n{bar}\n"
    );
    let _ = std::io::stderr().write_all(banner.as_bytes());
    None
}

/// Skips the calling test loudly when aedes cannot run (fails with `CI=true`).
#[macro_export]
macro_rules! require_aedes {
    () => {
        if $crate::support::aedes::aedes_or_skip().is_none() {
            return;
        }
    };
}
