//! The peer side of the protocol: wait for a login, hand out a UUID, send random commands,
//! check every reply, and send the completion message. The mirror image of
//! [`super::responder::Responder`], used by `examine`, `demo` and the tests.
//!
//! Like the responder it is sans-IO: feed it events through `handle_*`, drain
//! [`Examiner::poll_action`], sleep until [`Examiner::poll_timeout`]. Publishes are handed to
//! the MQTT session whether or not it is connected at the moment (at QoS ≥ 1 the session
//! queues them).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{debug, info, warn};

use crate::config::{ReplyTable, Session};
use crate::mqtt::QoS;
use crate::topic::{Template, TopicError, Var, Vars, validate_level};

/// What the examiner is told to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExaminerSettings {
    /// Where logins arrive (`{user_id}` allowed; then `user_id` must be set).
    pub login_topic: Template,
    /// Where the UUID is published (`{user_id}` allowed: the user ID from the login).
    pub uuid_topic: Template,
    /// Where commands go (`{user_id}`, `{uuid}` allowed).
    pub command_topic: Template,
    /// Where replies arrive (`{user_id}`, `{uuid}`, `{command}`; `{command}` is required).
    /// When `{command}` is a whole topic level, one subscription with `+` in its place covers
    /// every reply; otherwise the examiner subscribes once per command in the table.
    pub reply_topic: Template,
    /// The user ID to expect. Required when `login_topic` uses `{user_id}`; when set, logins
    /// from anyone else are ignored. `None`: the first valid login is served.
    pub user_id: Option<String>,
    /// The payload that ends the run.
    pub completion_message: String,
    /// QoS for subscriptions and publishes, and the QoS replies are expected at (capped by
    /// the broker's maximum and the QoS granted on the reply subscription).
    pub qos: QoS,
    /// How many commands to send.
    pub commands: usize,
    /// From publishing the UUID to sending the first command.
    pub delay: Duration,
    /// At most this many commands without a reply at once.
    pub window: usize,
    /// No reply for this long while replies are missing → give up and report.
    pub reply_timeout: Duration,
    /// Commands to choose from and the replies to expect.
    pub replies: ReplyTable,
    /// Seed of the PRNG that picks commands (and the UUID unless `uuid` is set).
    pub seed: u64,
    /// The UUID to hand out; `None`: a random UUID-v4-looking string.
    pub uuid: Option<String>,
}

impl Default for ExaminerSettings {
    /// SPEC §3's topics and reply table, SPEC §2's 3 s delay, a window of 20 (mosquitto's
    /// default queue), 20 commands, a 10 s reply timeout and seed 0 (callers that want a
    /// different run each time pass their own seed).
    fn default() -> ExaminerSettings {
        let all = [Var::UserId, Var::Uuid, Var::Command];
        let template = |source: &str, allowed: &[Var]| {
            Template::parse(source, allowed).expect("the default templates are valid")
        };
        ExaminerSettings {
            login_topic: template("login", &all[..1]),
            uuid_topic: template("{user_id}/UUID", &all[..1]),
            command_topic: template("{uuid}", &all[..2]),
            reply_topic: template("{uuid}/{command}", &all),
            user_id: None,
            completion_message: "Well done my IoT!".to_owned(),
            qos: QoS::ExactlyOnce,
            commands: 20,
            delay: Duration::from_secs(3),
            window: 20,
            reply_timeout: Duration::from_secs(10),
            replies: ReplyTable::seed(),
            seed: 0,
            uuid: None,
        }
    }
}

impl ExaminerSettings {
    /// Settings that mirror a responder's configuration (topics, completion message, QoS,
    /// reply table, user ID); the rest as in [`Default`].
    pub fn from_session(session: &Session, replies: &ReplyTable) -> ExaminerSettings {
        ExaminerSettings {
            login_topic: session.login_topic.clone(),
            uuid_topic: session.uuid_topic.clone(),
            command_topic: session.command_topic.clone(),
            reply_topic: session.reply_topic.clone(),
            user_id: Some(session.user_id.clone()),
            completion_message: session.completion_message.clone(),
            qos: session.qos,
            replies: replies.clone(),
            ..ExaminerSettings::default()
        }
    }
}

