//! The peer side of the protocol against a real broker: one or more [`Examiner`]s (one per
//! device that logs in) on one MQTT [`Session`], pumped by the same driver as the daemon.
//! The one runner of the examiner's actions: used by `examine`, `demo`, the tests and the
//! round-trip benchmark (whose floor adds a [`Companion`] on the same connection).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::Broker;
use crate::driver::{self, App, End};
use crate::mqtt::packet::Publish;
use crate::mqtt::session::{Event, Session, SessionConfig};
use crate::protocol::examiner::{
    Action, Examiner, ExaminerSettings, Note, Phase, Report, SUBSCRIBE_ATTEMPTS,
};
use crate::topic::Vars;
use crate::transport::Endpoint;
use crate::vocabulary::QoS;

/// Between two connection attempts after the examiner lost its connection: short and
/// fixed, since the examiner is a test tool and must come back quickly after a broker
/// restart.
const RETRY_DELAY: Duration = Duration::from_millis(100);

/// How long the examiner waits for a CONNACK, or for the SUBACK of its login subscription,
/// before it tries again.
pub const CONNACK_TIMEOUT: Duration = Duration::from_secs(10);

/// Without any connection for this long, the examination gives up.
const GIVE_UP_AFTER: Duration = Duration::from_secs(30);

/// A message sent to the responder besides the commands (hostile payloads, stray topics),
/// published when the commands start, ahead of the first one.
#[derive(Debug, Clone)]
pub struct Noise {
    /// Topic; `None`: the command topic.
    pub topic: Option<String>,
    /// Payload.
    pub payload: Bytes,
}

/// What to examine.
#[derive(Debug, Clone)]
pub struct Examination {
    /// The examiner's own broker settings: its protocol, client id, credentials and
    /// in-flight cap (see [`peer_session_config`]); where it connects is the endpoint's.
    pub connection: Broker,
    /// Settings for every device's examiner (`seed` is offset per device).
    pub settings: ExaminerSettings,
    /// How many devices to serve (each logs in with its own user ID).
    pub logins: usize,
    /// Extra messages for every device.
    pub noise: Vec<Noise>,
    /// Give up after this long, reporting what is missing.
    pub timeout: Duration,
    /// Kept up to date with the number of commands answered so far (all devices).
    pub progress: Option<Arc<AtomicUsize>>,
    /// Notified to send the commands that `settings.pause_after` holds back.
    pub gate: Option<Arc<Notify>>,
}

/// What a single-device run can do besides the settings.
#[derive(Debug, Default)]
pub struct RunOptions {
    /// Extra messages sent ahead of the first command.
    pub noise: Vec<Noise>,
    /// Fires once the examiner listens for logins.
    pub ready: Option<oneshot::Sender<()>>,
    /// Kept up to date with the number of commands answered so far.
    pub progress: Option<Arc<AtomicUsize>>,
    /// Hold commands back until a test opens the gate.
    pub gate: Option<CommandGate>,
}

/// Commands held back for a test: the first `after` go out, the rest once `open` is
/// notified (once; a notification before the pause is kept), so that what the test does in
/// between happens mid-run by construction, whatever the machine's speed.
#[derive(Debug)]
pub struct CommandGate {
    /// Commands sent before the gate.
    pub after: usize,
    /// Notify once to send the rest.
    pub open: Arc<Notify>,
}

/// The result of an examination.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// One report per device that logged in, in login order.
    pub reports: Vec<Report>,
    /// Devices that never logged in.
    pub missing_logins: usize,
    /// The examination hit its timeout.
    pub timed_out: bool,
    /// Times the examiner had to reconnect to the broker.
    pub reconnects: u32,
}

impl Outcome {
    /// Every expected device logged in and passed.
    pub fn passed(&self) -> bool {
        self.missing_logins == 0 && !self.timed_out && self.reports.iter().all(Report::passed)
    }

    /// What went wrong, one line each.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.missing_logins > 0 {
            problems.push(format!("{} device(s) never logged in", self.missing_logins));
        }
        if self.timed_out {
            problems.push("the examination timed out".to_owned());
        }
        for report in &self.reports {
            let who = report.user_id.as_deref().unwrap_or("?");
            problems.extend(report.problems().into_iter().map(|p| format!("{who}: {p}")));
        }
        problems
    }
}

