//! One whole exchange: the real daemon binary with a given configuration, examined by the
//! library's examiner (which listens for logins before the daemon starts). Shared by the
//! exchange and interop tests; the fault tests drive their own, with faults in between.

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use mqtt_responder::config::{self, Broker, Config};
use mqtt_responder::peer::runner::{self, Noise};
use mqtt_responder::protocol::examiner::{ExaminerSettings, Report};
use mqtt_responder::transport::Endpoint;

use super::write_config;

/// Upper bound for one exchange, far above what it takes (about a second for 1,000 QoS 2
/// commands in a debug build).
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(90);

/// How long the daemon may take to exit after the completion message.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(15);

/// Bound on the examiner's readiness (subscribed to logins): room for one CONNECT and one
/// SUBSCRIBE the broker never answers (the examiner tries each again after
/// [`runner::CONNACK_TIMEOUT`]; that is the broker's fault, not the daemon's), and five
/// seconds for the rest.
pub const READY_TIMEOUT: Duration = Duration::from_secs(2 * runner::CONNACK_TIMEOUT.as_secs() + 5);

/// What came out of one exchange.
pub struct Outcome {
    /// The examiner's report.
    pub report: Report,
    /// The daemon's exit code.
    pub exit_code: Option<i32>,
    /// The daemon's log (stderr, INFO and up).
    pub stderr: String,
    /// From starting the daemon to the examiner's report.
    pub elapsed: Duration,
}

impl Outcome {
    /// The daemon's last CONNACK summary (`MQTT 5, session present: …; broker allows …`).
    pub fn connack(&self) -> &str {
        let line = self
            .stderr
            .lines()
            .rev()
            .find(|l| l.contains("connected (MQTT"))
            .unwrap_or("");
        line.split_once("connected (")
            .map_or("", |(_, rest)| rest.trim_end_matches(')'))
    }

    /// The daemon's exit summary line (after `summary: `).
    pub fn summary(&self) -> &str {
        let line = self
            .stderr
            .lines()
            .find(|l| l.contains("summary:"))
            .unwrap_or("");
        line.split_once("summary: ").map_or("", |(_, rest)| rest)
    }
}

/// Runs the daemon with `config_toml`; `settings` turns the loaded configuration into the
/// examiner's settings (mirror it with `Config::examiner_settings`, then adjust);
/// `examiner_id` is the examiner's client id; `noise` goes out ahead of the first command.
pub fn run(
    config_toml: &str,
    examiner_id: &str,
    settings: impl FnOnce(&Config) -> ExaminerSettings,
    noise: Vec<Noise>,
) -> Outcome {
    // EXAMINER_LOG=mqtt_responder=debug shows the examiner's side of a failing exchange (the
    // daemon's log is in the failure message already).
    if let Ok(filter) = std::env::var("EXAMINER_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), config_toml);
    let (cfg, _) = config::load(&path).expect("test config is valid");
    let settings = settings(&cfg);
    let endpoint = Endpoint::new(&cfg.broker).unwrap();
    let connection = Broker {
        client_id: examiner_id.to_owned(),
        username: None,
        password: None,
        ..cfg.broker.clone()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // The session pump is single-threaded (not Send): run it on a LocalSet.
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let peer = tokio::task::spawn_local(async move {
            runner::run(&endpoint, connection, settings, noise, Some(ready_tx)).await
        });
        let ready = tokio::time::timeout(READY_TIMEOUT, ready_rx)
            .await
            .expect("the examiner subscribes to logins in time");
        if ready.is_err() {
            let ended = peer.await;
            panic!("the examiner ended before it listened for logins: {ended:?}");
        }
        let started = Instant::now();
        let child = spawn_daemon(&path, dir.path());
        let report = tokio::time::timeout(EXCHANGE_TIMEOUT, peer)
            .await
            .expect("the exchange finishes in time")
            .unwrap()
            .expect("the examiner runs to its report");
        let elapsed = started.elapsed();
        let output = tokio::time::timeout(
            EXIT_TIMEOUT,
            tokio::task::spawn_blocking(move || child.wait_with_output()),
        )
        .await
        .expect("the daemon exits after the completion message")
        .unwrap()
        .unwrap();
        Outcome {
            report,
            exit_code: output.status.code(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            elapsed,
        }
    })
}

fn spawn_daemon(config: &Path, dir: &Path) -> Child {
    super::daemon_command(config)
        .current_dir(dir)
        .spawn()
        .expect("start the daemon")
}