/// Why settings were rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    /// `login_topic` uses `{user_id}` but no user ID was given.
    #[error("login topic {0} uses {{user_id}}: the user ID to expect is needed")]
    MissingUserId(String),
    /// The user ID is not a single topic level.
    #[error("user ID {0:?} {1}")]
    InvalidUserId(String, TopicError),
    /// The UUID override is not a single topic level.
    #[error("UUID {0:?} {1}")]
    InvalidUuid(String, TopicError),
    /// A command in the table is not a single topic level.
    #[error("command {0:?} {1}")]
    InvalidCommand(String, TopicError),
    /// Replies could not be told apart.
    #[error("reply topic {0} must contain {{command}}")]
    ReplyTopicWithoutCommand(String),
    /// Commands are to be sent but there is nothing to choose from.
    #[error("the reply table is empty")]
    NoCommands,
    /// A window of 0 would never send anything.
    #[error("the window must be at least 1")]
    ZeroWindow,
}

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Subscribe to `topic` (a filter, possibly with `+`); report with `handle_subscribed`.
    Subscribe {
        /// Topic filter.
        topic: String,
        /// Requested QoS.
        qos: QoS,
    },
    /// Publish a message.
    Publish {
        /// Topic name.
        topic: String,
        /// Payload.
        payload: Bytes,
        /// QoS.
        qos: QoS,
    },
    /// The run is over (completion sent, or given up): wait for outstanding publishes to be
    /// acknowledged, disconnect, and read [`Examiner::report`].
    Finished,
}

/// The phase the examiner is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for a login.
    WaitingForLogin,
    /// Login received; subscribing to the reply topics before handing out the UUID.
    SubscribingReplies,
    /// UUID published; waiting `delay` before the first command.
    Delaying,
    /// Sending commands and checking replies.
    Sending,
    /// Done.
    Finished,
}

/// The deadlines the examiner keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    /// `delay` after the UUID: start sending.
    Start,
    /// No progress for `reply_timeout`: give up.
    ReplyTimeout,
}

impl Timer {
    const ALL: [Timer; 2] = [Timer::Start, Timer::ReplyTimeout];
}

/// Everything rendered once the login (and so the user ID) is known.
#[derive(Debug)]
struct Rendered {
    uuid_topic: String,
    command_topic: String,
    /// The filters to subscribe to for replies.
    reply_filters: Vec<String>,
    /// Reply topic → index into the table.
    reply_topics: HashMap<String, usize>,
}

/// The examiner state machine.
#[derive(Debug)]
pub struct Examiner {
    settings: ExaminerSettings,
    uuid: String,
    uuid_payload: Bytes,
    /// Rendered at construction when it does not depend on the user ID.
    login_topic: String,
    /// Command payloads and expected replies, in table order.
    commands: Vec<(Bytes, Bytes)>,
    rng: SplitMix64,

    phase: Phase,
    /// The user served, once a login arrived.
    user_id: Option<String>,
    rendered: Option<Rendered>,
    /// The broker's cap from the latest CONNACK.
    broker_qos: QoS,
    /// The lowest QoS granted on a reply subscription.
    reply_qos: QoS,
    /// Subscriptions whose SUBACK is due on this connection.
    pending_subs: Vec<String>,
    /// Send times of commands not yet answered, FIFO per command (latency per reply).
    outstanding: Vec<VecDeque<Instant>>,
    outstanding_total: usize,
    sent_total: usize,
    timers: [Option<Instant>; 2],
    actions: VecDeque<Action>,
    report: Report,
}

