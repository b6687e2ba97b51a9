//! Composition of the daemon: the responder on top of the MQTT session, the reconnect loop
//! with backoff, orderly shutdown, and the outcome that becomes the exit code.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::Config;
use crate::driver::{self, App, End};
use crate::fasthash::FastMap;
use crate::mqtt::packet::{ConnectCode, Publish};
use crate::mqtt::session::{Event, PublishToken, Session, SessionConfig};
use crate::protocol::MessageId;
use crate::protocol::responder::{Action, OutgoingKind, Phase, Responder};
use crate::transport::Endpoint;

/// A connection that stayed up this long resets the backoff and the attempt counter.
const STABLE_AFTER: Duration = Duration::from_secs(30);

/// MQTT 5: how long the broker keeps our session while we are away.
const SESSION_EXPIRY_SECS: u32 = 24 * 60 * 60;

/// Room for the topic and properties on top of the largest accepted payload.
const PACKET_OVERHEAD: usize = 70 * 1024;

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
pub async fn run(config: &Config, endpoint: &Endpoint, shutdown: &CancellationToken) -> Outcome {
    let started = Instant::now();
    let addr = endpoint.addr();
    let broker = &config.broker;
    let user = broker.username.as_deref().unwrap_or("(anonymous)");
    let mut session = Session::new(
        SessionConfig {
            protocol: broker.protocol,
            client_id: broker.client_id.clone(),
            username: broker.username.clone(),
            password: broker.password.clone(),
            keep_alive: broker.keep_alive,
            max_inflight: broker.max_inflight,
            max_incoming_packet: config.session.max_payload_bytes + PACKET_OVERHEAD,
            session_expiry: SESSION_EXPIRY_SECS,
            will: None,
            manual_acks: true,
            clean_first: true,
        },
        started,
    );
    let mut app = ResponderApp::new(config);
    let mut backoff = Backoff::new(config.reconnect.initial_delay, config.reconnect.max_delay);
    let mut failures: u32 = 0;
    let mut reconnects: u32 = 0;
    let mut was_connected = false;
    let mut purged = false;

    let outcome = loop {
        if shutdown.is_cancelled() {
            break Outcome::Stopped;
        }
        if purged {
            // The throwaway connection that cleared an old session is not news.
            purged = false;
        } else {
            tracing::info!(
                "connecting to {addr} as {} (MQTT {})",
                broker.client_id,
                broker.protocol
            );
        }
        let opened = tokio::select! {
            opened = endpoint.open() => opened,
            () = shutdown.cancelled() => break Outcome::Stopped,
        };
        let cause = match opened {
            Err(e) => {
                failures += 1;
                e.to_string()
            }
            Ok(stream) => {
                if was_connected {
                    reconnects += 1;
                }
                let end = driver::run_connection(
                    stream,
                    &mut session,
                    &mut app,
                    broker.connect_timeout,
                    shutdown,
                )
                .await;
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
                    End::Lost { error, up_for } => {
                        app.handle_disconnected(Instant::now());
                        if app.stopping {
                            tracing::warn!("connection lost while stopping: {error}");
                            break Outcome::Stopped;
                        }
                        match up_for {
                            Some(up) => {
                                was_connected = true;
                                if up >= STABLE_AFTER {
                                    backoff.reset();
                                    failures = 0;
                                }
                            }
                            None => failures += 1,
                        }
                        error
                    }
                }
            }
        };
        if let Some(max) = config.reconnect.max_attempts
            && failures >= max
        {
            tracing::error!(
                "broker {addr} unreachable after {failures} attempts ({cause}); giving up"
            );
            break Outcome::Unreachable;
        }
        let delay = backoff.next_delay(rand::random());
        tracing::info!(
            "reconnecting in {} ms (attempt {}): {cause}",
            delay.as_millis(),
            failures + 1
        );
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => break Outcome::Stopped,
        }
    };
    app.log_summary(outcome, reconnects, started.elapsed());
    outcome
}

