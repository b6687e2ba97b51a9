//! The peer side of the protocol against a real broker: the [`Examiner`] state machine on an
//! MQTT [`Session`], pumped by the same driver as the daemon. Used by the integration tests
//! now, and by the `examine` and `demo` subcommands.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::driver::{self, App, End};
use crate::mqtt::packet::Publish;
use crate::mqtt::session::{Event, Session, SessionConfig};
use crate::mqtt::{Protocol, QoS};
use crate::protocol::examiner::{Action, Examiner, ExaminerSettings, Phase, Report};
use crate::transport::Endpoint;

/// How the examiner connects.
#[derive(Debug, Clone)]
pub struct PeerConnection {
    /// MQTT version.
    pub protocol: Protocol,
    /// Client identifier.
    pub client_id: String,
    /// User name.
    pub username: Option<String>,
    /// Password.
    pub password: Option<crate::config::Secret>,
}

/// A message sent to the responder besides the commands (hostile payloads, stray topics),
/// published when the commands start, ahead of the first one.
#[derive(Debug, Clone)]
pub struct Noise {
    /// Topic; `None`: the command topic.
    pub topic: Option<String>,
    /// Payload.
    pub payload: Bytes,
}

/// Why an examination could not run to its report.
#[derive(Debug, thiserror::Error)]
pub enum ExamineError {
    /// The settings are inconsistent.
    #[error("invalid examiner settings: {0}")]
    Settings(String),
    /// The broker could not be reached or dropped us.
    #[error("{0}")]
    Connection(String),
}

/// Between two connection attempts after the examiner lost its connection: short and
/// fixed, since the examiner is a test tool and must come back quickly after a broker
/// restart.
const RETRY_DELAY: Duration = Duration::from_millis(100);

/// Without any connection for this long, the examination gives up.
const GIVE_UP_AFTER: Duration = Duration::from_secs(30);

/// What a run can do besides the settings.
#[derive(Debug, Default)]
pub struct RunOptions {
    /// Extra messages sent ahead of the first command.
    pub noise: Vec<Noise>,
    /// Fires once the examiner listens for logins.
    pub ready: Option<oneshot::Sender<()>>,
    /// Kept up to date with the number of commands answered so far.
    pub progress: Option<Arc<AtomicUsize>>,
}

/// Runs one examination: connect, wait for a login, hand out the UUID, send the commands,
/// check the replies, send the completion message, disconnect. `ready` fires once the
/// examiner listens for logins.
pub async fn run(
    endpoint: &Endpoint,
    connection: PeerConnection,
    settings: ExaminerSettings,
    noise: Vec<Noise>,
    ready: Option<oneshot::Sender<()>>,
) -> Result<Report, ExamineError> {
    let options = RunOptions {
        noise,
        ready,
        progress: None,
    };
    run_with(endpoint, connection, settings, options).await
}

/// [`run`] with every option. A lost connection is resumed (the session continues, so
/// nothing in flight is lost) after a fixed 100 ms; each loss is counted in the report.
pub async fn run_with(
    endpoint: &Endpoint,
    connection: PeerConnection,
    settings: ExaminerSettings,
    options: RunOptions,
) -> Result<Report, ExamineError> {
    let now = Instant::now();
    let qos = settings.qos;
    let examiner =
        Examiner::new(settings, now).map_err(|e| ExamineError::Settings(e.to_string()))?;
    let mut session = Session::new(
        SessionConfig {
            protocol: connection.protocol,
            client_id: connection.client_id,
            username: connection.username,
            password: connection.password,
            keep_alive: Duration::from_secs(30),
            max_inflight: 20,
            max_incoming_packet: 1 << 20,
            session_expiry: 600,
            will: None,
            manual_acks: false,
            clean_first: true,
        },
        now,
    );
    let mut app = ExaminerApp {
        examiner,
        qos,
        noise: options.noise,
        ready: options.ready,
        progress: options.progress,
        subscriptions: HashMap::new(),
        finished: false,
        disconnect_sent: false,
    };
    let never = CancellationToken::new();
    let mut offline_since: Option<Instant> = None;
    // Bounded by GIVE_UP_AFTER while offline; each connected stretch ends the run or counts
    // a loss, and the examiner's own reply timeout bounds the run.
    loop {
        let failure = match endpoint.open().await {
            Err(e) => e.to_string(),
            Ok(stream) => {
                let end = driver::run_connection(
                    stream,
                    &mut session,
                    &mut app,
                    Duration::from_secs(10),
                    &never,
                )
                .await;
                match end {
                    End::Disconnected => return Ok(app.examiner.report()),
                    End::Purged => continue,
                    End::Refused(code) => {
                        return Err(ExamineError::Connection(format!(
                            "{} refused the examiner's connection: {code:?}",
                            endpoint.addr()
                        )));
                    }
                    End::Lost { error, up_for, .. } => {
                        if up_for.is_some() {
                            offline_since = None;
                            app.examiner.handle_disconnected(Instant::now());
                            tracing::warn!(
                                "examiner lost its connection to {}: {error}; resuming",
                                endpoint.addr()
                            );
                        }
                        error
                    }
                }
            }
        };
        let since = *offline_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= GIVE_UP_AFTER {
            return Err(ExamineError::Connection(format!(
                "examiner could not reach {} for {GIVE_UP_AFTER:?}: {failure}",
                endpoint.addr()
            )));
        }
        tokio::time::sleep(RETRY_DELAY).await;
    }
}