impl Examiner {
    /// An examiner for one run, not yet connected.
    pub fn new(settings: ExaminerSettings, now: Instant) -> Result<Examiner, SettingsError> {
        let _ = now;
        if let Some(user_id) = &settings.user_id {
            validate_level(user_id)
                .map_err(|e| SettingsError::InvalidUserId(user_id.clone(), e))?;
        } else if settings.login_topic.uses(Var::UserId) {
            return Err(SettingsError::MissingUserId(
                settings.login_topic.to_string(),
            ));
        }
        if !settings.reply_topic.uses(Var::Command) {
            return Err(SettingsError::ReplyTopicWithoutCommand(
                settings.reply_topic.to_string(),
            ));
        }
        if settings.window == 0 {
            return Err(SettingsError::ZeroWindow);
        }
        if settings.commands > 0 && settings.replies.0.is_empty() {
            return Err(SettingsError::NoCommands);
        }
        let mut commands = Vec::with_capacity(settings.replies.0.len());
        let mut rows = Vec::with_capacity(settings.replies.0.len());
        for (command, reply) in &settings.replies.0 {
            validate_level(command)
                .map_err(|e| SettingsError::InvalidCommand(command.clone(), e))?;
            commands.push((Bytes::from(command.clone()), Bytes::from(reply.clone())));
            rows.push(CommandReport::new(command));
        }
        let mut rng = SplitMix64(settings.seed);
        let uuid = match &settings.uuid {
            Some(uuid) => {
                validate_level(uuid).map_err(|e| SettingsError::InvalidUuid(uuid.clone(), e))?;
                uuid.clone()
            }
            None => random_uuid(&mut rng),
        };
        let login_topic = settings.login_topic.render(&Vars {
            user_id: settings.user_id.as_deref().unwrap_or_default(),
            ..Vars::default()
        });
        let report = Report {
            uuid: uuid.clone(),
            user_id: None,
            expected_qos: settings.qos,
            commands: rows,
            unexpected: 0,
            late: 0,
            timed_out: false,
            completion_sent: false,
            failure: None,
        };
        Ok(Examiner {
            uuid_payload: Bytes::from(uuid.clone()),
            uuid,
            login_topic,
            outstanding: vec![VecDeque::new(); commands.len()],
            commands,
            rng,
            phase: Phase::WaitingForLogin,
            user_id: None,
            rendered: None,
            broker_qos: QoS::ExactlyOnce,
            reply_qos: QoS::ExactlyOnce,
            pending_subs: Vec::new(),
            outstanding_total: 0,
            sent_total: 0,
            timers: [None; 2],
            actions: VecDeque::new(),
            report,
            settings,
        })
    }

    /// A CONNACK arrived; `max_qos` is the broker's cap. Without `session_present` every
    /// subscription the run needs is made again.
    pub fn handle_connected(&mut self, session_present: bool, max_qos: QoS, now: Instant) {
        let _ = now;
        self.broker_qos = max_qos;
        self.pending_subs.clear();
        if self.phase == Phase::Finished {
            return;
        }
        // A session may lack a subscription whose SUBACK never came; repeating it is safe.
        if !session_present || self.phase == Phase::WaitingForLogin {
            self.subscribe(self.login_topic.clone());
        }
        if !session_present || self.phase == Phase::SubscribingReplies {
            let filters = self
                .rendered
                .as_ref()
                .map(|r| r.reply_filters.clone())
                .unwrap_or_default();
            for filter in filters {
                self.subscribe(filter);
            }
        }
    }

    /// The connection was lost; subscriptions in progress are void.
    pub fn handle_disconnected(&mut self, now: Instant) {
        let _ = now;
        self.pending_subs.clear();
    }