/// The responder wired to a session: maps subscriptions and replies to the packet ids and
/// tokens the session hands out.
struct ResponderApp {
    responder: Responder,
    drain_timeout: Duration,
    /// SUBSCRIBE packet id → topic.
    subscriptions: HashMap<u16, String>,
    /// Reply publish → the command it answers.
    replies: FastMap<PublishToken, MessageId>,
    /// SIGTERM/SIGINT received: no new work.
    stopping: bool,
    stop_deadline: Option<Instant>,
    disconnect_sent: bool,
    rejected: u64,
}

impl ResponderApp {
    fn new(config: &Config) -> ResponderApp {
        ResponderApp {
            responder: Responder::new(&config.session, &config.replies),
            drain_timeout: config.session.drain_timeout,
            subscriptions: HashMap::new(),
            replies: FastMap::default(),
            stopping: false,
            stop_deadline: None,
            disconnect_sent: false,
            rejected: 0,
        }
    }

    fn handle_disconnected(&mut self, now: Instant) {
        self.subscriptions.clear();
        self.responder.handle_disconnected(now);
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
                        correlation_data: None,
                    };
                    let token = session.publish(publish, now);
                    if let OutgoingKind::Reply { in_reply_to, .. } = out.kind {
                        self.replies.insert(token, in_reply_to);
                    }
                }
                Action::Ack(id) => session.ack(id, now),
                Action::Disconnect => self.disconnect(session, now),
            }
        }
    }

    fn disconnect(&mut self, session: &mut Session, now: Instant) {
        if !self.disconnect_sent {
            session.disconnect(now);
            self.disconnect_sent = true;
        }
    }

    fn reply_done(&mut self, token: PublishToken, session: &mut Session, now: Instant) {
        if let Some(id) = self.replies.remove(&token) {
            // The command is acknowledged only now: had we died before, the broker would
            // have redelivered it and it would still get its reply.
            session.ack(id, now);
            self.responder.handle_delivered(id, now);
        }
        if self.stopping && self.replies.is_empty() {
            tracing::info!("in-flight replies acknowledged; disconnecting");
            self.disconnect(session, now);
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
                tracing::info!(
                    "connected (session present: {session_present}; broker allows QoS {}, \
                     receive maximum {}, max packet size {}, retain {})",
                    caps.max_qos,
                    caps.receive_maximum,
                    caps.max_packet_size
                        .map_or("unlimited".to_owned(), |s| s.to_string()),
                    if caps.retain_available { "yes" } else { "no" },
                );
                self.responder
                    .handle_connected(session_present, caps.max_qos, now);
            }
            Event::SubAck { pkid, granted } => {
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
                    let p = &message.publish;
                    self.responder
                        .handle_message(message.id, &p.topic, &p.payload, now);
                }
            }
            Event::Delivered(token) => self.reply_done(token, session, now),
            Event::Rejected(token, reason) => {
                tracing::error!("the broker did not accept a reply: {reason}; counted as failed");
                self.rejected += 1;
                self.reply_done(token, session, now);
            }
            Event::BrokerDisconnect {
                reason,
                reason_string,
            } => tracing::warn!(
                "broker sent DISCONNECT (reason code 0x{reason:02x}{})",
                reason_string.map_or(String::new(), |s| format!(": {s}"))
            ),
            Event::Refused(_) | Event::Purged => {}
        }
        self.run_actions(session, now);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        [self.responder.poll_timeout(), self.stop_deadline]
            .into_iter()
            .flatten()
            .min()
    }

    fn handle_timeout(&mut self, session: &mut Session, now: Instant) {
        if let Some(deadline) = self.stop_deadline
            && now >= deadline
        {
            tracing::warn!(
                "{} replies still unacknowledged after {:?}; disconnecting anyway",
                self.replies.len(),
                self.drain_timeout
            );
            self.disconnect(session, now);
            return;
        }
        if self.responder.poll_timeout().is_some_and(|t| now >= t) {
            self.responder.handle_timeout(now);
        }
        self.run_actions(session, now);
    }

    fn handle_shutdown(&mut self, session: &mut Session, now: Instant) {
        self.stopping = true;
        if self.replies.is_empty() {
            tracing::info!("stopping: nothing in flight; disconnecting");
            self.disconnect(session, now);
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
}
