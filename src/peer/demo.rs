//! `mqtt-responder demo`: the whole exchange on this machine with nothing installed — an
//! embedded broker on a free loopback port, the peer side of the protocol, and the daemon
//! (the same `daemon::run` as `run`), printing the conversation and a summary.

use std::path::Path;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::config::{self, Broker};
use crate::daemon::{self, Outcome};
use crate::peer::console::{self, Transcript};
use crate::peer::embedded_broker::EmbeddedBroker;
use crate::peer::runner::{self, Examination};
use crate::transport::Endpoint;
use crate::vocabulary::{Protocol, QoS};

/// The user ID the demo's daemon logs in with (SPEC §2's example).
const USER_ID: &str = "2547841";

/// What the demo runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Commands the peer sends.
    pub commands: usize,
    /// QoS of subscriptions and publishes on both sides.
    pub qos: QoS,
    /// From the UUID to the first command (SPEC: about 3 s; shortened here).
    pub delay: Duration,
    /// MQTT version.
    pub protocol: Protocol,
}

/// Runs the demo; returns the exit code: 0 when every command was answered once and the
/// daemon finished with a clean disconnect.
/// Transcript times count from `started`.
pub fn run(options: &DemoOptions, started: Instant) -> u8 {
    let transcript = Transcript::starting_at(started);
    let broker = match EmbeddedBroker::start() {
        Ok(broker) => broker,
        Err(e) => {
            eprintln!("demo: cannot start the embedded broker: {e}");
            return 1;
        }
    };
    let port = match options.protocol {
        Protocol::V311 => broker.port(),
        Protocol::V5 => broker.v5_port(),
    };
    transcript.line(
        "broker",
        &format!(
            "embedded rumqttd on 127.0.0.1:{port} (MQTT {}); {} commands at QoS {}",
            options.protocol, options.commands, options.qos
        ),
    );
    let toml = format!(
        "[broker]\nhost = \"127.0.0.1\"\nport = {port}\nprotocol = \"{}\"\n\
         [session]\nuser_id = \"{USER_ID}\"\nqos = {}\nlogin_timeout_secs = 5\n\
         [reconnect]\ninitial_delay_ms = 100\nmax_delay_secs = 2\nmax_attempts = 5\n",
        options.protocol,
        options.qos.as_u8()
    );
    let config = match config::from_toml(Path::new("<demo>"), &toml) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("demo: {e}");
            return 1;
        }
    };
    let endpoint = match Endpoint::new(&config.broker) {
        Ok(endpoint) => endpoint,
        Err(e) => {
            eprintln!("demo: {e}");
            return 1;
        }
    };
    let mut settings = config.examiner_settings();
    settings.commands = options.commands;
    settings.delay = options.delay;
    settings.seed = rand::random();
    let exam = Examination {
        connection: Broker {
            client_id: "mqtt-responder-demo-peer".to_owned(),
            ..config.broker.clone()
        },
        settings,
        logins: 1,
        noise: Vec::new(),
        timeout: options.delay + Duration::from_secs(30),
        progress: None,
        gate: None,
    };

    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("demo: cannot start the async runtime: {e}");
            return 1;
        }
    };
    // Both sides run on this one thread: the session pump is not Send.
    let local = tokio::task::LocalSet::new();
    let peer_endpoint = endpoint.clone();
    let (peer, daemon) = local.block_on(&runtime, async {
        let (ready_tx, ready_rx) = oneshot::channel();
        let peer = tokio::task::spawn_local(async move {
            let mut show = |_: usize, note: &_| transcript.note(note);
            let outcome = runner::examine(&peer_endpoint, exam, &mut show, Some(ready_tx)).await;
            (outcome, transcript)
        });
        if ready_rx.await.is_err() {
            let (outcome, _) = peer.await.expect("the peer task does not panic");
            return (outcome, Outcome::Failed);
        }
        let shutdown = CancellationToken::new();
        let daemon = daemon::run(&config, &endpoint, &shutdown, &daemon::Ops::default()).await;
        let (outcome, transcript) = peer.await.expect("the peer task does not panic");
        let verdict = match daemon {
            Outcome::Completed => "disconnected cleanly after the completion message".to_owned(),
            other => format!("ended with {other:?} (exit code {})", other.exit_code()),
        };
        transcript.line("daemon", &verdict);
        (outcome, daemon)
    });
    println!();
    match peer {
        Ok(outcome) => {
            print!("{}", console::summary(&outcome));
            if outcome.passed() && daemon == Outcome::Completed {
                0
            } else {
                1
            }
        }
        Err(e) => {
            eprintln!("demo: the peer failed: {e}");
            1
        }
    }
}