/// Why an examination could not run.
#[derive(Debug, thiserror::Error)]
pub enum ExamineError {
    /// The settings are inconsistent.
    #[error("invalid examiner settings: {0}")]
    Settings(String),
    /// The broker could not be reached, refused us, or kept dropping us.
    #[error("{0}")]
    Connection(String),
}

/// Runs one device's examination and returns its report (a timeout of 10 minutes; callers
/// bound it themselves).
pub async fn run(
    endpoint: &Endpoint,
    connection: Broker,
    settings: ExaminerSettings,
    noise: Vec<Noise>,
    ready: Option<oneshot::Sender<()>>,
) -> Result<Report, ExamineError> {
    let options = RunOptions {
        noise,
        ready,
        ..RunOptions::default()
    };
    run_with(endpoint, connection, settings, options).await
}

/// [`run`] with every option.
pub async fn run_with(
    endpoint: &Endpoint,
    connection: Broker,
    settings: ExaminerSettings,
    options: RunOptions,
) -> Result<Report, ExamineError> {
    let mut settings = settings;
    settings.pause_after = options.gate.as_ref().map(|g| g.after);
    let exam = Examination {
        connection,
        settings,
        logins: 1,
        noise: options.noise,
        timeout: Duration::from_secs(600),
        progress: options.progress,
        gate: options.gate.map(|g| g.open),
    };
    let outcome = examine(endpoint, exam, &mut |_, _| {}, options.ready).await?;
    outcome
        .reports
        .into_iter()
        .next()
        .ok_or_else(|| ExamineError::Connection("no device logged in".to_owned()))
}

/// Runs an examination: connect, serve `logins` devices (UUID, commands, replies checked,
/// completion), disconnect. `observe` sees every note with the device's index; `ready`
/// fires once the examiner listens for logins.
pub async fn examine(
    endpoint: &Endpoint,
    exam: Examination,
    observe: &mut dyn FnMut(usize, &Note),
    ready: Option<oneshot::Sender<()>>,
) -> Result<Outcome, ExamineError> {
    run_examination(endpoint, exam, observe, ready, None).await
}

/// A part played beside the examiners on their own connection: the round-trip benchmark's
/// floor answers its own commands this way. It sees each session event before the
/// examiners do.
pub trait Companion {
    /// The examiner listens for logins (its login subscription was acknowledged the first
    /// time): the moment a responder would be started.
    fn start(&mut self, session: &mut Session, now: Instant);
    /// Takes `event` if it is the companion's (the examiners then never see it); returns
    /// whether it was.
    fn handle_event(&mut self, event: &Event, session: &mut Session, now: Instant) -> bool;
    /// Asked once every device is done: whether the companion is through with what the
    /// examiners sent, `completion_sent` saying whether that included the completion
    /// message. The connection closes once it is and nothing is in flight.
    fn is_done(&self, completion_sent: bool) -> bool;
}

/// [`examine`] with `companion` on the examiner's connection, started when `ready` would
/// fire. A timed-out examination then closes at once rather than once nothing is in flight:
/// while the examiners still send, the companion's own publishes may never let that happen.
pub async fn examine_with_companion(
    endpoint: &Endpoint,
    exam: Examination,
    observe: &mut dyn FnMut(usize, &Note),
    companion: &mut dyn Companion,
) -> Result<Outcome, ExamineError> {
    run_examination(endpoint, exam, observe, None, Some(companion)).await
}