    /// The SUBACK for `topic`: the granted QoS, or `None` when refused.
    pub fn handle_subscribed(&mut self, topic: &str, granted: Option<QoS>, now: Instant) {
        let Some(index) = self.pending_subs.iter().position(|t| t == topic) else {
            debug!(
                topic,
                "ignoring a SUBACK for a subscription not in progress"
            );
            return;
        };
        self.pending_subs.swap_remove(index);
        let Some(granted) = granted else {
            self.give_up(format!("the broker refused the subscription to {topic}"));
            return;
        };
        let is_reply_filter = self
            .rendered
            .as_ref()
            .is_some_and(|r| r.reply_filters.iter().any(|f| f == topic));
        if !is_reply_filter {
            return;
        }
        self.reply_qos = self.reply_qos.min(granted);
        let all_granted = !self.pending_subs.iter().any(|p| {
            self.rendered
                .as_ref()
                .is_some_and(|r| r.reply_filters.contains(p))
        });
        if self.phase == Phase::SubscribingReplies && all_granted {
            self.publish_uuid();
            self.timers[Timer::Start as usize] = Some(now + self.settings.delay);
            self.set_phase(Phase::Delaying);
        }
    }

    /// A message arrived, delivered at `qos`.
    pub fn handle_message(&mut self, topic: &str, payload: &[u8], qos: QoS, now: Instant) {
        if topic == self.login_topic {
            self.login(payload);
            return;
        }
        let command = self
            .rendered
            .as_ref()
            .and_then(|r| r.reply_topics.get(topic).copied());
        match command {
            Some(_) if self.phase == Phase::Finished => self.report.late += 1,
            Some(index) => self.reply(index, payload, qos, now),
            None => {
                self.report.unexpected += 1;
                debug!(topic, "message on an unexpected topic");
            }
        }
    }

