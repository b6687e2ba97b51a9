//! The daemon, composed: load what a previous process left, wire the responder to an MQTT
//! session, run connections until the run is over — asking the [reconnect policy] what to do
//! after each — and leave the journal and the summary behind. The decisions live in the
//! parts: [`reconnect`] (when to connect again), the `app` glue around the pure responder,
//! presence and the journal; this file only carries their verdicts out and logs them.
//!
//! [reconnect policy]: reconnect::ReconnectPolicy

mod app;
pub mod backoff;
pub mod presence;
pub mod reconnect;
pub mod state;
pub mod systemd;

use std::time::Instant;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::daemon::presence::Presence;
use crate::daemon::state::{Journal, RESUME_WITHIN};
use crate::driver::{self, End};
use crate::logging::Logging;
use crate::mqtt::packet::ConnectCode;
use crate::mqtt::session::{Session, SessionConfig};
use crate::transport::{Endpoint, OpenError};
use app::ResponderApp;
pub use reconnect::Outcome;
use reconnect::{
    Context, Next, ReconnectPolicy, SESSION_TAKEN_OVER, STABLE_AFTER, TlsNews, Verdict,
};

/// MQTT 5: how long the broker keeps our session while we are away; as long as a state file
/// is resumed.
const SESSION_EXPIRY_SECS: u32 = RESUME_WITHIN.as_secs() as u32;

/// Room for the topic and properties on top of the largest accepted payload.
const PACKET_OVERHEAD: usize = 70 * 1024;

/// What the operating-system edge hands the daemon besides the shutdown token.
#[derive(Default)]
pub struct Ops {
    /// Notified on SIGHUP: reload the reply table and log level.
    pub reload: Notify,
    /// Applies a reloaded `log.level`.
    pub logging: Option<Logging>,
}

/// Runs the daemon until completion, shutdown or a fatal error.
pub async fn run(
    config: &Config,
    endpoint: &Endpoint,
    shutdown: &CancellationToken,
    ops: &Ops,
) -> Outcome {
    let started = Instant::now();
    let mut app = ResponderApp::new(config, ops.logging.clone(), started);
    let addr = endpoint.addr();
    let broker = &config.broker;
    let session_config = session_config(config, app.presence.as_ref());
    let mut journal = config
        .session
        .state_dir
        .as_deref()
        .map(|dir| Journal::in_dir(dir, &broker.client_id, &addr));
    let mut session = match journal.as_mut().and_then(Journal::load) {
        Some(state) => {
            let mut session = Session::restore(session_config, state.session.clone(), started);
            app.restore(&state, &mut session);
            session
        }
        None => Session::new(session_config, started),
    };
    app.journal = journal;
    let mut policy = ReconnectPolicy::new(
        config.reconnect.initial_delay,
        config.reconnect.max_delay,
        config.reconnect.max_attempts,
    );
    // The throwaway connection that clears an old session is not news.
    let mut quiet = false;

    let outcome = loop {
        if shutdown.is_cancelled() {
            break Outcome::Stopped;
        }
        if !std::mem::take(&mut quiet) {
            tracing::info!(
                broker = %addr,
                reconnect_attempt = policy.attempt(),
                "connecting to {addr} as {} (MQTT {})",
                broker.client_id,
                broker.protocol
            );
        }
        app.notifier
            .status(&format!("connecting to {addr}"), Instant::now());
        let opened = tokio::select! {
            opened = app.between(&ops.reload, endpoint.open()) => opened,
            () = shutdown.cancelled() => break Outcome::Stopped,
        };
        let (end, cx) = match opened {
            Err(e) => {
                // No connection: a guess about the Will made on the last close is void.
                app.will_refused(None, &mut session, &addr);
                let end = End::Lost {
                    tls: matches!(e, OpenError::Tls { .. }),
                    error: e.to_string(),
                    up_for: None,
                    closed_by_broker: false,
                };
                (end, Context::default())
            }
            Ok(stream) => {
                policy.opened();
                app.reconnects = policy.reconnects();
                let end = driver::run_connection_with_wake(
                    stream,
                    &mut session,
                    &mut app,
                    broker.connect_timeout,
                    shutdown,
                    Some(&ops.reload),
                )
                .await;
                app.sync_journal(Instant::now());
                let cx = app.context_after(&end, &mut session, &addr);
                (end, cx)
            }
        };
        let verdict = policy.on_end(&end, &cx, rand::random());
        let cause = say(&verdict, &end, &cx, config, endpoint);
        match verdict.next {
            Next::ConnectNow => quiet = matches!(end, End::Purged),
            Next::Finish(outcome) => break outcome,
            Next::RetryAfter { delay, attempt } => {
                // A broker or network down at boot must not fail the unit's start or hold
                // up boot (SPEC §6): ready once the first attempt has failed, if not before.
                app.notifier.ready();
                let line = format!(
                    "reconnecting in {} ms (attempt {attempt}): {cause}",
                    delay.as_millis()
                );
                if verdict.streak_is_news() {
                    tracing::warn!(
                        broker = %addr,
                        reconnect_attempt = attempt,
                        "{line} ({} failed attempts in a row)",
                        verdict.failures
                    );
                } else if verdict.tls == Some(TlsNews::Repeated) {
                    // Said as an ERROR already; WARN keeps it visible without an ERROR per
                    // attempt.
                    tracing::warn!(broker = %addr, reconnect_attempt = attempt, "{line}");
                } else {
                    tracing::info!(broker = %addr, reconnect_attempt = attempt, "{line}");
                }
                app.notifier.status(
                    &format!("reconnecting in {:.1} s", delay.as_secs_f64()),
                    Instant::now(),
                );
                tokio::select! {
                    () = app.between(&ops.reload, tokio::time::sleep(delay)) => {}
                    () = shutdown.cancelled() => break Outcome::Stopped,
                }
            }
        }
    };
    app.finish_journal(outcome, &mut session);
    app.log_summary(outcome, policy.reconnects(), started.elapsed());
    app.notifier
        .stopping(&format!("{outcome:?}: {} replies", app.answered()));
    outcome
}