async fn run_examination<'a>(
    endpoint: &Endpoint,
    exam: Examination,
    observe: &'a mut dyn FnMut(usize, &Note),
    ready: Option<oneshot::Sender<()>>,
    companion: Option<&'a mut dyn Companion>,
) -> Result<Outcome, ExamineError> {
    let now = Instant::now();
    // Check the settings up front (a device's examiner is only created at its login).
    Examiner::new(exam.settings.clone(), now).map_err(|e| ExamineError::Settings(e.to_string()))?;
    let login_topic = exam
        .settings
        .login_topic
        .render_checked(&Vars {
            user_id: exam.settings.user_id.as_deref().unwrap_or_default(),
            ..Vars::default()
        })
        .map_err(|e| ExamineError::Settings(format!("login topic {e}")))?;
    let mut session = Session::new(peer_session_config(&exam.connection), now);
    let mut app = Fleet {
        deadline: now + exam.timeout,
        exam,
        login_topic,
        examiners: Vec::new(),
        noise_sent: Vec::new(),
        by_user: HashMap::new(),
        broker_qos: QoS::ExactlyOnce,
        login_granted: None,
        login_subscribing: None,
        failure: None,
        ready,
        listening: false,
        observe,
        companion,
        timed_out: false,
        disconnect_sent: false,
    };
    let never = CancellationToken::new();
    let gate = app.exam.gate.clone();
    let mut reconnects = 0;
    let mut offline_since: Option<Instant> = None;
    // Bounded: each connected stretch ends the run or counts a loss (and the examination's
    // timeout bounds those); offline stretches are bounded by GIVE_UP_AFTER.
    loop {
        let end = driver::open_and_run(
            endpoint,
            &mut session,
            &mut app,
            CONNACK_TIMEOUT,
            &never,
            gate.as_deref(),
        )
        .await;
        let failure = match end {
            End::Disconnected => match app.failure.take() {
                Some(failure) => return Err(ExamineError::Connection(failure)),
                None => break,
            },
            // open_and_run carries a purge through to the real connection.
            End::Purged => "the old session could not be cleared".to_owned(),
            End::Refused(code) => {
                return Err(ExamineError::Connection(format!(
                    "{} refused the examiner's connection: {code:?}",
                    endpoint.addr()
                )));
            }
            End::Lost { error, up_for, .. } => {
                if up_for.is_some() {
                    offline_since = None;
                    reconnects += 1;
                    app.login_subscribing = None;
                    for examiner in &mut app.examiners {
                        examiner.handle_disconnected(Instant::now());
                    }
                    tracing::warn!(
                        "examiner lost its connection to {}: {error}; resuming",
                        endpoint.addr()
                    );
                }
                error
            }
        };
        let since = *offline_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= GIVE_UP_AFTER || Instant::now() >= app.deadline {
            return Err(ExamineError::Connection(format!(
                "the examiner could not reach {} for {:?}: {failure}",
                endpoint.addr(),
                since.elapsed()
            )));
        }
        tokio::time::sleep(RETRY_DELAY).await;
    }
    Ok(Outcome {
        missing_logins: app.exam.logins.saturating_sub(app.examiners.len()),
        reports: app.examiners.iter().map(Examiner::report).collect(),
        timed_out: app.timed_out,
        reconnects,
    })
}

/// The session settings of the examiner's connection: `broker`'s (see
/// [`Broker::session_config`]: acknowledgements on arrival, a clean start) with a
/// keep-alive of 30 s whatever the broker settings say, packets of up to 1 MiB, and a
/// broker-side session kept for 10 minutes. Public so that the round-trip benchmark's
/// trivial responder connects exactly as the examiner does.
pub fn peer_session_config(broker: &Broker) -> SessionConfig {
    SessionConfig {
        keep_alive: Duration::from_secs(30),
        max_incoming_packet: 1 << 20,
        session_expiry: 600,
        ..broker.session_config()
    }
}

/// Several examiners on one connection: the login subscription is shared, and each
/// device's examiner is created when its login arrives.
struct Fleet<'a> {
    exam: Examination,
    login_topic: String,
    examiners: Vec<Examiner>,
    /// Per device: its noise went out.
    noise_sent: Vec<bool>,
    by_user: HashMap<String, usize>,
    broker_qos: QoS,
    /// QoS granted on the shared login subscription, passed on to every examiner: a 3.1.1
    /// broker announces its maximum QoS only this way.
    login_granted: Option<QoS>,
    /// The login SUBSCRIBE awaiting its SUBACK: until when, and how many were sent.
    login_subscribing: Option<(Instant, u32)>,
    /// Why the examination cannot go on (it disconnects and returns this).
    failure: Option<String>,
    ready: Option<oneshot::Sender<()>>,
    /// The login subscription was acknowledged once: `ready` fired, the companion started.
    listening: bool,
    observe: &'a mut dyn FnMut(usize, &Note),
    companion: Option<&'a mut dyn Companion>,
    deadline: Instant,
    timed_out: bool,
    disconnect_sent: bool,
}