    /// A deadline from `poll_timeout` passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        for timer in Timer::ALL {
            match self.timers[timer as usize] {
                Some(deadline) if deadline <= now => self.timers[timer as usize] = None,
                _ => continue,
            }
            match timer {
                Timer::Start => {
                    if self.phase == Phase::Delaying {
                        self.set_phase(Phase::Sending);
                        self.arm_reply_timeout(now);
                        self.pump(now);
                    }
                }
                Timer::ReplyTimeout => {
                    if self.phase == Phase::Sending {
                        warn!(
                            missing = self.outstanding_total,
                            "no reply within {:?}; giving up", self.settings.reply_timeout
                        );
                        self.report.timed_out = true;
                        self.complete();
                    }
                }
            }
        }
    }

    /// The earliest pending deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.iter().flatten().min().copied()
    }

    /// The next action, in order.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The UUID handed out (or to be handed out).
    pub fn uuid(&self) -> &str {
        &self.uuid
    }

    /// The results so far (final once [`Action::Finished`] was emitted).
    pub fn report(&self) -> Report {
        let mut report = self.report.clone();
        report.expected_qos = self.expected_qos();
        report
    }

    /// The QoS replies must arrive at.
    fn expected_qos(&self) -> QoS {
        self.settings.qos.min(self.broker_qos).min(self.reply_qos)
    }

    /// The QoS for our own publishes and subscriptions.
    fn qos(&self) -> QoS {
        self.settings.qos.min(self.broker_qos)
    }

    /// A message on the login topic.
    fn login(&mut self, payload: &[u8]) {
        let Some(user_id) = std::str::from_utf8(payload)
            .ok()
            .filter(|u| validate_level(u).is_ok())
        else {
            warn!(payload = ?String::from_utf8_lossy(payload), "ignoring an invalid login");
            return;
        };
        if let Some(expected) = self.user_id.as_ref().or(self.settings.user_id.as_ref()) {
            if expected != user_id {
                debug!(user_id, "ignoring a login from another user");
                return;
            }
        }
        match self.phase {
            Phase::WaitingForLogin => {}
            // The responder logged in again (it missed the UUID): the same UUID, again.
            Phase::Delaying | Phase::Sending => {
                info!(user_id, "login again; repeating the UUID");
                self.publish_uuid();
                return;
            }
            Phase::SubscribingReplies | Phase::Finished => return,
        }
        let rendered = match self.render(user_id) {
            Ok(rendered) => rendered,
            Err(why) => {
                self.give_up(why);
                return;
            }
        };
        info!(user_id, "login received");
        self.user_id = Some(user_id.to_owned());
        self.report.user_id = Some(user_id.to_owned());
        let filters = rendered.reply_filters.clone();
        self.rendered = Some(rendered);
        self.set_phase(Phase::SubscribingReplies);
        for filter in filters {
            self.subscribe(filter);
        }
    }

    /// Renders the topics of the run for `user_id`.
    fn render(&self, user_id: &str) -> Result<Rendered, String> {
        let vars = Vars {
            user_id,
            uuid: &self.uuid,
            command: "",
        };
        let uuid_topic = self
            .settings
            .uuid_topic
            .render_checked(&vars)
            .map_err(|e| format!("UUID topic {e}"))?;
        let command_topic = self
            .settings
            .command_topic
            .render_checked(&vars)
            .map_err(|e| format!("command topic {e}"))?;
        let mut reply_topics = HashMap::with_capacity(self.settings.replies.0.len());
        for (index, (command, _)) in self.settings.replies.0.iter().enumerate() {
            let topic = self
                .settings
                .reply_topic
                .render_checked(&Vars { command, ..vars })
                .map_err(|e| format!("reply topic {e}"))?;
            // A command listed twice keeps its first row.
            reply_topics.entry(topic).or_insert(index);
        }
        // `user_id` and `uuid` are single levels without '+', so any '+' came from
        // `{command}`; the filter is usable when each such level is exactly '+'.
        let filter = self.settings.reply_topic.render(&Vars {
            command: "+",
            ..vars
        });
        let whole_level = filter
            .split('/')
            .all(|level| !level.contains('+') || level == "+");
        let reply_filters = if whole_level {
            vec![filter]
        } else {
            let mut topics: Vec<String> = reply_topics.keys().cloned().collect();
            topics.sort();
            topics
        };
        Ok(Rendered {
            uuid_topic,
            command_topic,
            reply_filters,
            reply_topics,
        })
    }

    /// A reply for table entry `index`.
    fn reply(&mut self, index: usize, payload: &[u8], qos: QoS, now: Instant) {
        let expected_qos = self.expected_qos();
        let row = &mut self.report.commands[index];
        let Some(sent_at) = self.outstanding[index].pop_front() else {
            row.duplicates += 1;
            warn!(command = %row.command, "reply without an outstanding command");
            return;
        };
        self.outstanding_total -= 1;
        row.answered += 1;
        row.latencies.push(now.saturating_duration_since(sent_at));
        if payload != self.commands[index].1 {
            row.wrong += 1;
            warn!(
                command = %row.command,
                reply = ?String::from_utf8_lossy(payload),
                "wrong reply"
            );
        }
        if qos != expected_qos {
            row.qos_mismatches += 1;
            warn!(
                command = %row.command,
                "reply at QoS {qos}, expected {expected_qos}"
            );
        }
        if self.phase == Phase::Sending {
            self.arm_reply_timeout(now);
            self.pump(now);
        }
    }

    /// Sends commands while the window allows; completes when everything is answered.
    fn pump(&mut self, now: Instant) {
        let Some(command_topic) = self.rendered.as_ref().map(|r| r.command_topic.clone()) else {
            return;
        };
        while self.sent_total < self.settings.commands
            && self.outstanding_total < self.settings.window
        {
            let index = self.rng.below(self.commands.len() as u64) as usize;
            self.sent_total += 1;
            self.outstanding_total += 1;
            self.outstanding[index].push_back(now);
            self.report.commands[index].sent += 1;
            debug!(command = %self.report.commands[index].command, "sending");
            self.actions.push_back(Action::Publish {
                topic: command_topic.clone(),
                payload: self.commands[index].0.clone(),
                qos: self.qos(),
            });
        }
        if self.sent_total == self.settings.commands && self.outstanding_total == 0 {
            self.complete();
        }
    }

    /// Sends the completion message and ends the run.
    fn complete(&mut self) {
        if let Some(rendered) = &self.rendered {
            self.actions.push_back(Action::Publish {
                topic: rendered.command_topic.clone(),
                payload: Bytes::from(self.settings.completion_message.clone()),
                qos: self.qos(),
            });
            self.report.completion_sent = true;
        }
        self.finish();
    }

    /// Ends the run without the completion message.
    fn give_up(&mut self, why: String) {
        warn!("giving up: {why}");
        self.report.failure = Some(why);
        self.finish();
    }

    fn finish(&mut self) {
        if self.phase == Phase::Finished {
            return;
        }
        self.timers = [None; 2];
        self.actions.push_back(Action::Finished);
        self.set_phase(Phase::Finished);
    }

    fn publish_uuid(&mut self) {
        if let Some(rendered) = &self.rendered {
            self.actions.push_back(Action::Publish {
                topic: rendered.uuid_topic.clone(),
                payload: self.uuid_payload.clone(),
                qos: self.qos(),
            });
        }
    }

    fn subscribe(&mut self, topic: String) {
        if !self.pending_subs.contains(&topic) {
            self.pending_subs.push(topic.clone());
        }
        let qos = self.qos();
        self.actions.push_back(Action::Subscribe { topic, qos });
    }

    fn arm_reply_timeout(&mut self, now: Instant) {
        self.timers[Timer::ReplyTimeout as usize] = Some(now + self.settings.reply_timeout);
    }

    fn set_phase(&mut self, phase: Phase) {
        if self.phase != phase {
            debug!(?phase, "examiner phase");
            self.phase = phase;
        }
    }
}