struct ExaminerApp {
    examiner: Examiner,
    qos: QoS,
    noise: Vec<Noise>,
    ready: Option<oneshot::Sender<()>>,
    progress: Option<Arc<AtomicUsize>>,
    /// SUBSCRIBE packet id → filter.
    subscriptions: HashMap<u16, String>,
    finished: bool,
    disconnect_sent: bool,
}

impl ExaminerApp {
    fn run_actions(&mut self, session: &mut Session, now: Instant) {
        // Noise goes out when the commands start (the responder is subscribed by then),
        // ahead of the first command.
        if self.examiner.phase() == Phase::Sending && !self.noise.is_empty() {
            self.send_noise(session, now);
        }
        while let Some(action) = self.examiner.poll_action() {
            match action {
                Action::Subscribe { topic, qos } => {
                    if let Some(pkid) = session.subscribe(vec![(topic.clone(), qos)], now) {
                        self.subscriptions.insert(pkid, topic);
                    }
                }
                Action::Publish {
                    topic,
                    payload,
                    qos,
                } => {
                    session.publish(publish(topic, payload, qos), now);
                }
                Action::Finished => self.finished = true,
            }
        }
        if self.finished && !self.disconnect_sent && session.outstanding() == 0 {
            session.disconnect(now);
            self.disconnect_sent = true;
        }
    }

    fn send_noise(&mut self, session: &mut Session, now: Instant) {
        let Some(command_topic) = self.examiner.command_topic().map(str::to_owned) else {
            return;
        };
        for noise in std::mem::take(&mut self.noise) {
            let topic = noise.topic.unwrap_or_else(|| command_topic.clone());
            session.publish(publish(topic, noise.payload, self.qos), now);
        }
    }
}

fn publish(topic: String, payload: Bytes, qos: QoS) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        pkid: 0,
        topic,
        payload,
        response_topic: None,
        correlation_data: None,
    }
}

impl App for ExaminerApp {
    fn handle_event(&mut self, event: Event, session: &mut Session, now: Instant) {
        match event {
            Event::Connected {
                session_present,
                caps,
            } => self
                .examiner
                .handle_connected(session_present, caps.max_qos, now),
            Event::SubAck { pkid, granted } => {
                if let Some(topic) = self.subscriptions.remove(&pkid) {
                    let granted = granted.first().copied().flatten();
                    self.examiner.handle_subscribed(&topic, granted, now);
                    if self.examiner.phase() == Phase::WaitingForLogin
                        && let Some(ready) = self.ready.take()
                    {
                        let _ = ready.send(());
                    }
                }
            }
            Event::Message(m) => {
                let p = &m.publish;
                self.examiner
                    .handle_message(&p.topic, &p.payload, p.qos, now);
            }
            Event::Rejected(_, reason) => {
                tracing::warn!("the broker did not accept an examiner publish: {reason}")
            }
            Event::Delivered(_)
            | Event::BrokerDisconnect { .. }
            | Event::Refused(_)
            | Event::Purged => {}
        }
        self.run_actions(session, now);
        if let Some(progress) = &self.progress {
            progress.store(self.examiner.answered(), Ordering::Relaxed);
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.examiner.poll_timeout()
    }

    fn handle_timeout(&mut self, session: &mut Session, now: Instant) {
        if self.examiner.poll_timeout().is_some_and(|t| now >= t) {
            self.examiner.handle_timeout(now);
        }
        self.run_actions(session, now);
    }

    fn handle_shutdown(&mut self, _session: &mut Session, _now: Instant) {}

    fn wants_disconnect(&self) -> bool {
        self.disconnect_sent
    }
}