impl Fleet<'_> {
    fn subscribe(&mut self, session: &mut Session, filter: String) {
        let now = Instant::now();
        if filter == self.login_topic {
            let attempts = self.login_subscribing.map_or(0, |(_, n)| n) + 1;
            self.login_subscribing = Some((now + CONNACK_TIMEOUT, attempts));
        }
        let qos = self.exam.settings.qos.min(self.broker_qos);
        session.subscribe(vec![(filter, qos)], Instant::now());
    }

    fn login(&mut self, payload: &[u8], now: Instant) -> Option<usize> {
        let user_id = std::str::from_utf8(payload).ok()?;
        if let Some(&index) = self.by_user.get(user_id) {
            return Some(index);
        }
        if self.examiners.len() >= self.exam.logins
            || self
                .exam
                .settings
                .user_id
                .as_deref()
                .is_some_and(|u| u != user_id)
        {
            return None;
        }
        let index = self.examiners.len();
        let mut settings = self.exam.settings.clone();
        settings.user_id = Some(user_id.to_owned());
        settings.seed = settings.seed.wrapping_add(index as u64);
        let mut examiner = Examiner::new(settings, now).ok()?;
        examiner.handle_connected(false, self.broker_qos, now);
        if let Some(granted) = self.login_granted {
            examiner.handle_subscribed(&self.login_topic, Some(granted), now);
        }
        self.by_user.insert(user_id.to_owned(), index);
        self.examiners.push(examiner);
        self.noise_sent.push(false);
        Some(index)
    }

    /// Carries out what the examiners asked for, hands their notes to the observer, and
    /// disconnects once every device is done and nothing is in flight.
    fn run_actions(&mut self, session: &mut Session, now: Instant) {
        for index in 0..self.examiners.len() {
            // Noise goes out when the commands start (the responder is subscribed by
            // then), ahead of the first command.
            if self.examiners[index].phase() == Phase::Sending && !self.noise_sent[index] {
                self.noise_sent[index] = true;
                self.send_noise(index, session, now);
            }
            while let Some(action) = self.examiners[index].poll_action() {
                match action {
                    // The login filter is shared and already subscribed.
                    Action::Subscribe { topic, .. } if topic == self.login_topic => {}
                    Action::Subscribe { topic, .. } => self.subscribe(session, topic),
                    Action::Publish {
                        topic,
                        payload,
                        qos,
                        response_topic,
                        correlation_data,
                    } => {
                        let message = Publish {
                            response_topic,
                            correlation_data,
                            ..publish(topic, payload, qos)
                        };
                        session.publish(message, now);
                    }
                    Action::Finished => {}
                }
            }
            while let Some(note) = self.examiners[index].poll_note() {
                (self.observe)(index, &note);
            }
        }
        if let Some(progress) = &self.exam.progress {
            let answered = self.examiners.iter().map(Examiner::answered).sum();
            progress.store(answered, Ordering::Relaxed);
        }
        let all_done = self.examiners.len() == self.exam.logins
            && self.examiners.iter().all(|e| e.phase() == Phase::Finished)
            && self.companion.as_ref().is_none_or(|c| {
                c.is_done(self.examiners.iter().any(|e| e.report().completion_sent))
            });
        let settled = session.outstanding() == 0;
        // With a companion a timed-out run closes at once (see `examine_with_companion`).
        let timed_out = self.timed_out && (settled || self.companion.is_some());
        if ((all_done && settled) || timed_out) && !self.disconnect_sent {
            session.disconnect(now);
            self.disconnect_sent = true;
        }
    }

    /// No SUBACK for the login subscription within [`CONNACK_TIMEOUT`]: subscribe again, or
    /// after [`SUBSCRIBE_ATTEMPTS`] end the examination saying what never came.
    fn login_suback_overdue(&mut self, session: &mut Session, attempts: u32, now: Instant) {
        if attempts >= SUBSCRIBE_ATTEMPTS {
            self.login_subscribing = None;
            self.failure = Some(format!(
                "the broker never acknowledged the examiner's subscription to the login topic \
                 {}: no SUBACK within {CONNACK_TIMEOUT:?}, {attempts} times",
                self.login_topic
            ));
            session.disconnect(now);
            self.disconnect_sent = true;
            return;
        }
        tracing::warn!(
            "no SUBACK for the login subscription to {} within {CONNACK_TIMEOUT:?}; \
             subscribing again (attempt {} of {SUBSCRIBE_ATTEMPTS})",
            self.login_topic,
            attempts + 1
        );
        self.subscribe(session, self.login_topic.clone());
    }

    fn send_noise(&mut self, index: usize, session: &mut Session, now: Instant) {
        let Some(command_topic) = self.examiners[index].command_topic().map(str::to_owned) else {
            return;
        };
        for noise in self.exam.noise.clone() {
            let topic = noise.topic.unwrap_or_else(|| command_topic.clone());
            let qos = self.exam.settings.qos.min(self.broker_qos);
            let qos = self.login_granted.map_or(qos, |granted| qos.min(granted));
            session.publish(publish(topic, noise.payload, qos), now);
        }
    }
}