/// The session settings of the daemon's connection: the broker settings, a Will when
/// presence is on, acknowledgements only once a command is answered, and a clean first
/// start (a resumed state file keeps its session instead).
fn session_config(config: &Config, presence: Option<&Presence>) -> SessionConfig {
    SessionConfig {
        max_incoming_packet: config.session.responder.max_payload_bytes + PACKET_OVERHEAD,
        session_expiry: SESSION_EXPIRY_SECS,
        will: presence.map(Presence::will),
        manual_acks: true,
        record_changes: config.session.state_dir.is_some(),
        ..config.broker.session_config()
    }
}

/// Logs what the policy's verdict on `end` means (ERRORs for what ends the run or needs an
/// operator); returns the cause to put in the retry line.
fn say(verdict: &Verdict, end: &End, cx: &Context, config: &Config, endpoint: &Endpoint) -> String {
    let addr = endpoint.addr();
    let broker = &config.broker;
    let cause = match end {
        End::Disconnected => {
            tracing::info!("disconnected from {addr}");
            return String::new();
        }
        End::Purged => {
            tracing::debug!("cleared the session an earlier run left on {addr}");
            return String::new();
        }
        End::Refused(ConnectCode::BadCredentials | ConnectCode::NotAuthorized) => {
            tracing::error!(
                "broker {addr} refused the credentials of user {} (client id {}); not retrying",
                broker.username.as_deref().unwrap_or("(anonymous)"),
                broker.client_id
            );
            return String::new();
        }
        // The broker refused our Will, not us: the next CONNECT carries one it takes.
        End::Refused(ConnectCode::Permanent(_)) if cx.will_changed => return String::new(),
        End::Refused(ConnectCode::Permanent(reason)) => {
            tracing::error!("broker {addr} refused the connection: {reason}; giving up");
            return String::new();
        }
        End::Refused(code) => format!("broker refused the connection: {code:?}"),
        End::Lost { error, .. } if cx.opened && cx.stopping => {
            tracing::warn!("connection lost while stopping: {error}");
            return String::new();
        }
        End::Lost {
            error,
            tls: true,
            up_for: None,
            ..
        } if cx.opened => format!(
            "TLS with {addr} failed after the handshake (trusting {}): {error}",
            endpoint.trust().unwrap_or("nothing")
        ),
        End::Lost { error, .. } => error.clone(),
    };
    if let Some((streak, said_by_broker)) = verdict.takeover {
        let how = if said_by_broker {
            format!(
                "the broker says the session was taken over (reason 0x{SESSION_TAKEN_OVER:02X})"
            )
        } else {
            "each time the broker ended it, as it does on a takeover".to_owned()
        };
        tracing::error!(
            "another client with the same client id {} keeps taking the session over: {streak} \
             connections in a row lost within {}s of connecting ({how}); give each client its \
             own broker.client_id",
            broker.client_id,
            STABLE_AFTER.as_secs()
        );
    }
    if verdict.tls == Some(TlsNews::New) {
        tracing::error!(broker = %addr, "{cause}; retrying with backoff, never without verification");
    }
    if verdict.next == Next::Finish(Outcome::Unreachable) {
        tracing::error!(
            "broker {addr} unreachable after {} attempts ({cause}); giving up",
            verdict.failures
        );
    }
    cause
}
