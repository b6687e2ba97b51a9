//! Composition of the daemon: the responder on top of the MQTT session, the reconnect loop
//! with backoff, orderly shutdown, reload on SIGHUP, presence, systemd notifications, and
//! the outcome that becomes the exit code.

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::{self, Config};
use crate::driver::{self, App, End};
use crate::fasthash::FastMap;
use crate::logging::Logging;
use crate::mqtt::packet::{ConnectCode, Publish, WILL_QOS_REFUSED, WILL_RETAIN_REFUSED};
use crate::mqtt::session::{Event, PublishToken, Session, SessionConfig};
use crate::mqtt::{Protocol, QoS};
use crate::presence::{Farewell, Presence, Snapshot, WillChange, WillTrouble};
use crate::protocol::MessageId;
use crate::protocol::responder::{Action, OutgoingKind, Phase, Responder, ResponseTo};
use crate::state::{RunState, SavedReply, StateFile};
use crate::systemd::Notifier;
use crate::transport::{Endpoint, OpenError};

/// A connection that stayed up this long resets the backoff and the attempt counter.
const STABLE_AFTER: Duration = Duration::from_secs(30);

/// MQTT 5: how long the broker keeps our session while we are away.
const SESSION_EXPIRY_SECS: u32 = 24 * 60 * 60;

/// A state file older than the broker keeps a session is not resumed.
const RESUME_WITHIN: Duration = Duration::from_secs(SESSION_EXPIRY_SECS as u64);

/// Room for the topic and properties on top of the largest accepted payload.
const PACKET_OVERHEAD: usize = 70 * 1024;

/// How long the offline record may take to be acknowledged when nothing else bounds it
/// (`drain_timeout_secs = 0`): on a live link that is well under a millisecond.
const FAREWELL_MIN: Duration = Duration::from_secs(1);

/// MQTT 5 DISCONNECT reason: another connection with our client id took the session over.
const SESSION_TAKEN_OVER: u8 = 0x8E;

/// Connections closed by the broker before [`STABLE_AFTER`], in a row, after which another
/// client with the same id is the likely cause (3.1.1 brokers just close the socket).
const TAKEOVER_SUSPECT_STREAK: u32 = 3;

/// What the operating-system edge hands the daemon besides the shutdown token.
#[derive(Default)]
pub struct Ops {
    /// Notified on SIGHUP: reload the reply table and log level.
    pub reload: Notify,
    /// Applies a reloaded `log.level`.
    pub logging: Option<Logging>,
}

/// How a run ended (SPEC §4 exit codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The completion message arrived and the daemon disconnected cleanly.
    Completed,
    /// Stopped by SIGTERM/SIGINT.
    Stopped,
    /// The broker refused the credentials.
    CredentialsRefused,
    /// The broker stayed unreachable for `reconnect.max_attempts` attempts.
    Unreachable,
    /// Anything else.
    Failed,
}