/// A plain publish (not retained, no MQTT 5 properties) for the session to send.
pub fn publish(topic: String, payload: Bytes, qos: QoS) -> Publish {
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

impl App for Fleet<'_> {
    fn handle_event(&mut self, event: Event, session: &mut Session, now: Instant) {
        if let Some(companion) = &mut self.companion
            && companion.handle_event(&event, session, now)
        {
            self.run_actions(session, now);
            return;
        }
        match event {
            Event::Connected {
                session_present,
                caps,
            } => {
                self.broker_qos = caps.max_qos;
                self.subscribe(session, self.login_topic.clone());
                for examiner in &mut self.examiners {
                    examiner.handle_connected(session_present, caps.max_qos, now);
                }
            }
            Event::SubAck { filters, .. } => {
                for (topic, granted) in filters {
                    if topic == self.login_topic {
                        self.login_subscribing = None;
                        self.login_granted = granted;
                        for examiner in &mut self.examiners {
                            examiner.handle_subscribed(&topic, granted, now);
                        }
                        if !std::mem::replace(&mut self.listening, true) {
                            if let Some(ready) = self.ready.take() {
                                let _ = ready.send(());
                            }
                            if let Some(companion) = &mut self.companion {
                                companion.start(session, now);
                            }
                        }
                    } else if let Some(owner) =
                        // Each device has filters of its own (rendered with its user ID and UUID).
                        self.examiners.iter_mut().find(|e| e.subscribes_to(&topic))
                    {
                        owner.handle_subscribed(&topic, granted, now);
                    }
                }
            }
            Event::Message(m) => {
                let p = &m.publish;
                let target = if p.topic == self.login_topic {
                    self.login(&p.payload, now)
                } else {
                    self.examiners
                        .iter()
                        .position(|e| e.handles_topic(&p.topic))
                };
                match target {
                    Some(index) => self.examiners[index].handle_message_correlated(
                        &p.topic,
                        &p.payload,
                        p.qos,
                        p.correlation_data.as_deref(),
                        now,
                    ),
                    None => tracing::debug!(topic = %p.topic, "message for no device ignored"),
                }
            }
            Event::Rejected(_, reason) => {
                tracing::warn!("the broker did not accept an examiner publish: {reason}")
            }
            Event::Oversized { topic, size } => {
                tracing::warn!(%topic, "skipped a {size}-byte message: too large to examine");
            }
            Event::Delivered(_)
            | Event::BrokerDisconnect { .. }
            | Event::Refused(_)
            | Event::Purged => {}
        }
        self.run_actions(session, now);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let deadline = (!self.timed_out).then_some(self.deadline);
        let login_suback = self.login_subscribing.map(|(until, _)| until);
        self.examiners
            .iter()
            .filter_map(Examiner::poll_timeout)
            .chain(deadline)
            .chain(login_suback)
            .min()
    }

    fn handle_timeout(&mut self, session: &mut Session, now: Instant) {
        if now >= self.deadline && !self.timed_out {
            tracing::warn!("examination timed out");
            self.timed_out = true;
        }
        if let Some((until, attempts)) = self.login_subscribing
            && now >= until
        {
            self.login_suback_overdue(session, attempts, now);
        }
        for examiner in &mut self.examiners {
            if examiner.poll_timeout().is_some_and(|t| now >= t) {
                examiner.handle_timeout(now);
            }
        }
        self.run_actions(session, now);
    }

    fn handle_shutdown(&mut self, _session: &mut Session, _now: Instant) {}

    fn handle_wake(&mut self, session: &mut Session, now: Instant) {
        // The gate opened.
        for examiner in &mut self.examiners {
            examiner.resume(now);
        }
        self.run_actions(session, now);
    }

    fn wants_disconnect(&self) -> bool {
        self.disconnect_sent
    }
}