/// The outcome of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The UUID handed out.
    pub uuid: String,
    /// The user served, once a login arrived.
    pub user_id: Option<String>,
    /// The QoS replies had to arrive at.
    pub expected_qos: QoS,
    /// One row per command of the table, in table order.
    pub commands: Vec<CommandReport>,
    /// Messages on subscribed topics that are not replies (or a login's topic).
    pub unexpected: u64,
    /// Replies that arrived after the run was over.
    pub late: u64,
    /// The run ended because no reply came within `reply_timeout`.
    pub timed_out: bool,
    /// The completion message was published.
    pub completion_sent: bool,
    /// Why the run was abandoned early (a refused subscription, an unusable topic).
    pub failure: Option<String>,
}

/// Results for one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandReport {
    /// The command.
    pub command: String,
    /// Times it was sent.
    pub sent: u64,
    /// Replies matched to a send (right or wrong).
    pub answered: u64,
    /// Replies with no send outstanding.
    pub duplicates: u64,
    /// Answered with a payload other than the table's.
    pub wrong: u64,
    /// Answered at a QoS other than the expected one.
    pub qos_mismatches: u64,
    /// Send-to-reply time of each answered send, in arrival order.
    pub latencies: Vec<Duration>,
}

impl CommandReport {
    fn new(command: &str) -> CommandReport {
        CommandReport {
            command: command.to_owned(),
            sent: 0,
            answered: 0,
            duplicates: 0,
            wrong: 0,
            qos_mismatches: 0,
            latencies: Vec::new(),
        }
    }

    /// Sends without a reply.
    pub fn missing(&self) -> u64 {
        self.sent.saturating_sub(self.answered)
    }

    /// The latency below which a fraction `q` (0.0..=1.0) of replies arrived (nearest rank).
    pub fn percentile(&self, q: f64) -> Option<Duration> {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        let last = sorted.len().checked_sub(1)?;
        let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
        sorted.get(rank.saturating_sub(1).min(last)).copied()
    }

    /// Median latency.
    pub fn p50(&self) -> Option<Duration> {
        self.percentile(0.5)
    }

    /// 99th-percentile latency.
    pub fn p99(&self) -> Option<Duration> {
        self.percentile(0.99)
    }