impl Outcome {
    /// The process exit code for this outcome.
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Completed | Outcome::Stopped => 0,
            Outcome::CredentialsRefused => 77,
            Outcome::Unreachable => 69,
            Outcome::Failed => 1,
        }
    }
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
    let user = broker.username.as_deref().unwrap_or("(anonymous)");
    let session_config = SessionConfig {
        protocol: broker.protocol,
        client_id: broker.client_id.clone(),
        username: broker.username.clone(),
        password: broker.password.clone(),
        keep_alive: broker.keep_alive,
        max_inflight: broker.max_inflight,
        max_incoming_packet: config.session.max_payload_bytes + PACKET_OVERHEAD,
        session_expiry: SESSION_EXPIRY_SECS,
        will: app.presence.as_ref().map(Presence::will),
        manual_acks: true,
        clean_first: true,
    };
    let journal = config
        .session
        .state_dir
        .as_deref()
        .map(|dir| Journal::new(dir, &broker.client_id, &addr));
    let restored = journal.as_ref().and_then(Journal::load);
    let mut session = match restored {
        Some(state) => {
            let mut session = Session::restore(session_config, state.session.clone(), started);
            app.restore(&state, &mut session);
            session
        }
        None => Session::new(session_config, started),
    };
    app.journal = journal;
    let mut backoff = Backoff::new(config.reconnect.initial_delay, config.reconnect.max_delay);
    // Failed connection attempts in a row (SPEC §3): refused or unreachable, and also
    // connections lost before they stayed up for STABLE_AFTER.
    let mut failures: u32 = 0;
    let mut reconnects: u32 = 0;
    let mut was_connected = false;
    let mut purged = false;
    let mut takeovers = TakeoverWatch::default();
    let mut tls_alarm = TlsAlarm::default();

    let outcome = loop {
        if shutdown.is_cancelled() {
            break Outcome::Stopped;
        }
        if purged {
            // The throwaway connection that cleared an old session is not news.
            purged = false;
        } else {
            tracing::info!(
                broker = %addr,
                reconnect_attempt = failures + 1,
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
        // A TLS failure is logged as an ERROR (SPEC §3), then retried like any other.
        let mut tls_failure = false;
        let handshake_done = opened.is_ok();
        let cause = match opened {
            Err(e) => {
                failures += 1;
                tls_failure = matches!(e, OpenError::Tls { .. });
                app.will_refused(None, &mut session, &addr);
                e.to_string()
            }
            Ok(stream) => {
                if was_connected {
                    reconnects += 1;
                }
                app.reconnects = reconnects;
                let end = driver::run_connection_with_wake(
                    stream,
                    &mut session,
                    &mut app,
                    broker.connect_timeout,
                    shutdown,
                    Some(&ops.reload),
                )
                .await;
                app.sync_journal();
                let disconnect_reason = app.broker_disconnect_reason.take();
                match end {
                    End::Disconnected => {
                        tracing::info!("disconnected from {addr}");
                        break if app.responder.phase() == Phase::Finished {
                            Outcome::Completed
                        } else {
                            Outcome::Stopped
                        };
                    }
                    End::Purged => {
                        tracing::debug!("cleared the session an earlier run left on {addr}");
                        purged = true;
                        continue;
                    }
                    End::Refused(ConnectCode::BadCredentials | ConnectCode::NotAuthorized) => {
                        tracing::error!(
                            "broker {addr} refused the credentials of user {user} \
                             (client id {}); not retrying",
                            broker.client_id
                        );
                        break Outcome::CredentialsRefused;
                    }
                    End::Refused(ConnectCode::Permanent(reason))
                        if app
                            .will_refused(will_trouble(reason), &mut session, &addr)
                            .is_some() =>
                    {
                        // The broker refused our Will, not us: the next CONNECT carries one
                        // it takes (presence.rs), at once.
                        continue;
                    }
                    End::Refused(ConnectCode::Permanent(reason)) => {
                        tracing::error!(
                            "broker {addr} refused the connection: {reason}; giving up"
                        );
                        break Outcome::Failed;
                    }
                    End::Refused(code) => {
                        failures += 1;
                        format!("broker refused the connection: {code:?}")
                    }
                    End::Lost {
                        error,
                        up_for,
                        closed_by_broker,
                        tls,
                    } => {
                        app.handle_disconnected(Instant::now());
                        if app.stopping {
                            tracing::warn!("connection lost while stopping: {error}");
                            break Outcome::Stopped;
                        }
                        let refusal = (up_for.is_none()
                            && closed_by_broker
                            && broker.protocol == Protocol::V311
                            && session.will_offered())
                        .then_some(WillTrouble::ClosedWithoutConnAck);
                        if app
                            .will_refused(refusal, &mut session, &addr)
                            .is_some_and(WillChange::reconnect_at_once)
                        {
                            continue;
                        }
                        match up_for {
                            Some(up) if up >= STABLE_AFTER => {
                                was_connected = true;
                                backoff.reset();
                                failures = 0;
                            }
                            Some(_) => {
                                // Connected, but not for long: some failures connect fine and
                                // die at once, so this attempt counts as failed.
                                was_connected = true;
                                failures += 1;
                            }
                            None => failures += 1,
                        }
                        if let Some(streak) =
                            takeovers.lost(up_for, closed_by_broker, disconnect_reason)
                        {
                            let how = if disconnect_reason == Some(SESSION_TAKEN_OVER) {
                                "the broker says the session was taken over (reason 0x8E)"
                            } else {
                                "each time the broker ended it, as it does on a takeover"
                            };
                            tracing::error!(
                                "another client with the same client id {} keeps taking the \
                                 session over: {streak} connections in a row lost within {}s \
                                 of connecting ({how}); give each client its own \
                                 broker.client_id",
                                broker.client_id,
                                STABLE_AFTER.as_secs()
                            );
                        }
                        if tls && up_for.is_none() {
                            // A TLS 1.3 broker refuses a client certificate (or its absence)
                            // only after the handshake: that is still a TLS failure.
                            tls_failure = true;
                            format!(
                                "TLS with {addr} failed after the handshake (trusting {}): \
                                 {error}",
                                endpoint.trust().unwrap_or("nothing")
                            )
                        } else {
                            error
                        }
                    }
                }
            }
        };
        let mut repeated_tls_failure = false;
        if tls_failure {
            if tls_alarm.failed(&cause) {
                tracing::error!(
                    broker = %addr,
                    "{cause}; retrying with backoff, never without verification"
                );
            } else {
                repeated_tls_failure = true;
            }
        } else if handshake_done {
            tls_alarm.passed();
        }
        if let Some(max) = config.reconnect.max_attempts
            && failures >= max
        {
            tracing::error!(
                "broker {addr} unreachable after {failures} attempts ({cause}); giving up"
            );
            break Outcome::Unreachable;
        }
        let delay = backoff.next_delay(rand::random());
        let line = format!(
            "reconnecting in {} ms (attempt {}): {cause}",
            delay.as_millis(),
            failures + 1
        );
        if repeated_tls_failure {
            // Said as an ERROR already; WARN keeps it visible without an ERROR per attempt.
            tracing::warn!(broker = %addr, reconnect_attempt = failures + 1, "{line}");
        } else {
            tracing::info!(broker = %addr, reconnect_attempt = failures + 1, "{line}");
        }
        app.notifier.status(
            &format!("reconnecting in {:.1} s", delay.as_secs_f64()),
            Instant::now(),
        );
        tokio::select! {
            () = app.between(&ops.reload, tokio::time::sleep(delay)) => {}
            () = shutdown.cancelled() => break Outcome::Stopped,
        }
    };
    app.finish_journal(outcome, &mut session);
    app.log_summary(outcome, reconnects, started.elapsed());
    app.notifier
        .stopping(&format!("{outcome:?}: {} replies", app.answered()));
    outcome
}

/// Notices another client taking our session over: connections lost shortly after
/// CONNACK because the broker closed them, several times in a row. Reports once per streak.
#[derive(Debug, Default)]
struct TakeoverWatch {
    /// Suspicious losses in a row.
    streak: u32,
    /// One of them carried MQTT 5's "session taken over".
    certain: bool,
    reported: bool,
}

impl TakeoverWatch {
    /// A connection was lost; returns the streak length when it is time to report.
    fn lost(
        &mut self,
        up_for: Option<Duration>,
        closed_by_broker: bool,
        reason: Option<u8>,
    ) -> Option<u32> {
        let taken_over = reason == Some(SESSION_TAKEN_OVER);
        // Closed before CONNACK counts too: when the broker resets the socket right after a
        // takeover, the CONNACK it had sent can be discarded unread.
        let suspicious =
            up_for.is_none_or(|up| up < STABLE_AFTER) && (closed_by_broker || taken_over);
        if !suspicious {
            // A connection that stayed up, or a different failure, ends the streak.
            *self = TakeoverWatch::default();
            return None;
        }
        self.streak += 1;
        self.certain |= taken_over;
        let threshold = if self.certain {
            2
        } else {
            TAKEOVER_SUSPECT_STREAK
        };
        if self.streak >= threshold && !self.reported {
            self.reported = true;
            return Some(self.streak);
        }
        None
    }
}

/// Keeps TLS failures loud without an ERROR per attempt: the first of a streak, and one
/// whose cause differs from the last, deserve an ERROR; a repeat does not. Other failures
/// in between (a broker restarting refuses TCP) do not end the streak; a connection whose
/// TLS held does.
#[derive(Debug, Default)]
struct TlsAlarm {
    /// The cause of the last TLS failure in this streak.
    last: Option<String>,
}

impl TlsAlarm {
    /// A TLS failure: whether it deserves its own ERROR.
    fn failed(&mut self, cause: &str) -> bool {
        if self.last.as_deref() == Some(cause) {
            return false;
        }
        self.last = Some(cause.to_owned());
        true
    }

    /// TLS held on a connection: the next failure is news again.
    fn passed(&mut self) {
        self.last = None;
    }
}

/// The state file with what was last saved to it.
struct Journal {
    file: StateFile,
    client_id: String,
    broker: String,
    saved_uuid: Option<String>,
    saved_draining: bool,
    /// A save failed: said once, then kept quiet until one succeeds again.
    failing: bool,
}

impl Journal {
    fn new(dir: &std::path::Path, client_id: &str, broker: &str) -> Journal {
        Journal {
            file: StateFile::new(dir),
            client_id: client_id.to_owned(),
            broker: broker.to_owned(),
            saved_uuid: None,
            saved_draining: false,
            failing: false,
        }
    }

    /// The state a previous process left for this client and broker, if any.
    fn load(&self) -> Option<RunState> {
        match self.file.load() {
            Ok(Some(_)) if self.file.age().is_some_and(|age| age > RESUME_WITHIN) => {
                // The broker's half of the session expires after as long (MQTT 5), and a
                // 3.1.1 broker that keeps it for ever would have us answer a stale UUID.
                tracing::warn!(
                    "{} was written {} h ago, longer than a session lives ({} h); starting \
                     fresh",
                    self.file.path().display(),
                    self.file.age().unwrap_or_default().as_secs() / 3600,
                    RESUME_WITHIN.as_secs() / 3600
                );
                None
            }
            Ok(Some(state)) if state.client_id == self.client_id && state.broker == self.broker => {
                Some(state)
            }
            Ok(Some(state)) => {
                tracing::warn!(
                    "{} belongs to client {} on {}, not {} on {}; starting fresh",
                    self.file.path().display(),
                    state.client_id,
                    state.broker,
                    self.client_id,
                    self.broker
                );
                None
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!("ignoring the state file: {e}; starting fresh");
                None
            }
        }
    }

    fn save(&mut self, state: &RunState) {
        match self.file.save(state) {
            Ok(()) => {
                self.saved_uuid.clone_from(&state.uuid);
                self.saved_draining = state.draining;
                if std::mem::take(&mut self.failing) {
                    tracing::info!("state file {} written again", self.file.path().display());
                }
            }
            Err(e) => {
                if !std::mem::replace(&mut self.failing, true) {
                    tracing::error!(
                        "cannot write the state file: {e}; answering on, but a crash now \
                         would not resume this run"
                    );
                }
            }
        }
    }

    fn clear(&mut self) {
        if let Err(e) = self.file.clear() {
            tracing::error!("cannot remove the state file: {e}; the next run may resume this one");
        }
    }

    /// Carries out an fsync a throttled save left owed.
    fn sync(&mut self) {
        if let Err(e) = self.file.sync() {
            if !std::mem::replace(&mut self.failing, true) {
                tracing::error!(
                    "cannot sync the state file: {e}; answering on, but a power loss now \
                     would not resume this run"
                );
            }
        }
    }
}

/// The responder wired to a session: maps subscriptions and replies to the packet ids and
/// tokens the session hands out.
struct ResponderApp {
    responder: Responder,
    drain_timeout: Duration,
    /// SUBSCRIBE packet id → topic.
    subscriptions: HashMap<u16, String>,
    /// Reply publish → the command it answers.
    replies: FastMap<PublishToken, Reply>,
    /// SIGTERM/SIGINT received: no new work.
    stopping: bool,
    stop_deadline: Option<Instant>,
    disconnect_sent: bool,
    rejected: u64,
    /// The configuration in force (replies and log level change on reload).
    config: Config,
    logging: Option<Logging>,
    notifier: Notifier,
    presence: Option<Presence>,
    /// What the online record last sent on this connection said of the UUID (known or
    /// not) and the QoS; once the UUID is known, a record that no longer says what is so
    /// is sent again at once.
    online_said: Option<(bool, Option<QoS>)>,
    /// The offline record is on its way; DISCONNECT follows its acknowledgement.
    farewell: Option<PublishToken>,
    reconnects: u32,
    started: Instant,
    /// Reason code of a DISCONNECT the broker sent on the current connection.
    broker_disconnect_reason: Option<u8>,
    /// READY=1 is due once the pending packets (the login) are written.
    ready_owed: bool,
    /// The crash-resume state file, when `session.state_dir` is set.
    journal: Option<Journal>,
    /// State from a previous process, until the broker confirms it kept the session.
    restored: bool,
}

/// A reply in flight, for the journal line when it is acknowledged.
struct Reply {
    id: MessageId,
    command: String,
    topic: String,
    qos: QoS,
    sent: Instant,
}

impl ResponderApp {
    fn new(config: &Config, logging: Option<Logging>, now: Instant) -> ResponderApp {
        ResponderApp {
            responder: fresh_responder(config),
            drain_timeout: config.session.drain_timeout,
            subscriptions: HashMap::new(),
            replies: FastMap::default(),
            stopping: false,
            stop_deadline: None,
            disconnect_sent: false,
            rejected: 0,
            config: config.clone(),
            logging,
            notifier: Notifier::from_env(now),
            presence: Presence::new(&config.session),
            online_said: None,
            farewell: None,
            reconnects: 0,
            started: now,
            broker_disconnect_reason: None,
            ready_owed: false,
            journal: None,
            restored: false,
        }
    }
    /// Takes over the run a previous process left: its replies in flight and its UUID.
    fn restore(&mut self, state: &RunState, session: &mut Session) {
        let in_flight: Vec<(MessageId, String)> = state
            .replies
            .iter()
            .map(|r| (MessageId(r.message_id), r.command.clone()))
            .collect();
        let qos = QoS::try_from(state.qos).unwrap_or(QoS::ExactlyOnce);
        if let Some(uuid) = &state.uuid {
            if let Err(why) = self
                .responder
                .restore(uuid, &in_flight, state.draining, qos)
            {
                tracing::warn!("cannot resume on the saved UUID ({why}); starting afresh");
                session.discard_all();
                return;
            }
        }
        self.replies = state
            .replies
            .iter()
            .map(|r| {
                let reply = Reply {
                    id: MessageId(r.message_id),
                    command: r.command.clone(),
                    topic: String::new(),
                    qos,
                    sent: Instant::now(),
                };
                (PublishToken(r.token), reply)
            })
            .collect();
        // A command surfaced but never answered must come again from the broker.
        let answered: Vec<MessageId> = self.replies.values().map(|r| r.id).collect();
        session.forget_unacked(|id| answered.contains(&id));
        self.restored = true;
    }

    /// Saves the state file if anything it holds changed (before the packets that the
    /// change guards are written).
    fn persist(&mut self, session: &mut Session) {
        let Some(journal) = &mut self.journal else {
            return;
        };
        let uuid = self.responder.uuid();
        let draining = self.responder.is_draining();
        let changed = session.take_dirty()
            || journal.saved_uuid.as_deref() != uuid
            || journal.saved_draining != draining;
        if !changed {
            return;
        }
        let mut state = RunState::new(&journal.client_id, &journal.broker, session.snapshot());
        state.uuid = uuid.map(str::to_owned);
        state.draining = draining;
        state.qos = self.responder.effective_qos().as_u8();
        state.replies = self
            .replies
            .iter()
            .map(|(token, reply)| SavedReply {
                token: token.0,
                message_id: reply.id.0,
                command: reply.command.clone(),
            })
            .collect();
        journal.save(&state);
    }

    /// A completed run clears the file, so the next run starts fresh; any other end keeps
    /// it, so the next run resumes.
    fn finish_journal(&mut self, outcome: Outcome, session: &mut Session) {
        if outcome == Outcome::Completed {
            if let Some(journal) = &mut self.journal {
                journal.clear();
            }
        } else {
            self.persist(session);
            self.sync_journal();
        }
    }

    /// An fsync a throttled save left owed, now: the session state is settled while there
    /// is no connection, and the process may be about to end.
    fn sync_journal(&mut self) {
        if let Some(journal) = &mut self.journal {
            journal.sync();
        }
    }

    /// A connection attempt ended with `trouble` (if any) before a CONNACK accepted it:
    /// presence adapts the Will (presence.rs decides), the session's next CONNECT carries
    /// the Will it wants now, and the change is logged.
    fn will_refused(
        &mut self,
        trouble: Option<WillTrouble>,
        session: &mut Session,
        addr: &str,
    ) -> Option<WillChange> {
        let presence = self.presence.as_mut()?;
        let Some(trouble) = trouble else {
            // Failed for another reason (no connection, a timeout): a guess made on the
            // previous close cannot be told apart any more, so it is dropped.
            if presence.drop_guess() {
                session.set_will(Some(presence.will()));
                tracing::info!(
                    "the attempt after a guess about the Last Will failed for another reason; \
                     back to the usual Will"
                );
            }
            return None;
        };
        let change = presence.will_refused(trouble)?;
        let will = presence.will();
        let qos = will.qos;
        session.set_will(Some(will));
        match change {
            WillChange::NoRetain => tracing::info!(
                "broker {addr} does not keep retained messages; connecting again with a Will \
                 that is not retained"
            ),
            WillChange::Qos0 => tracing::warn!(
                mqtt_topic = presence.topic(),
                "broker {addr} does not support QoS 1 (CONNACK: QoS not supported, for the Last \
                 Will); connecting again with the Will at QoS {qos}: presence goes out at \
                 QoS {qos} for this run"
            ),
            WillChange::Qos0Guess => tracing::info!(
                "broker {addr} closed the connection without a CONNACK, as an MQTT 3.1.1 \
                 broker does when the Last Will's QoS is above its maximum (mosquitto \
                 max_qos 0); connecting again at once with the Will at QoS {qos}"
            ),
            WillChange::NoRetainGuess => tracing::info!(
                "broker {addr} closed the connection with the Will at QoS 0 as well, as an \
                 MQTT 3.1.1 broker does when it keeps no retained messages (mosquitto \
                 retain_available false); connecting again at once with the Will not retained"
            ),
            WillChange::GuessUndone => tracing::info!(
                "broker {addr} closed the connection with the Will at QoS 0 and not retained \
                 as well: not the Will; back to QoS {qos}, retained"
            ),
        }
        Some(change)
    }

    fn handle_disconnected(&mut self, now: Instant) {
        self.subscriptions.clear();
        self.responder.handle_disconnected(now);
        if let Some(presence) = &mut self.presence {
            presence.handle_disconnected();
        }
        self.online_said = None;
    }

    /// Waits for `fut` between connections (connecting, backing off) while still feeding
    /// the watchdog and answering SIGHUP: this is the event loop while there is no socket.
    async fn between<F: Future>(&mut self, reload: &Notify, fut: F) -> F::Output {
        tokio::pin!(fut);
        loop {
            let due = self.notifier.poll_timeout();
            let sleep = async {
                match due {
                    Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                out = &mut fut => return out,
                () = sleep => self.notifier.handle_timeout(Instant::now()),
                () = reload.notified() => self.reload(),
            }
        }
    }

    fn answered(&self) -> u64 {
        self.responder.stats().answered.iter().map(|(_, n)| n).sum()
    }

    /// SIGHUP: read the file again; apply the reply table and log level, report (and do not
    /// apply) what needs a restart, keep everything when the file is invalid.
    fn reload(&mut self) {
        self.notifier.reloading();
        let source = self.config.source.clone();
        match config::load(&source) {
            Err(e) => tracing::error!("reload failed: {e}; keeping the current configuration"),
            Ok((new, warnings)) => {
                for warning in &warnings {
                    tracing::warn!("{warning}");
                }
                match self.responder.replace_replies(&new.replies) {
                    Err(why) => tracing::error!(
                        "reload failed: config error in {}: replies: {why}; keeping the \
                         current configuration",
                        source.display()
                    ),
                    Ok(()) => {
                        if let Some(logging) = &self.logging {
                            logging.set_level(&new.log.level);
                        }
                        let restart = self.config.restart_needed(&new);
                        if !restart.is_empty() {
                            tracing::warn!(
                                "reload: {} changed; needs restart, not applied",
                                restart.join(", ")
                            );
                        }
                        tracing::info!(
                            "reloaded {}: {} replies, log level {}",
                            source.display(),
                            new.replies.0.len(),
                            new.log.level
                        );
                        self.config.replies = new.replies;
                        self.config.log.level = new.log.level;
                    }
                }
            }
        }
        self.notifier.reloaded();
    }

    /// Ends the run: the offline record first (acknowledged, so it is certainly retained
    /// before the broker drops the Will), then DISCONNECT.
    fn finish(&mut self, why: Farewell, session: &mut Session, now: Instant) {
        if self.farewell.is_some() || self.disconnect_sent {
            return;
        }
        match &mut self.presence {
            Some(presence) if session.is_connected() => {
                self.farewell = Some(session.publish(presence.offline(why), now));
                // A stop keeps the deadline SIGTERM set; otherwise the record gets the drain
                // timeout, and at least FAREWELL_MIN.
                let bound = self
                    .stop_deadline
                    .unwrap_or((now + self.drain_timeout).max(now + FAREWELL_MIN));
                self.stop_deadline = Some(bound);
            }
            _ => self.disconnect(session, now),
        }
    }

    /// After every event: the online record when due, systemd status and readiness.
    fn after(&mut self, session: &mut Session, now: Instant) {
        let phase = self.responder.phase();
        let finishing = self.stopping || self.farewell.is_some() || phase == Phase::Finished;
        if let Some(presence) = &mut self.presence
            && session.is_connected()
            && !finishing
        {
            let uuid = self.responder.uuid();
            let qos = self.responder.known_qos();
            if presence.is_due(now) || online_stale(self.online_said, uuid.is_some(), qos) {
                let answered = self.responder.stats().answered.iter().map(|(_, n)| n).sum();
                let snapshot = Snapshot {
                    uuid,
                    answered,
                    reconnects: self.reconnects,
                    uptime: now.saturating_duration_since(self.started),
                    qos,
                };
                self.online_said = Some((uuid.is_some(), qos));
                session.publish(presence.online(snapshot, now), now);
            }
        }
        let n = &mut self.notifier;
        match phase {
            Phase::Disconnected => {}
            Phase::SubscribingUuid => n.status("connected; subscribing to the UUID topic", now),
            Phase::WaitingForUuid => {
                // Connected, subscribed, logged in (once the login is written: see
                // after_transmit): ready. The peer may take its time.
                self.ready_owed = true;
                n.status("waiting for UUID", now);
            }
            Phase::SubscribingCommands => {
                self.ready_owed = true;
                n.status("subscribing to the command topic", now);
            }
            Phase::Answering => {
                self.ready_owed = true;
                let responder = &self.responder;
                n.status_throttled(now, || {
                    let answered: u64 = responder.stats().answered.iter().map(|(_, c)| c).sum();
                    format!(
                        "answering on {}: {answered} replies",
                        responder.uuid().unwrap_or("?")
                    )
                });
            }
            Phase::Draining => n.status("completion received; draining replies", now),
            Phase::Finished => n.status("completed; disconnecting", now),
        }
    }

    fn run_actions(&mut self, session: &mut Session, now: Instant) {
        while let Some(action) = self.responder.poll_action() {
            match action {
                Action::Subscribe { topic, qos } => {
                    if let Some(pkid) = session.subscribe(vec![(topic.clone(), qos)], now) {
                        self.subscriptions.insert(pkid, topic);
                    }
                }
                Action::Publish(out) => {
                    let publish = Publish {
                        dup: false,
                        qos: out.qos,
                        retain: false,
                        pkid: 0,
                        topic: out.topic,
                        payload: out.payload,
                        response_topic: None,
                        correlation_data: out.correlation_data,
                    };
                    let topic = publish.topic.clone();
                    let token = session.publish(publish, now);
                    if let OutgoingKind::Reply {
                        in_reply_to,
                        command,
                    } = out.kind
                    {
                        let reply = Reply {
                            id: in_reply_to,
                            command,
                            topic,
                            qos: out.qos,
                            sent: now,
                        };
                        self.replies.insert(token, reply);
                    }
                }
                Action::Ack(id) => session.ack(id, now),
                Action::Disconnect => self.finish(Farewell::Completed, session, now),
            }
        }
    }

    fn disconnect(&mut self, session: &mut Session, now: Instant) {
        if !self.disconnect_sent {
            session.disconnect(now);
            self.disconnect_sent = true;
        }
    }

    /// A reply is finished with: `delivered`, or refused by the broker (then the command is
    /// counted as failed; it is acknowledged all the same, as a resend would fail again).
    fn reply_done(
        &mut self,
        token: PublishToken,
        delivered: bool,
        session: &mut Session,
        now: Instant,
    ) {
        if self.farewell == Some(token) {
            self.disconnect(session, now);
            return;
        }
        if let Some(reply) = self.replies.remove(&token) {
            tracing::debug!(
                command = %reply.command,
                mqtt_topic = %reply.topic,
                qos = reply.qos.as_u8(),
                session_uuid = self.responder.uuid(),
                latency_us = u64::try_from(now.saturating_duration_since(reply.sent).as_micros())
                    .unwrap_or(u64::MAX),
                "{}",
                if delivered { "reply acknowledged" } else { "reply refused" }
            );
            // The command is acknowledged only now: had we died before, the broker would
            // have redelivered it and it would still get its reply.
            session.ack(reply.id, now);
            if delivered {
                self.responder.handle_delivered(reply.id, now);
            } else {
                self.responder.handle_failed(reply.id, now);
            }
        }
        if self.stopping && self.replies.is_empty() {
            tracing::info!("in-flight replies acknowledged; disconnecting");
            self.finish(Farewell::Stopped, session, now);
        }
    }

    fn log_summary(&self, outcome: Outcome, reconnects: u32, elapsed: Duration) {
        let stats = self.responder.stats();
        let total: u64 = stats.answered.iter().map(|(_, n)| n).sum();
        let per_command: Vec<String> = stats
            .answered
            .iter()
            .map(|(c, n)| format!("{c}={n}"))
            .collect();
        tracing::info!(
            "summary: {outcome:?} after {:.1} s; {total} replies ({}); {} unknown, {} dropped, \
             {} unexpected, {} rejected by the broker; {reconnects} reconnects; QoS {}",
            elapsed.as_secs_f64(),
            per_command.join(", "),
            stats.unknown,
            stats.dropped,
            stats.unexpected,
            self.rejected,
            self.responder.effective_qos(),
        );
    }
}

impl App for ResponderApp {
    fn handle_event(&mut self, event: Event, session: &mut Session, now: Instant) {
        match event {
            Event::Connected {
                session_present,
                caps,
            } => {
                if self.config.broker.protocol == Protocol::V311 {
                    // A 3.1.1 CONNACK announces no limits: SUBACK grants cap the QoS later.
                    tracing::info!(
                        "connected (MQTT 3.1.1, session present: {session_present}; the broker \
                         announces no limits in 3.1.1)"
                    );
                } else {
                    tracing::info!(
                        "connected (MQTT {}, session present: {session_present}; broker allows \
                         QoS {}, receive maximum {}, max packet size {}, retain {})",
                        self.config.broker.protocol,
                        caps.max_qos,
                        caps.receive_maximum,
                        caps.max_packet_size
                            .map_or("unlimited".to_owned(), |s| s.to_string()),
                        if caps.retain_available { "yes" } else { "no" },
                    );
                }
                if let Some(presence) = &mut self.presence {
                    let noted = presence.handle_connected(caps.max_qos, caps.retain_available, now);
                    if noted.retain_unavailable {
                        tracing::info!(
                            mqtt_topic = presence.topic(),
                            "the broker does not keep retained messages (Retain Available = \
                             0); presence is published without retain"
                        );
                    }
                    if noted.will_guess_confirmed {
                        let will = presence.will();
                        let (what, retain) = if will.retain {
                            ("its maximum QoS is 0", "")
                        } else {
                            (
                                "it keeps no retained messages, and perhaps allows no QoS above 0",
                                ", not retained,",
                            )
                        };
                        tracing::warn!(
                            mqtt_topic = presence.topic(),
                            "the broker accepted the Last Will at QoS 0{retain} after closing \
                             the connections that offered more: {what}; presence goes out at \
                             QoS 0{retain} for this run"
                        );
                    }
                }
                self.online_said = None;
                if std::mem::take(&mut self.restored) && !session_present {
                    // Resuming needs the broker's half of the session; without it the
                    // saved UUID leads nowhere.
                    tracing::warn!(
                        "the broker no longer has the session a previous process left; \
                         logging in afresh"
                    );
                    session.discard_all();
                    self.replies.clear();
                    self.responder = fresh_responder(&self.config);
                }
                self.responder
                    .handle_connected(session_present, caps.max_qos, now);
            }
            Event::SubAck { pkid, granted } => {
                if let Some(presence) = &mut self.presence {
                    // 3.1.1 brokers tell their maximum QoS only here.
                    granted
                        .iter()
                        .flatten()
                        .for_each(|q| presence.handle_granted(*q));
                }
                if let Some(topic) = self.subscriptions.remove(&pkid) {
                    let granted = granted.first().copied().flatten();
                    self.responder.handle_subscribed(&topic, granted, now);
                }
            }
            Event::Message(message) => {
                if self.stopping {
                    // Not acknowledged: the broker keeps it for whoever comes next.
                    tracing::debug!(topic = %message.publish.topic, "stopping; message left unanswered");
                } else {
                    let p = message.publish;
                    let response = ResponseTo {
                        topic: p.response_topic,
                        correlation_data: p.correlation_data,
                    };
                    self.responder
                        .handle_request(message.id, &p.topic, &p.payload, &response, now);
                }
            }
            Event::Oversized { topic, size } => self.responder.handle_oversized(&topic, size),
            Event::Delivered(token) => self.reply_done(token, true, session, now),
            Event::Rejected(token, reason) => {
                tracing::error!("the broker did not accept a reply: {reason}; counted as failed");
                self.rejected += 1;
                self.reply_done(token, false, session, now);
            }
            Event::BrokerDisconnect {
                reason,
                reason_string,
            } => {
                self.broker_disconnect_reason = Some(reason);
                tracing::warn!(
                    "broker sent DISCONNECT (reason code 0x{reason:02x}{})",
                    reason_string.map_or(String::new(), |s| format!(": {s}"))
                );
            }
            Event::Refused(_) | Event::Purged => {}
        }
        self.run_actions(session, now);
        self.after(session, now);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        [
            self.responder.poll_timeout(),
            self.stop_deadline,
            self.notifier.poll_timeout(),
            self.presence.as_ref().and_then(Presence::poll_timeout),
            self.journal.as_ref().and_then(|j| j.file.sync_due()),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn handle_timeout(&mut self, session: &mut Session, now: Instant) {
        self.notifier.handle_timeout(now);
        if let Some(journal) = &mut self.journal
            && journal.file.sync_due().is_some_and(|due| now >= due)
        {
            journal.sync();
        }
        if let Some(deadline) = self.stop_deadline
            && now >= deadline
        {
            if self.farewell.is_some() {
                tracing::warn!("the offline record was not acknowledged in time; disconnecting");
            } else {
                tracing::warn!(
                    "{} replies still unacknowledged after {:?}; disconnecting anyway",
                    self.replies.len(),
                    self.drain_timeout
                );
                // Still say goodbye: the record goes out ahead of DISCONNECT, unconfirmed.
                if let Some(presence) = &mut self.presence {
                    session.publish(presence.offline(Farewell::Stopped), now);
                }
            }
            self.disconnect(session, now);
            return;
        }
        if self.responder.poll_timeout().is_some_and(|t| now >= t) {
            self.responder.handle_timeout(now);
        }
        self.run_actions(session, now);
        self.after(session, now);
    }

    fn handle_shutdown(&mut self, session: &mut Session, now: Instant) {
        self.stopping = true;
        self.notifier.stopping("stopping");
        if self.replies.is_empty() {
            tracing::info!("stopping: nothing in flight; disconnecting");
            // The offline record and the broker's close share the stop's bound too.
            self.stop_deadline = Some(now + self.drain_timeout);
            self.finish(Farewell::Stopped, session, now);
        } else {
            tracing::info!(
                "stopping: waiting up to {:?} for {} in-flight replies",
                self.drain_timeout,
                self.replies.len()
            );
            self.stop_deadline = Some(now + self.drain_timeout);
        }
    }

    fn wants_disconnect(&self) -> bool {
        self.disconnect_sent
    }

    fn close_linger(&self, now: Instant) -> Duration {
        // A stop is bounded by drain_timeout_secs, the wait for the broker's close included.
        self.stop_deadline.map_or(driver::CLOSE_LINGER, |deadline| {
            deadline
                .saturating_duration_since(now)
                .min(driver::CLOSE_LINGER)
        })
    }

    fn handle_wake(&mut self, _session: &mut Session, _now: Instant) {
        self.reload();
    }

    fn before_transmit(&mut self, session: &mut Session) {
        self.persist(session);
    }

    fn after_transmit(&mut self) {
        if std::mem::take(&mut self.ready_owed) {
            self.notifier.ready();
        }
    }
}

/// What a CONNACK refusal `reason` says about the Will, if anything.
fn will_trouble(reason: &str) -> Option<WillTrouble> {
    match reason {
        WILL_RETAIN_REFUSED => Some(WillTrouble::RetainRefused),
        WILL_QOS_REFUSED => Some(WillTrouble::QosRefused),
        _ => None,
    }
}

/// Whether the online record sent on this connection (`said`: UUID known, QoS) must be
/// sent again now that the UUID is known or not and the QoS is `qos`. Before the UUID the
/// login follows the SUBACK at once, so the record with the UUID is the one that first
/// tells the QoS: no extra record for that.
fn online_stale(said: Option<(bool, Option<QoS>)>, uuid_known: bool, qos: Option<QoS>) -> bool {
    said.is_some_and(|(had_uuid, said_qos)| uuid_known && (!had_uuid || said_qos != qos))
}

/// A responder for `config` at the start of a run.
fn fresh_responder(config: &Config) -> Responder {
    let mut responder = Responder::new(&config.session, &config.replies);
    responder.set_login_backoff_cap(config.reconnect.max_delay);
    responder
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHORT: Option<Duration> = Some(Duration::from_millis(300));

    #[test]
    fn connack_refusals_of_the_will_are_told_apart() {
        assert_eq!(
            will_trouble(WILL_RETAIN_REFUSED),
            Some(WillTrouble::RetainRefused)
        );
        assert_eq!(
            will_trouble(WILL_QOS_REFUSED),
            Some(WillTrouble::QosRefused)
        );
        assert_eq!(will_trouble("banned"), None);
    }

    #[test]
    fn the_online_record_is_sent_again_when_the_uuid_or_then_the_qos_changes() {
        let q = |n| Some(QoS::try_from(n).unwrap());
        assert!(
            !online_stale(None, true, q(2)),
            "nothing sent: the refresh decides"
        );
        assert!(
            !online_stale(Some((false, None)), false, q(2)),
            "QoS alone waits"
        );
        assert!(
            online_stale(Some((false, None)), true, q(2)),
            "the UUID arrived"
        );
        assert!(!online_stale(Some((true, q(2))), true, q(2)));
        assert!(
            online_stale(Some((true, q(2))), true, q(1)),
            "a SUBACK lowered it"
        );
        assert!(online_stale(Some((true, None)), true, q(0)), "now known");
    }

    #[test]
    fn takeover_reported_once_after_three_broker_closes_in_a_row() {
        let mut w = TakeoverWatch::default();
        assert_eq!(w.lost(SHORT, true, None), None);
        assert_eq!(w.lost(SHORT, true, None), None);
        assert_eq!(w.lost(SHORT, true, None), Some(3));
        assert_eq!(w.lost(SHORT, true, None), None, "reported once per streak");
        // A connection that stayed up ends the streak; a new one is reported again.
        assert_eq!(w.lost(Some(STABLE_AFTER), true, None), None);
        for _ in 0..2 {
            assert_eq!(w.lost(SHORT, true, None), None);
        }
        assert_eq!(w.lost(SHORT, true, None), Some(3));
    }

    #[test]
    fn tls_failure_is_an_error_once_per_streak_and_cause() {
        let mut alarm = TlsAlarm::default();
        assert!(alarm.failed("UnknownIssuer"), "the first of a streak");
        assert!(!alarm.failed("UnknownIssuer"), "a repeat");
        assert!(!alarm.failed("UnknownIssuer"));
        assert!(alarm.failed("NotValidForName"), "a new cause");
        assert!(alarm.failed("UnknownIssuer"), "and back");
        alarm.passed();
        assert!(alarm.failed("UnknownIssuer"), "a new streak after TLS held");
    }

    #[test]
    fn session_taken_over_reason_is_reported_sooner() {
        let mut w = TakeoverWatch::default();
        assert_eq!(w.lost(SHORT, false, Some(SESSION_TAKEN_OVER)), None);
        assert_eq!(w.lost(SHORT, true, Some(SESSION_TAKEN_OVER)), Some(2));
    }

    #[test]
    fn a_takeover_before_the_connack_was_read_counts() {
        let mut w = TakeoverWatch::default();
        assert_eq!(w.lost(SHORT, true, None), None);
        assert_eq!(
            w.lost(None, true, None),
            None,
            "reset before CONNACK was read"
        );
        assert_eq!(w.lost(SHORT, true, None), Some(3));
    }

    #[test]
    fn other_failures_are_not_takeovers() {
        let mut w = TakeoverWatch::default();
        for _ in 0..10 {
            // Resets, keep-alive timeouts and refused connections.
            assert_eq!(w.lost(SHORT, false, None), None);
            assert_eq!(w.lost(None, false, None), None);
        }
        assert_eq!(w.lost(SHORT, true, None), None);
        assert_eq!(w.lost(SHORT, true, None), None);
        assert_eq!(
            w.lost(SHORT, false, Some(0x81)),
            None,
            "a different failure"
        );
        assert_eq!(w.lost(SHORT, true, None), None);
    }
}