    fn add(&mut self, other: &CommandReport) {
        self.sent += other.sent;
        self.answered += other.answered;
        self.duplicates += other.duplicates;
        self.wrong += other.wrong;
        self.qos_mismatches += other.qos_mismatches;
        self.latencies.extend_from_slice(&other.latencies);
    }
}

impl Report {
    /// All commands together, in a row named `total`.
    pub fn totals(&self) -> CommandReport {
        let mut total = CommandReport::new("total");
        for row in &self.commands {
            total.add(row);
        }
        total
    }

    /// Whether the responder did its job: every command answered once, correctly, at the
    /// expected QoS, and the completion message sent.
    pub fn passed(&self) -> bool {
        let total = self.totals();
        total.missing() == 0
            && total.duplicates == 0
            && total.wrong == 0
            && total.qos_mismatches == 0
            && self.completion_sent
            && self.failure.is_none()
    }

    /// What went wrong, one phrase per problem (empty when passed).
    pub fn problems(&self) -> Vec<String> {
        let total = self.totals();
        let mut problems = Vec::new();
        if let Some(failure) = &self.failure {
            problems.push(failure.clone());
        }
        for (count, what) in [
            (total.missing(), "missing"),
            (total.duplicates, "duplicate"),
            (total.wrong, "wrong"),
            (total.qos_mismatches, "at the wrong QoS"),
        ] {
            if count > 0 {
                problems.push(format!("{count} {what}"));
            }
        }
        if self.timed_out {
            problems.push("timed out".to_owned());
        }
        if !self.completion_sent {
            problems.push("completion not sent".to_owned());
        }
        problems
    }
}

impl fmt::Display for Report {
    /// A table with one row per command and a total, then `PASS` or `FAIL: …`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self
            .commands
            .iter()
            .map(|c| c.command.chars().count())
            .max()
            .unwrap_or(0)
            .max("command".len());
        writeln!(
            f,
            "{:<width$} {:>7} {:>8} {:>7} {:>5} {:>5} {:>5} {:>10} {:>10}",
            "command", "sent", "answered", "missing", "dup", "wrong", "qos", "p50 ms", "p99 ms"
        )?;
        let total = self.totals();
        for row in self.commands.iter().chain(std::iter::once(&total)) {
            let ms = |d: Option<Duration>| {
                d.map_or_else(
                    || "-".to_owned(),
                    |d| format!("{:.3}", d.as_secs_f64() * 1e3),
                )
            };
            writeln!(
                f,
                "{:<width$} {:>7} {:>8} {:>7} {:>5} {:>5} {:>5} {:>10} {:>10}",
                row.command,
                row.sent,
                row.answered,
                row.missing(),
                row.duplicates,
                row.wrong,
                row.qos_mismatches,
                ms(row.p50()),
                ms(row.p99()),
            )?;
        }
        if self.unexpected > 0 || self.late > 0 {
            writeln!(
                f,
                "unexpected messages: {}, late replies: {}",
                self.unexpected, self.late
            )?;
        }
        if self.passed() {
            write!(f, "PASS (uuid {}, qos {})", self.uuid, self.expected_qos)
        } else {
            write!(f, "FAIL: {}", self.problems().join(", "))
        }
    }
}

/// A UUID-v4-looking string from the PRNG (version nibble 4, variant bits 10).
fn random_uuid(rng: &mut SplitMix64) -> String {
    let high = (rng.next_u64() & !0xf000) | 0x4000;
    let low = (rng.next_u64() & !(0b11 << 62)) | (0b10 << 62);
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        high >> 32,
        (high >> 16) & 0xffff,
        high & 0xffff,
        low >> 48,
        low & 0xffff_ffff_ffff
    )
}

/// SplitMix64: tiny, fast, good enough to pick test commands; no extra crate.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (multiply-high; the bias is below 2⁻⁵⁰ for small `n`). `n > 0`.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}
