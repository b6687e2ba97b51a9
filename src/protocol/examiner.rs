//! The peer side of the protocol: wait for a login, hand out a UUID, send random commands,
//! check every reply, and send the completion message. The mirror image of
//! [`super::responder::Responder`], used by `examine`, `demo` and the tests.
//!
//! Like the responder it is sans-IO: feed it events through `handle_*`, drain
//! [`Examiner::poll_action`], sleep until [`Examiner::poll_timeout`]. Publishes are handed to
//! the MQTT session whether or not it is connected at the moment (at QoS ≥ 1 the session
//! queues them).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{debug, info, warn};

pub use super::report::{CommandReport, Report};
use super::responder::ResponderSettings;
use super::{ReplyTable, Shown};
use crate::topic::{Template, TopicError, Var, Vars, validate_level};
use crate::vocabulary::QoS;

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
    /// Logins to ignore before serving one, to exercise the responder's login timeout.
    pub ignore_logins: usize,
    /// MQTT 5 request/response (SPEC §5): every command carries this Response Topic
    /// (`{user_id}`, `{uuid}` allowed) and its own Correlation Data; responses are expected
    /// there, matched by their correlation data, instead of on `reply_topic`.
    pub response_topic: Option<Template>,
    /// Send this many commands, then wait for [`Examiner::resume`] before the rest: a test's
    /// gate, so that a fault lands between the two parts by construction. `None`: no pause.
    pub pause_after: Option<usize>,
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
            ignore_logins: 0,
            response_topic: None,
            pause_after: None,
        }
    }
}

impl ExaminerSettings {
    /// Settings that mirror a responder's (topics, completion message, QoS, reply table,
    /// user ID); the rest as in [`Default`].
    pub fn mirroring(session: &ResponderSettings, replies: &ReplyTable) -> ExaminerSettings {
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
    /// The response topic is one topic for all commands: `{command}` makes no sense in it.
    #[error("response topic {0} must not contain {{command}}")]
    ResponseTopicWithCommand(String),
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
        /// MQTT 5 Response Topic (request/response mode, commands only).
        response_topic: Option<String>,
        /// MQTT 5 Correlation Data (request/response mode, commands only).
        correlation_data: Option<Bytes>,
    },
    /// The run is over (completion sent, or given up): wait for outstanding publishes to be
    /// acknowledged, disconnect, and read [`Examiner::report`].
    Finished,
}

/// Something worth showing a person watching the run (`demo`, `examine`), in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// A login arrived.
    Login {
        /// The user ID it carried.
        user_id: String,
    },
    /// The UUID was published.
    Uuid {
        /// The UUID.
        uuid: String,
        /// Where it went.
        topic: String,
    },
    /// A command was published.
    Command {
        /// The command.
        command: String,
    },
    /// A reply arrived for a command that was waiting for one.
    Reply {
        /// The command answered.
        command: String,
        /// The reply payload (lossy UTF-8).
        payload: String,
        /// Round trip since the command was published.
        latency: Duration,
        /// Right payload at the right QoS.
        correct: bool,
    },
    /// A reply arrived for a command with no send outstanding.
    Duplicate {
        /// The command.
        command: String,
    },
    /// The completion message was published.
    Completion,
    /// The run was abandoned.
    GaveUp {
        /// Why.
        reason: String,
    },
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
    /// A SUBSCRIBE without its SUBACK for `reply_timeout`: subscribe again, or give up.
    SubAck,
}

impl Timer {
    const ALL: [Timer; 3] = [Timer::Start, Timer::ReplyTimeout, Timer::SubAck];
}

/// SUBSCRIBEs sent for a subscription before the examiner gives up on its SUBACK.
pub const SUBSCRIBE_ATTEMPTS: u32 = 3;

/// Everything rendered once the login (and so the user ID) is known.
#[derive(Debug)]
struct Rendered {
    uuid_topic: String,
    command_topic: String,
    /// The filters to subscribe to for replies.
    reply_filters: Vec<String>,
    /// Reply topic → index into the table.
    reply_topics: HashMap<String, usize>,
    /// Request/response mode: the Response Topic every command carries.
    response_topic: Option<String>,
}

/// A command sent in request/response mode, by its Correlation Data.
#[derive(Debug, Clone, Copy)]
struct Request {
    /// Index into the table.
    index: usize,
    /// When it was sent; `None` once answered (a second response is a duplicate).
    sent_at: Option<Instant>,
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
    /// Logins ignored so far (see [`ExaminerSettings::ignore_logins`]).
    ignored_logins: usize,
    rendered: Option<Rendered>,
    /// The broker's cap from the latest CONNACK.
    broker_qos: QoS,
    /// The lowest QoS granted on a reply subscription.
    reply_qos: QoS,
    /// The lowest QoS granted on any subscription: our own publishes stay at or below it,
    /// since a 3.1.1 broker announces its maximum only this way (mosquitto with `max_qos 1`
    /// disconnects a client that publishes at QoS 2).
    granted_qos: QoS,
    /// Subscriptions whose SUBACK is due on this connection.
    pending_subs: Vec<String>,
    /// Send times of commands not yet answered, FIFO per command (latency per reply).
    outstanding: Vec<VecDeque<Instant>>,
    outstanding_total: usize,
    sent_total: usize,
    /// Request/response mode: every command sent, by its Correlation Data (bounded by
    /// `commands`).
    requests: HashMap<Bytes, Request>,
    timers: [Option<Instant>; 3],
    /// SUBSCRIBEs sent since the last SUBACK (or connection), for [`Timer::SubAck`].
    subscribe_attempts: u32,
    /// Holding the commands beyond `pause_after` until [`Examiner::resume`].
    paused: bool,
    actions: VecDeque<Action>,
    notes: VecDeque<Note>,
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
        if let Some(response) = &settings.response_topic
            && response.uses(Var::Command)
        {
            return Err(SettingsError::ResponseTopicWithCommand(
                response.to_string(),
            ));
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
            uncorrelated: 0,
            timed_out: false,
            completion_sent: false,
            failure: None,
            connection_losses: 0,
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
            ignored_logins: 0,
            rendered: None,
            broker_qos: QoS::ExactlyOnce,
            reply_qos: QoS::ExactlyOnce,
            granted_qos: QoS::ExactlyOnce,
            pending_subs: Vec::new(),
            outstanding_total: 0,
            sent_total: 0,
            requests: HashMap::new(),
            timers: [None; 3],
            subscribe_attempts: 0,
            paused: settings.pause_after.is_some(),
            actions: VecDeque::new(),
            notes: VecDeque::new(),
            report,
            settings,
        })
    }

    /// A CONNACK arrived; `max_qos` is the broker's cap. Without `session_present` every
    /// subscription the run needs is made again.
    pub fn handle_connected(&mut self, session_present: bool, max_qos: QoS, now: Instant) {
        self.broker_qos = max_qos;
        self.clear_pending_subs();
        if self.phase == Phase::Finished {
            return;
        }
        // A session may lack a subscription whose SUBACK never came; repeating it is safe.
        if !session_present || self.phase == Phase::WaitingForLogin {
            self.subscribe(self.login_topic.clone(), now);
        }
        if !session_present || self.phase == Phase::SubscribingReplies {
            let filters = self
                .rendered
                .as_ref()
                .map(|r| r.reply_filters.clone())
                .unwrap_or_default();
            for filter in filters {
                self.subscribe(filter, now);
            }
        }
    }

    /// The connection was lost; subscriptions in progress are void.
    pub fn handle_disconnected(&mut self, now: Instant) {
        let _ = now;
        self.clear_pending_subs();
        self.report.connection_losses += 1;
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
        // The broker answers: the bound starts again for what is still pending.
        self.subscribe_attempts = 1;
        self.timers[Timer::SubAck as usize] =
            (!self.pending_subs.is_empty()).then(|| now + self.settings.reply_timeout);
        let Some(granted) = granted else {
            self.give_up(format!("the broker refused the subscription to {topic}"));
            return;
        };
        self.granted_qos = self.granted_qos.min(granted);
        if !self.subscribes_to(topic) {
            return;
        }
        self.reply_qos = self.reply_qos.min(granted);
        let all_granted = !self.pending_subs.iter().any(|p| self.subscribes_to(p));
        if self.phase == Phase::SubscribingReplies && all_granted {
            self.publish_uuid();
            self.timers[Timer::Start as usize] = Some(now + self.settings.delay);
            self.set_phase(Phase::Delaying);
        }
    }

    /// A message arrived, delivered at `qos`.
    pub fn handle_message(&mut self, topic: &str, payload: &[u8], qos: QoS, now: Instant) {
        self.handle_message_correlated(topic, payload, qos, None, now);
    }

    /// A message arrived, delivered at `qos`, with its MQTT 5 Correlation Data (if any):
    /// in request/response mode, responses are matched to commands by it.
    pub fn handle_message_correlated(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: QoS,
        correlation_data: Option<&[u8]>,
        now: Instant,
    ) {
        if topic == self.login_topic {
            self.login(payload, now);
            return;
        }
        let response_topic = self
            .rendered
            .as_ref()
            .and_then(|r| r.response_topic.as_ref());
        if response_topic.is_some_and(|t| t == topic) {
            if self.phase == Phase::Finished {
                self.report.late += 1;
            } else {
                self.response(payload, qos, correlation_data, now);
            }
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
                Timer::SubAck => self.subscribe_again(now),
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

    /// The next note for a person watching, in order. Callers that show nothing need not
    /// drain them, but a long run should (they are kept until polled).
    pub fn poll_note(&mut self) -> Option<Note> {
        self.notes.pop_front()
    }

    /// Whether a message on `topic` is for this examiner (its login topic or one of its
    /// reply topics), for callers that run several examiners on one connection.
    pub fn handles_topic(&self, topic: &str) -> bool {
        topic == self.login_topic
            || self.rendered.as_ref().is_some_and(|r| {
                r.reply_topics.contains_key(topic) || r.response_topic.as_deref() == Some(topic)
            })
    }

    /// Whether `filter` is one of this examiner's reply subscriptions, for callers that run
    /// several examiners on one connection: its SUBACK is this examiner's.
    pub fn subscribes_to(&self, filter: &str) -> bool {
        self.rendered
            .as_ref()
            .is_some_and(|r| r.reply_filters.iter().any(|f| f == filter))
    }

    /// The topic logins arrive on.
    pub fn login_topic(&self) -> &str {
        &self.login_topic
    }

    /// The topic commands go to, once a login made it known.
    pub fn command_topic(&self) -> Option<&str> {
        self.rendered.as_ref().map(|r| r.command_topic.as_str())
    }

    /// Commands sent and answered so far (cheap, for progress reports).
    pub fn answered(&self) -> usize {
        self.sent_total - self.outstanding_total
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
        self.settings.qos.min(self.broker_qos).min(self.granted_qos)
    }

    /// A message on the login topic.
    fn login(&mut self, payload: &[u8], now: Instant) {
        let Some(user_id) = std::str::from_utf8(payload)
            .ok()
            .filter(|u| validate_level(u).is_ok())
        else {
            warn!(payload = %Shown(payload), "ignoring an invalid login");
            return;
        };
        if let Some(expected) = self.user_id.as_ref().or(self.settings.user_id.as_ref()) {
            if expected != user_id {
                debug!(user_id, "ignoring a login from another user");
                return;
            }
        }
        match self.phase {
            Phase::WaitingForLogin if self.ignored_logins < self.settings.ignore_logins => {
                self.ignored_logins += 1;
                info!(user_id, "ignoring login {} as told", self.ignored_logins);
                return;
            }
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
        self.notes.push_back(Note::Login {
            user_id: user_id.to_owned(),
        });
        self.user_id = Some(user_id.to_owned());
        self.report.user_id = Some(user_id.to_owned());
        let filters = rendered.reply_filters.clone();
        self.rendered = Some(rendered);
        self.set_phase(Phase::SubscribingReplies);
        for filter in filters {
            self.subscribe(filter, now);
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
        let response_topic = match &self.settings.response_topic {
            Some(template) => Some(
                template
                    .render_checked(&vars)
                    .map_err(|e| format!("response topic {e}"))?,
            ),
            None => None,
        };
        let reply_filters = if let Some(response_topic) = &response_topic {
            // Responses come on the Response Topic only; the reply topics stay silent.
            vec![response_topic.clone()]
        } else if whole_level {
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
            response_topic,
        })
    }

    /// A reply for table entry `index`.
    fn reply(&mut self, index: usize, payload: &[u8], qos: QoS, now: Instant) {
        match self.outstanding[index].pop_front() {
            Some(sent_at) => self.record_reply(index, sent_at, payload, qos, now),
            None => self.duplicate(index),
        }
    }

    /// A response on the Response Topic (request/response mode): its Correlation Data says
    /// which command it answers.
    fn response(
        &mut self,
        payload: &[u8],
        qos: QoS,
        correlation_data: Option<&[u8]>,
        now: Instant,
    ) {
        let request = correlation_data.and_then(|c| self.requests.get_mut(c));
        let Some(request) = request else {
            self.report.uncorrelated += 1;
            warn!(
                correlation_data = %Shown(correlation_data.unwrap_or_default()),
                missing = correlation_data.is_none(),
                "response whose Correlation Data matches no command sent"
            );
            return;
        };
        let index = request.index;
        match request.sent_at.take() {
            Some(sent_at) => self.record_reply(index, sent_at, payload, qos, now),
            None => self.duplicate(index),
        }
    }

    /// A reply for `index` with no send outstanding.
    fn duplicate(&mut self, index: usize) {
        let row = &mut self.report.commands[index];
        row.duplicates += 1;
        self.notes.push_back(Note::Duplicate {
            command: row.command.clone(),
        });
        warn!(command = %row.command, "reply without an outstanding command");
    }

    /// The reply to a send of `index` at `sent_at`: record it and check it.
    fn record_reply(
        &mut self,
        index: usize,
        sent_at: Instant,
        payload: &[u8],
        qos: QoS,
        now: Instant,
    ) {
        let expected_qos = self.expected_qos();
        let row = &mut self.report.commands[index];
        self.outstanding_total -= 1;
        row.answered += 1;
        let latency = now.saturating_duration_since(sent_at);
        row.latencies.push(latency);
        self.notes.push_back(Note::Reply {
            command: row.command.clone(),
            payload: String::from_utf8_lossy(payload).into_owned(),
            latency,
            correct: payload == self.commands[index].1 && qos == expected_qos,
        });
        if payload != self.commands[index].1 {
            row.wrong += 1;
            warn!(
                command = %row.command,
                reply = %Shown(payload),
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
        let Some((command_topic, response_topic)) = self
            .rendered
            .as_ref()
            .map(|r| (r.command_topic.clone(), r.response_topic.clone()))
        else {
            return;
        };
        let limit = match self.settings.pause_after {
            Some(pause) if self.paused => pause.min(self.settings.commands),
            _ => self.settings.commands,
        };
        while self.sent_total < limit && self.outstanding_total < self.settings.window {
            let index = self.rng.below(self.commands.len() as u64) as usize;
            self.sent_total += 1;
            self.outstanding_total += 1;
            let correlation_data = if response_topic.is_some() {
                // Unique per command sent in this run; the UUID makes it unique across
                // runs and devices too, so a stray response is never mistaken for ours.
                let data = Bytes::from(format!("{}:{}", self.uuid, self.sent_total));
                let request = Request {
                    index,
                    sent_at: Some(now),
                };
                self.requests.insert(data.clone(), request);
                Some(data)
            } else {
                self.outstanding[index].push_back(now);
                None
            };
            self.report.commands[index].sent += 1;
            debug!(command = %self.report.commands[index].command, "sending");
            self.notes.push_back(Note::Command {
                command: self.report.commands[index].command.clone(),
            });
            self.actions.push_back(Action::Publish {
                topic: command_topic.clone(),
                payload: self.commands[index].0.clone(),
                qos: self.qos(),
                response_topic: response_topic.clone(),
                correlation_data,
            });
        }
        if self.sent_total == self.settings.commands && self.outstanding_total == 0 {
            self.complete();
        } else if self.outstanding_total == 0 {
            // Paused with nothing missing: no reply is overdue, however long the pause.
            self.timers[Timer::ReplyTimeout as usize] = None;
        }
    }

    /// Sends the commands held back by `pause_after`.
    pub fn resume(&mut self, now: Instant) {
        if !std::mem::take(&mut self.paused) {
            return;
        }
        info!(
            sent = self.sent_total,
            "resuming: sending the rest of the commands"
        );
        if self.phase == Phase::Sending {
            self.arm_reply_timeout(now);
            self.pump(now);
        }
    }

    /// Whether commands are held back by `pause_after` right now: paused, and every command
    /// before the pause answered.
    pub fn is_paused(&self) -> bool {
        self.paused
            && self.phase == Phase::Sending
            && self.outstanding_total == 0
            && self.settings.pause_after == Some(self.sent_total)
    }

    /// Sends the completion message and ends the run.
    fn complete(&mut self) {
        if let Some(rendered) = &self.rendered {
            self.actions.push_back(Action::Publish {
                topic: rendered.command_topic.clone(),
                payload: Bytes::from(self.settings.completion_message.clone()),
                qos: self.qos(),
                response_topic: None,
                correlation_data: None,
            });
            self.report.completion_sent = true;
            self.notes.push_back(Note::Completion);
        }
        self.finish();
    }

    /// Ends the run without the completion message.
    fn give_up(&mut self, why: String) {
        warn!("giving up: {why}");
        self.notes.push_back(Note::GaveUp {
            reason: why.clone(),
        });
        self.report.failure = Some(why);
        self.finish();
    }

    fn finish(&mut self) {
        if self.phase == Phase::Finished {
            return;
        }
        self.timers = [None; 3];
        self.actions.push_back(Action::Finished);
        self.set_phase(Phase::Finished);
    }

    fn publish_uuid(&mut self) {
        if let Some(rendered) = &self.rendered {
            self.notes.push_back(Note::Uuid {
                uuid: self.uuid.clone(),
                topic: rendered.uuid_topic.clone(),
            });
            self.actions.push_back(Action::Publish {
                topic: rendered.uuid_topic.clone(),
                payload: self.uuid_payload.clone(),
                qos: self.qos(),
                response_topic: None,
                correlation_data: None,
            });
        }
    }

    fn subscribe(&mut self, topic: String, now: Instant) {
        if !self.pending_subs.contains(&topic) {
            self.pending_subs.push(topic.clone());
        }
        if self.timers[Timer::SubAck as usize].is_none() {
            self.subscribe_attempts = 1;
            self.timers[Timer::SubAck as usize] = Some(now + self.settings.reply_timeout);
        }
        let qos = self.qos();
        self.actions.push_back(Action::Subscribe { topic, qos });
    }

    /// No SUBACK within `reply_timeout`: subscribe again (a SUBSCRIBE lost in a broker is
    /// not an error the connection reports), or give up after [`SUBSCRIBE_ATTEMPTS`].
    fn subscribe_again(&mut self, now: Instant) {
        if self.pending_subs.is_empty() || self.phase == Phase::Finished {
            return;
        }
        let topics = self.pending_subs.join(", ");
        if self.subscribe_attempts >= SUBSCRIBE_ATTEMPTS {
            self.give_up(format!(
                "no SUBACK for the subscription to {topics} within {:?}, {} times",
                self.settings.reply_timeout, self.subscribe_attempts
            ));
            return;
        }
        self.subscribe_attempts += 1;
        warn!(
            "no SUBACK for the subscription to {topics} within {:?}; subscribing again \
             (attempt {} of {SUBSCRIBE_ATTEMPTS})",
            self.settings.reply_timeout, self.subscribe_attempts
        );
        self.timers[Timer::SubAck as usize] = Some(now + self.settings.reply_timeout);
        let qos = self.qos();
        for topic in self.pending_subs.clone() {
            self.actions.push_back(Action::Subscribe { topic, qos });
        }
    }

    fn clear_pending_subs(&mut self) {
        self.pending_subs.clear();
        self.timers[Timer::SubAck as usize] = None;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::UnknownCommand;
    use crate::protocol::responder::{self, OutgoingKind, Responder};
    use crate::protocol::testing::session;
    use crate::vocabulary::MessageId;

    const UUID: &str = "6533a9a8-5b52-4ccb-95c1-4b75383d5c38";

    fn settings() -> ExaminerSettings {
        ExaminerSettings {
            uuid: Some(UUID.to_owned()),
            commands: 7,
            delay: Duration::from_millis(100),
            window: 3,
            ..ExaminerSettings::mirroring(&session(), &ReplyTable::seed())
        }
    }

    fn actions(e: &mut Examiner) -> Vec<Action> {
        std::iter::from_fn(|| e.poll_action()).collect()
    }

    fn publish(topic: &str, payload: &str, qos: QoS) -> Action {
        Action::Publish {
            topic: topic.to_owned(),
            payload: Bytes::from(payload.to_owned()),
            qos,
            response_topic: None,
            correlation_data: None,
        }
    }

    /// An examiner that has handed out the UUID and is waiting `delay`.
    fn delaying(settings: ExaminerSettings, t: Instant) -> Examiner {
        let mut e = Examiner::new(settings, t).unwrap();
        e.handle_connected(false, QoS::ExactlyOnce, t);
        e.handle_subscribed("login", Some(QoS::ExactlyOnce), t);
        e.handle_message("login", b"2547841", QoS::ExactlyOnce, t);
        let filter = format!("{UUID}/+");
        e.handle_subscribed(&filter, Some(QoS::ExactlyOnce), t);
        assert_eq!(e.phase(), Phase::Delaying);
        actions(&mut e);
        e
    }

    #[test]
    fn ignores_the_first_logins_when_told() {
        let t = Instant::now();
        let mut e = Examiner::new(
            ExaminerSettings {
                ignore_logins: 2,
                ..settings()
            },
            t,
        )
        .unwrap();
        e.handle_connected(false, QoS::ExactlyOnce, t);
        e.handle_subscribed("login", Some(QoS::ExactlyOnce), t);
        actions(&mut e);
        for _ in 0..2 {
            e.handle_message("login", b"2547841", QoS::ExactlyOnce, t);
            assert_eq!(e.phase(), Phase::WaitingForLogin);
            assert_eq!(actions(&mut e), []);
        }
        e.handle_message("login", b"2547841", QoS::ExactlyOnce, t);
        assert_eq!(e.phase(), Phase::SubscribingReplies);
        assert_eq!(
            actions(&mut e),
            [Action::Subscribe {
                topic: format!("{UUID}/+"),
                qos: QoS::ExactlyOnce
            }]
        );
        // A login from someone else is not counted as an ignored one.
        let mut e = Examiner::new(
            ExaminerSettings {
                ignore_logins: 1,
                ..settings()
            },
            t,
        )
        .unwrap();
        e.handle_connected(false, QoS::ExactlyOnce, t);
        e.handle_message("login", b"someone-else", QoS::ExactlyOnce, t);
        e.handle_message("login", b"2547841", QoS::ExactlyOnce, t);
        assert_eq!(e.phase(), Phase::WaitingForLogin);
        assert_eq!(e.answered(), 0);
    }

    /// The commands among `actions` (publishes on the command topic, completion excluded).
    fn sent(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Publish { topic, payload, .. }
                    if topic == UUID && payload.as_ref() != b"Well done my IoT!" =>
                {
                    Some(String::from_utf8_lossy(payload).into_owned())
                }
                _ => None,
            })
            .collect()
    }

    fn answer(command: &str) -> &'static str {
        match command {
            "CMD1" => "Apple",
            "CMD2" => "Cat",
            "CMD3" => "Dog",
            "CMD4" => "Rat",
            "CMD5" => "Boy",
            "CMD6" => "Girl",
            "CMD7" => "Toy",
            _ => "?",
        }
    }

    #[test]
    fn defaults_match_the_spec() {
        let d = ExaminerSettings::default();
        let s = ExaminerSettings::mirroring(&session(), &ReplyTable::seed());
        assert_eq!(ExaminerSettings { user_id: None, ..s }, d);
        assert_eq!(d.delay, Duration::from_secs(3));
        assert_eq!(d.window, 20);
    }

    #[test]
    fn settings_are_checked() {
        let t = Instant::now();
        let check = |s: ExaminerSettings| Examiner::new(s, t).err();
        let login = Template::parse("{user_id}/login", &[Var::UserId]).unwrap();
        assert!(matches!(
            check(ExaminerSettings {
                login_topic: login,
                ..ExaminerSettings::default()
            }),
            Some(SettingsError::MissingUserId(_))
        ));
        assert!(matches!(
            check(ExaminerSettings {
                uuid: Some("a/b".to_owned()),
                ..settings()
            }),
            Some(SettingsError::InvalidUuid(..))
        ));
        assert!(matches!(
            check(ExaminerSettings {
                user_id: Some("#".to_owned()),
                ..settings()
            }),
            Some(SettingsError::InvalidUserId(..))
        ));
        assert_eq!(
            check(ExaminerSettings {
                window: 0,
                ..settings()
            }),
            Some(SettingsError::ZeroWindow)
        );
        assert_eq!(
            check(ExaminerSettings {
                replies: ReplyTable(Vec::new()),
                ..settings()
            }),
            Some(SettingsError::NoCommands)
        );
        assert!(matches!(
            check(ExaminerSettings {
                replies: ReplyTable(vec![("a+".to_owned(), "x".to_owned())]),
                ..settings()
            }),
            Some(SettingsError::InvalidCommand(..))
        ));
        let reply = Template::parse("{uuid}/reply", &[Var::Uuid, Var::Command]).unwrap();
        assert!(matches!(
            check(ExaminerSettings {
                reply_topic: reply,
                ..settings()
            }),
            Some(SettingsError::ReplyTopicWithoutCommand(_))
        ));
    }

    #[test]
    fn random_uuids_look_like_v4_and_follow_the_seed() {
        let t = Instant::now();
        let make = |seed| {
            Examiner::new(
                ExaminerSettings {
                    seed,
                    ..ExaminerSettings::default()
                },
                t,
            )
            .unwrap()
            .uuid()
            .to_owned()
        };
        let uuid = make(1);
        assert_eq!(uuid, make(1));
        assert_ne!(uuid, make(2));
        let parts: Vec<&str> = uuid.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('4'));
        assert!(matches!(parts[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'));
        assert!(validate_level(&uuid).is_ok());
    }

    #[test]
    fn commands_are_picked_uniformly() {
        let mut rng = SplitMix64(42);
        let mut counts = [0u32; 7];
        for _ in 0..70_000 {
            counts[rng.below(7) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (9_000..11_000).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn subscribes_to_replies_before_handing_out_the_uuid() {
        let t = Instant::now();
        let mut e = Examiner::new(settings(), t).unwrap();
        assert_eq!(e.phase(), Phase::WaitingForLogin);
        e.handle_connected(false, QoS::ExactlyOnce, t);
        assert_eq!(
            actions(&mut e),
            [Action::Subscribe {
                topic: "login".to_owned(),
                qos: QoS::ExactlyOnce
            }]
        );
        e.handle_subscribed("login", Some(QoS::ExactlyOnce), t);
        // Invalid logins and other users are ignored.
        for bad in [b"".as_slice(), b"a/b", b"#", b"\xff", b"999"] {
            e.handle_message("login", bad, QoS::ExactlyOnce, t);
            assert_eq!(actions(&mut e), [], "{bad:?}");
        }
        e.handle_message("login", b"2547841", QoS::ExactlyOnce, t);
        assert_eq!(e.phase(), Phase::SubscribingReplies);
        let filter = format!("{UUID}/+");
        assert_eq!(
            actions(&mut e),
            [Action::Subscribe {
                topic: filter.clone(),
                qos: QoS::ExactlyOnce
            }]
        );
        // The SUBACK is awaited for a bounded time.
        assert_eq!(e.poll_timeout(), Some(t + e.settings.reply_timeout));
        e.handle_subscribed(&filter, Some(QoS::ExactlyOnce), t);
        assert_eq!(
            actions(&mut e),
            [publish("2547841/UUID", UUID, QoS::ExactlyOnce)]
        );
        assert_eq!(e.phase(), Phase::Delaying);
        assert_eq!(e.poll_timeout(), Some(t + Duration::from_millis(100)));
        // A second login from the same user gets the same UUID again.
        e.handle_message("login", b"2547841", QoS::ExactlyOnce, t);
        assert_eq!(
            actions(&mut e),
            [publish("2547841/UUID", UUID, QoS::ExactlyOnce)]
        );
    }

    #[test]
    fn a_partial_command_level_subscribes_per_command() {
        let t = Instant::now();
        let reply = Template::parse("{uuid}/re-{command}", &[Var::Uuid, Var::Command]).unwrap();
        let mut e = Examiner::new(
            ExaminerSettings {
                reply_topic: reply,
                ..settings()
            },
            t,
        )
        .unwrap();
        e.handle_connected(false, QoS::ExactlyOnce, t);
        e.handle_message("login", b"2547841", QoS::ExactlyOnce, t);
        let subs: Vec<String> = actions(&mut e)
            .into_iter()
            .filter_map(|a| match a {
                Action::Subscribe { topic, .. } if topic != "login" => Some(topic),
                _ => None,
            })
            .collect();
        assert_eq!(subs.len(), 7);
        assert!(subs.iter().all(|s| !s.contains('+')));
        // The UUID goes out only after the last SUBACK.
        for (i, sub) in subs.iter().enumerate() {
            assert_eq!(e.phase(), Phase::SubscribingReplies, "after {i} SUBACKs");
            e.handle_subscribed(sub, Some(QoS::AtLeastOnce), t);
        }
        assert_eq!(e.phase(), Phase::Delaying);
        assert_eq!(e.report().expected_qos, QoS::AtLeastOnce);
    }

    #[test]
    fn sends_within_the_window_and_checks_replies() {
        let t = Instant::now();
        let mut e = delaying(settings(), t);
        e.handle_timeout(t + Duration::from_millis(99));
        assert_eq!(actions(&mut e), []);
        let start = t + Duration::from_millis(100);
        e.handle_timeout(start);
        assert_eq!(e.phase(), Phase::Sending);
        let mut queue: VecDeque<String> = sent(&actions(&mut e)).into();
        assert_eq!(queue.len(), 3, "window");
        let mut now = start;
        let mut seen = 0;
        for _ in 0..10 {
            let Some(command) = queue.pop_front() else {
                break;
            };
            seen += 1;
            now += Duration::from_millis(2);
            e.handle_message(
                &format!("{UUID}/{command}"),
                answer(&command).as_bytes(),
                QoS::ExactlyOnce,
                now,
            );
            queue.extend(sent(&actions(&mut e)));
        }
        assert_eq!(seen, 7);
        assert_eq!(e.phase(), Phase::Finished);
        let report = e.report();
        assert!(report.passed(), "{report}");
        assert_eq!(report.totals().sent, 7);
        assert_eq!(report.totals().p50(), Some(Duration::from_millis(2 * 3)));
    }

    /// Answers every command `e` has sent so far (and those it sends meanwhile) at `now`.
    fn answer_all(e: &mut Examiner, mut queue: VecDeque<String>, now: Instant) -> usize {
        let mut answered = 0;
        for _ in 0..100 {
            let Some(command) = queue.pop_front() else {
                break;
            };
            answered += 1;
            let reply = answer(&command);
            e.handle_message(
                &format!("{UUID}/{command}"),
                reply.as_bytes(),
                QoS::ExactlyOnce,
                now,
            );
            queue.extend(sent(&actions(e)));
        }
        answered
    }

    #[test]
    fn pause_after_holds_the_rest_until_resumed_without_a_reply_timeout() {
        let t = Instant::now();
        let mut e = delaying(
            ExaminerSettings {
                pause_after: Some(4),
                ..settings()
            },
            t,
        );
        let start = t + Duration::from_millis(100);
        e.handle_timeout(start);
        let queue: VecDeque<String> = sent(&actions(&mut e)).into();
        assert_eq!(queue.len(), 3, "window");
        assert_eq!(answer_all(&mut e, queue, start), 4, "four before the pause");
        assert!(e.is_paused());
        assert_eq!(e.phase(), Phase::Sending);
        // Nothing is missing while paused: no reply timeout, however long the pause.
        assert_eq!(e.poll_timeout(), None);
        let later = start + Duration::from_secs(3600);
        e.resume(later);
        assert!(!e.is_paused());
        let queue: VecDeque<String> = sent(&actions(&mut e)).into();
        assert_eq!(queue.len(), 3);
        assert_eq!(e.poll_timeout(), Some(later + e.settings.reply_timeout));
        assert_eq!(answer_all(&mut e, queue, later), 3);
        assert_eq!(e.phase(), Phase::Finished);
        let report = e.report();
        assert!(report.passed(), "{report}");
        assert_eq!(report.totals().sent, 7);
        // Resuming again changes nothing.
        e.resume(later);
        assert_eq!(actions(&mut e), []);
    }

    #[test]
    fn a_resume_before_the_pause_is_kept() {
        let t = Instant::now();
        let mut e = delaying(
            ExaminerSettings {
                pause_after: Some(2),
                ..settings()
            },
            t,
        );
        e.resume(t);
        e.handle_timeout(t + Duration::from_millis(100));
        let queue: VecDeque<String> = sent(&actions(&mut e)).into();
        assert_eq!(queue.len(), 3, "the window, not the pause");
        assert_eq!(answer_all(&mut e, queue, t), 7);
        assert_eq!(e.phase(), Phase::Finished);
    }

    #[test]
    fn a_missing_suback_is_asked_for_again_then_given_up_on() {
        let t = Instant::now();
        let s = settings();
        let bound = s.reply_timeout;
        let mut e = Examiner::new(s, t).unwrap();
        e.handle_connected(false, QoS::ExactlyOnce, t);
        let subscribe = Action::Subscribe {
            topic: "login".to_owned(),
            qos: QoS::ExactlyOnce,
        };
        assert_eq!(actions(&mut e), std::slice::from_ref(&subscribe));
        assert_eq!(e.poll_timeout(), Some(t + bound));
        e.handle_timeout(t + bound - Duration::from_millis(1));
        assert_eq!(actions(&mut e), []);
        let mut now = t;
        for _ in 1..SUBSCRIBE_ATTEMPTS {
            now += bound;
            e.handle_timeout(now);
            assert_eq!(actions(&mut e), std::slice::from_ref(&subscribe));
            assert_eq!(e.poll_timeout(), Some(now + bound));
        }
        e.handle_timeout(now + bound);
        assert_eq!(actions(&mut e), [Action::Finished]);
        let failure = e.report().failure.clone().unwrap();
        assert!(
            failure.contains("no SUBACK for the subscription to login"),
            "{failure}"
        );
        assert!(
            failure.contains(&format!("{SUBSCRIBE_ATTEMPTS} times")),
            "{failure}"
        );
    }

    #[test]
    fn a_suback_ends_the_bound_and_a_late_one_is_ignored() {
        let t = Instant::now();
        let s = settings();
        let bound = s.reply_timeout;
        let mut e = Examiner::new(s, t).unwrap();
        e.handle_connected(false, QoS::ExactlyOnce, t);
        actions(&mut e);
        e.handle_timeout(t + bound);
        assert_eq!(actions(&mut e).len(), 1, "subscribed again");
        e.handle_subscribed("login", Some(QoS::ExactlyOnce), t + bound);
        assert_eq!(e.poll_timeout(), None);
        // The first SUBSCRIBE's SUBACK, late: nothing changes.
        e.handle_subscribed("login", Some(QoS::ExactlyOnce), t + bound);
        assert_eq!(e.poll_timeout(), None);
        assert_eq!(e.phase(), Phase::WaitingForLogin);
        // A lost connection voids the bound with the subscription.
        e.handle_connected(false, QoS::ExactlyOnce, t + bound);
        assert!(e.poll_timeout().is_some());
        e.handle_disconnected(t + bound);
        assert_eq!(e.poll_timeout(), None);
    }

    #[test]
    fn completion_is_sent_when_all_are_answered() {
        let t = Instant::now();
        let mut e = delaying(
            ExaminerSettings {
                commands: 1,
                ..settings()
            },
            t,
        );
        e.handle_timeout(t + Duration::from_millis(100));
        let command = sent(&actions(&mut e)).remove(0);
        e.handle_message(
            &format!("{UUID}/{command}"),
            answer(&command).as_bytes(),
            QoS::ExactlyOnce,
            t,
        );
        assert_eq!(
            actions(&mut e),
            [
                publish(UUID, "Well done my IoT!", QoS::ExactlyOnce),
                Action::Finished
            ]
        );
        assert_eq!(e.poll_timeout(), None);
        // A reply after the end is late, not counted.
        e.handle_message(&format!("{UUID}/{command}"), b"x", QoS::ExactlyOnce, t);
        assert_eq!(e.report().late, 1);
        assert!(e.report().passed());
    }

    #[test]
    fn zero_commands_complete_after_the_delay() {
        let t = Instant::now();
        let mut e = delaying(
            ExaminerSettings {
                commands: 0,
                ..settings()
            },
            t,
        );
        e.handle_timeout(t + Duration::from_millis(100));
        assert_eq!(
            actions(&mut e),
            [
                publish(UUID, "Well done my IoT!", QoS::ExactlyOnce),
                Action::Finished
            ]
        );
        assert!(e.report().passed());
    }

    #[test]
    fn wrong_duplicate_and_mismatched_replies_fail() {
        let t = Instant::now();
        let mut e = delaying(
            ExaminerSettings {
                commands: 3,
                ..settings()
            },
            t,
        );
        e.handle_timeout(t + Duration::from_millis(100));
        let commands = sent(&actions(&mut e));
        let topic = |c: &str| format!("{UUID}/{c}");
        e.handle_message(&topic(&commands[0]), b"Wrong", QoS::ExactlyOnce, t);
        e.handle_message(
            &topic(&commands[1]),
            answer(&commands[1]).as_bytes(),
            QoS::AtLeastOnce,
            t,
        );
        // CMD8 is not in the table: its topic is merely unexpected.
        e.handle_message(&topic("CMD8"), b"Apple", QoS::ExactlyOnce, t);
        let unsent = ["CMD1", "CMD2", "CMD3", "CMD4", "CMD5", "CMD6", "CMD7"]
            .into_iter()
            .find(|c| !commands.iter().any(|s| s == c))
            .unwrap();
        e.handle_message(
            &topic(unsent),
            answer(unsent).as_bytes(),
            QoS::ExactlyOnce,
            t,
        );
        let report = e.report();
        let total = report.totals();
        assert_eq!(
            (total.wrong, total.qos_mismatches, total.duplicates),
            (1, 1, 1)
        );
        assert_eq!(report.unexpected, 1);
        assert_eq!(total.missing(), 1);
        assert!(!report.passed());
        let text = report.to_string();
        assert!(
            text.contains("FAIL: 1 missing, 1 duplicate, 1 wrong, 1 at the wrong QoS"),
            "{text}"
        );
    }

    #[test]
    fn reply_timeout_gives_up_and_reports_what_is_missing() {
        let t = Instant::now();
        let mut e = delaying(settings(), t);
        let start = t + Duration::from_millis(100);
        e.handle_timeout(start);
        let first = sent(&actions(&mut e)).remove(0);
        assert_eq!(e.poll_timeout(), Some(start + Duration::from_secs(10)));
        // Progress pushes the deadline out.
        let later = start + Duration::from_secs(5);
        e.handle_message(
            &format!("{UUID}/{first}"),
            answer(&first).as_bytes(),
            QoS::ExactlyOnce,
            later,
        );
        actions(&mut e);
        assert_eq!(e.poll_timeout(), Some(later + Duration::from_secs(10)));
        e.handle_timeout(later + Duration::from_secs(10));
        assert_eq!(
            actions(&mut e),
            [
                publish(UUID, "Well done my IoT!", QoS::ExactlyOnce),
                Action::Finished
            ]
        );
        let report = e.report();
        assert!(report.timed_out);
        assert_eq!(report.totals().missing(), 3);
        assert!(!report.passed());
    }

    #[test]
    fn a_refused_subscription_gives_up() {
        let t = Instant::now();
        let mut e = Examiner::new(settings(), t).unwrap();
        e.handle_connected(false, QoS::ExactlyOnce, t);
        e.handle_message("login", b"2547841", QoS::ExactlyOnce, t);
        actions(&mut e);
        e.handle_subscribed(&format!("{UUID}/+"), None, t);
        assert_eq!(actions(&mut e), [Action::Finished]);
        let report = e.report();
        assert!(report.failure.is_some());
        assert!(!report.passed());
    }

    #[test]
    fn reconnect_resubscribes_what_the_run_needs() {
        let t = Instant::now();
        let mut e = delaying(settings(), t);
        e.handle_disconnected(t);
        e.handle_connected(false, QoS::AtLeastOnce, t);
        assert_eq!(
            actions(&mut e),
            [
                Action::Subscribe {
                    topic: "login".to_owned(),
                    qos: QoS::AtLeastOnce
                },
                Action::Subscribe {
                    topic: format!("{UUID}/+"),
                    qos: QoS::AtLeastOnce
                }
            ]
        );
        e.handle_disconnected(t);
        e.handle_connected(true, QoS::ExactlyOnce, t);
        assert_eq!(actions(&mut e), []);
        assert_eq!(e.phase(), Phase::Delaying);
    }

    /// Which machine a subscription belongs to.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Side {
        Responder,
        Examiner,
    }

    /// Whether `filter` (exact levels or single-level `+`) matches `topic`.
    fn matches(filter: &str, topic: &str) -> bool {
        let mut f = filter.split('/');
        let mut t = topic.split('/');
        loop {
            match (f.next(), t.next()) {
                (None, None) => return true,
                (Some(fl), Some(tl)) if fl == "+" || fl == tl => {}
                _ => return false,
            }
        }
    }

    /// A tiny in-memory broker between the two machines: instant delivery and acks, QoS
    /// downgraded to the subscription's, on a simulated clock.
    struct Pair {
        now: Instant,
        start: Instant,
        responder: Responder,
        examiner: Examiner,
        /// The broker's maximum QoS.
        broker_qos: QoS,
        subs: Vec<(String, QoS, Side)>,
        next_id: u64,
        responder_done: bool,
        examiner_done: bool,
        /// When the UUID was published and the first command delivered.
        uuid_at: Option<Instant>,
        first_command_at: Option<Instant>,
        replies_published: u64,
        /// Drop the Response Topic on the way to the responder (one that ignores it).
        strip_response_topic: bool,
    }

    impl Pair {
        fn new(
            session: &ResponderSettings,
            replies: &ReplyTable,
            settings: ExaminerSettings,
        ) -> Pair {
            let start = Instant::now();
            Pair {
                now: start,
                start,
                responder: Responder::new(session, replies),
                examiner: Examiner::new(settings, start).unwrap(),
                broker_qos: QoS::ExactlyOnce,
                subs: Vec::new(),
                next_id: 0,
                responder_done: false,
                examiner_done: false,
                uuid_at: None,
                first_command_at: None,
                replies_published: 0,
                strip_response_topic: false,
            }
        }

        /// Runs both machines to the end (both finished), within a bounded number of rounds.
        fn run(&mut self) {
            // The examiner first, so its login subscription is in place.
            self.examiner
                .handle_connected(false, self.broker_qos, self.now);
            self.step();
            self.responder
                .handle_connected(false, self.broker_qos, self.now);
            for _ in 0..1_000_000 {
                if self.step() {
                    continue;
                }
                if self.responder_done && self.examiner_done {
                    return;
                }
                let next = [self.responder.poll_timeout(), self.examiner.poll_timeout()]
                    .into_iter()
                    .flatten()
                    .min()
                    .expect("both idle with no deadline: stuck");
                assert!(
                    next - self.start < Duration::from_secs(3600),
                    "runaway clock"
                );
                self.now = self.now.max(next);
                self.responder.handle_timeout(self.now);
                self.examiner.handle_timeout(self.now);
            }
            panic!("no end within the round limit");
        }

        /// Delivers everything both machines asked for; false when there was nothing.
        fn step(&mut self) -> bool {
            let mut progressed = false;
            while let Some(action) = self.responder.poll_action() {
                progressed = true;
                match action {
                    responder::Action::Subscribe { topic, qos } => {
                        let granted = qos.min(self.broker_qos);
                        self.add_sub(&topic, granted, Side::Responder);
                        self.responder
                            .handle_subscribed(&topic, Some(granted), self.now);
                    }
                    responder::Action::Publish(out) => {
                        let response = responder::ResponseTo {
                            topic: None,
                            correlation_data: out.correlation_data.clone(),
                        };
                        self.deliver(&out.topic, &out.payload, out.qos, &response);
                        if let OutgoingKind::Reply { in_reply_to, .. } = out.kind {
                            self.replies_published += 1;
                            self.responder.handle_delivered(in_reply_to, self.now);
                        }
                    }
                    responder::Action::Ack(_) => {}
                    responder::Action::Disconnect => {
                        self.responder_done = true;
                        self.subs.retain(|s| s.2 != Side::Responder);
                    }
                }
            }
            while let Some(action) = self.examiner.poll_action() {
                progressed = true;
                match action {
                    Action::Subscribe { topic, qos } => {
                        let granted = qos.min(self.broker_qos);
                        self.add_sub(&topic, granted, Side::Examiner);
                        self.examiner
                            .handle_subscribed(&topic, Some(granted), self.now);
                    }
                    Action::Publish {
                        topic,
                        payload,
                        qos,
                        response_topic,
                        correlation_data,
                    } => {
                        if topic.ends_with("/UUID") {
                            self.uuid_at.get_or_insert(self.now);
                        } else if payload.starts_with(b"CMD") {
                            self.first_command_at.get_or_insert(self.now);
                        }
                        let response = responder::ResponseTo {
                            topic: response_topic.filter(|_| !self.strip_response_topic),
                            correlation_data,
                        };
                        self.deliver(&topic, &payload, qos, &response);
                    }
                    Action::Finished => self.examiner_done = true,
                }
            }
            progressed
        }

        fn add_sub(&mut self, filter: &str, qos: QoS, side: Side) {
            self.subs.retain(|(f, _, s)| !(f == filter && *s == side));
            self.subs.push((filter.to_owned(), qos, side));
        }

        /// Delivers a publish with its MQTT 5 properties to every matching subscription.
        fn deliver(
            &mut self,
            topic: &str,
            payload: &[u8],
            qos: QoS,
            properties: &responder::ResponseTo,
        ) {
            let targets: Vec<(QoS, Side)> = self
                .subs
                .iter()
                .filter(|(filter, _, _)| matches(filter, topic))
                .map(|(_, granted, side)| (qos.min(*granted), *side))
                .collect();
            for (qos, side) in targets {
                match side {
                    Side::Responder => {
                        self.next_id += 1;
                        let id = MessageId(self.next_id);
                        self.responder
                            .handle_request(id, topic, payload, qos, properties, self.now);
                    }
                    Side::Examiner => self.examiner.handle_message_correlated(
                        topic,
                        payload,
                        qos,
                        properties.correlation_data.as_deref(),
                        self.now,
                    ),
                }
            }
        }
    }

    fn pair_settings(n: usize, qos: QoS, seed: u64) -> ExaminerSettings {
        ExaminerSettings {
            commands: n,
            qos,
            seed,
            uuid: None,
            window: 20,
            ..settings()
        }
    }

    #[test]
    fn matcher() {
        assert!(matches("a/+", "a/b"));
        assert!(matches("a/b", "a/b"));
        assert!(!matches("a/+", "a"));
        assert!(!matches("a/+", "a/b/c"));
        assert!(!matches("a", "a/b"));
    }

    #[test]
    fn pair_runs_pass_at_every_qos() {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            for n in [7, 1000] {
                let mut s = session();
                s.qos = qos;
                let mut pair = Pair::new(&s, &ReplyTable::seed(), pair_settings(n, qos, n as u64));
                pair.run();
                let report = pair.examiner.report();
                assert!(report.passed(), "qos {qos}, n {n}:\n{report}");
                assert_eq!(report.totals().sent, n as u64);
                assert_eq!(report.totals().answered, n as u64);
                assert_eq!(report.expected_qos, qos);
                assert_eq!(pair.responder.phase(), responder::Phase::Finished);
                assert_eq!(pair.responder.uuid(), Some(report.uuid.as_str()));
                let answered: u64 = pair.responder.stats().answered.iter().map(|r| r.1).sum();
                assert_eq!(answered, n as u64);
                assert_eq!(pair.replies_published, n as u64);
                // Each of 7 commands is picked for N = 1000.
                if n == 1000 {
                    assert!(report.commands.iter().all(|c| c.sent > 50), "{report}");
                }
                let (uuid_at, first) = (pair.uuid_at.unwrap(), pair.first_command_at.unwrap());
                assert_eq!(
                    first - uuid_at,
                    Duration::from_millis(100),
                    "delay respected"
                );
            }
        }
    }

    #[test]
    fn pair_run_is_capped_by_the_broker() {
        let mut pair = Pair::new(
            &session(),
            &ReplyTable::seed(),
            pair_settings(50, QoS::ExactlyOnce, 3),
        );
        pair.broker_qos = QoS::AtLeastOnce;
        pair.run();
        let report = pair.examiner.report();
        assert!(report.passed(), "{report}");
        assert_eq!(report.expected_qos, QoS::AtLeastOnce);
        assert_eq!(pair.responder.effective_qos(), QoS::AtLeastOnce);
    }

    #[test]
    fn pair_run_with_a_wrong_reply_table_fails() {
        let mut expected = ReplyTable::seed();
        expected.0[2].1 = "Cow".to_owned();
        let settings = ExaminerSettings {
            replies: expected,
            ..pair_settings(100, QoS::ExactlyOnce, 9)
        };
        let mut pair = Pair::new(&session(), &ReplyTable::seed(), settings);
        pair.run();
        let report = pair.examiner.report();
        assert!(!report.passed());
        assert_eq!(report.commands[2].wrong, report.commands[2].sent);
        assert!(report.commands[2].sent > 0);
        assert_eq!(report.totals().missing(), 0);
        assert_eq!(pair.responder.phase(), responder::Phase::Finished);
    }

    #[test]
    fn pair_run_with_a_lower_responder_qos_fails() {
        let mut s = session();
        s.qos = QoS::AtLeastOnce;
        let mut pair = Pair::new(
            &s,
            &ReplyTable::seed(),
            pair_settings(20, QoS::ExactlyOnce, 4),
        );
        pair.run();
        let report = pair.examiner.report();
        assert!(!report.passed());
        assert_eq!(report.totals().qos_mismatches, 20);
    }

    #[test]
    fn pair_run_with_unanswered_commands_times_out() {
        // The examiner knows a command the responder ignores.
        let mut expected = ReplyTable::seed();
        expected.0.push(("CMD8".to_owned(), "Hat".to_owned()));
        let mut s = session();
        s.unknown_command = UnknownCommand::Ignore;
        let settings = ExaminerSettings {
            replies: expected,
            ..pair_settings(200, QoS::ExactlyOnce, 5)
        };
        let mut pair = Pair::new(&s, &ReplyTable::seed(), settings);
        pair.run();
        let report = pair.examiner.report();
        assert!(report.timed_out);
        assert!(report.commands[7].missing() > 0);
        assert!(!report.passed());
        assert!(report.completion_sent);
        assert_eq!(pair.responder.phase(), responder::Phase::Finished);
        assert!(pair.responder.stats().unknown > 0);
    }

    fn response_settings(source: &str) -> ExaminerSettings {
        ExaminerSettings {
            response_topic: Some(Template::parse(source, &[Var::UserId, Var::Uuid]).unwrap()),
            ..settings()
        }
    }

    /// The Response Topic and Correlation Data of each command among `actions`.
    fn requests(actions: &[Action]) -> Vec<(String, Option<String>, Bytes)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Publish {
                    topic,
                    payload,
                    response_topic,
                    correlation_data: Some(data),
                    ..
                } if topic == UUID => Some((
                    String::from_utf8_lossy(payload).into_owned(),
                    response_topic.clone(),
                    data.clone(),
                )),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn response_mode_subscribes_to_the_response_topic_and_matches_by_correlation_data() {
        let t = Instant::now();
        let response_topic = format!("2547841/responses/{UUID}");
        let mut e = Examiner::new(response_settings("{user_id}/responses/{uuid}"), t).unwrap();
        e.handle_connected(false, QoS::ExactlyOnce, t);
        e.handle_subscribed("login", Some(QoS::ExactlyOnce), t);
        actions(&mut e);
        e.handle_message("login", b"2547841", QoS::ExactlyOnce, t);
        // The Response Topic instead of the reply filter.
        assert_eq!(
            actions(&mut e),
            [Action::Subscribe {
                topic: response_topic.clone(),
                qos: QoS::ExactlyOnce
            }]
        );
        assert!(e.handles_topic(&response_topic));
        e.handle_subscribed(&response_topic, Some(QoS::ExactlyOnce), t);
        assert_eq!(e.phase(), Phase::Delaying);
        actions(&mut e);
        let start = t + Duration::from_millis(100);
        e.handle_timeout(start);
        let sent = requests(&actions(&mut e));
        assert_eq!(sent.len(), 3, "window");
        assert!(
            sent.iter()
                .all(|(_, topic, _)| topic.as_ref() == Some(&response_topic))
        );
        let mut data: Vec<&Bytes> = sent.iter().map(|(_, _, d)| d).collect();
        data.sort();
        data.dedup();
        assert_eq!(data.len(), 3, "correlation data is unique");
        // Answered out of order: matched by correlation data, not by arrival.
        let mut queue: VecDeque<(String, Option<String>, Bytes)> = sent.into_iter().rev().collect();
        let mut now = start;
        let mut answered = Vec::new();
        for _ in 0..10 {
            let Some((command, _, data)) = queue.pop_front() else {
                break;
            };
            now += Duration::from_millis(1);
            e.handle_message_correlated(
                &response_topic,
                answer(&command).as_bytes(),
                QoS::ExactlyOnce,
                Some(&data),
                now,
            );
            answered.push(data);
            queue.extend(requests(&actions(&mut e)));
        }
        assert_eq!(answered.len(), 7);
        assert_eq!(e.phase(), Phase::Finished);
        let report = e.report();
        assert!(report.passed(), "{report}");
        assert_eq!(report.totals().answered, 7);
        assert_eq!(report.totals().latencies.len(), 7);
        // After the end: late, not counted against the run.
        e.handle_message_correlated(&response_topic, b"Apple", QoS::ExactlyOnce, None, now);
        assert_eq!(e.report().late, 1);
    }

    #[test]
    fn response_mode_counts_duplicate_unknown_missing_and_wrong_responses() {
        let t = Instant::now();
        let response_topic = format!("responses/{UUID}");
        let mut e = delaying_on(
            ExaminerSettings {
                commands: 3,
                ..response_settings("responses/{uuid}")
            },
            &response_topic,
            t,
        );
        e.handle_timeout(t + Duration::from_millis(100));
        let sent = requests(&actions(&mut e));
        assert_eq!(sent.len(), 3);
        let respond = |e: &mut Examiner, payload: &str, qos, data: Option<&[u8]>| {
            e.handle_message_correlated(&response_topic, payload.as_bytes(), qos, data, t);
        };
        let (c0, _, d0) = &sent[0];
        let (c1, _, d1) = &sent[1];
        respond(&mut e, answer(c0), QoS::ExactlyOnce, Some(d0));
        respond(&mut e, answer(c0), QoS::ExactlyOnce, Some(d0));
        respond(&mut e, answer(c1), QoS::ExactlyOnce, None);
        respond(&mut e, answer(c1), QoS::ExactlyOnce, Some(b"not-ours"));
        respond(&mut e, "Wrong", QoS::AtLeastOnce, Some(d1));
        let report = e.report();
        let total = report.totals();
        assert_eq!(
            (
                total.answered,
                total.duplicates,
                total.wrong,
                total.qos_mismatches
            ),
            (2, 1, 1, 1)
        );
        assert_eq!(report.uncorrelated, 2);
        assert_eq!(total.missing(), 1);
        assert!(!report.passed());
        let text = report.to_string();
        assert!(text.contains("2 uncorrelated"), "{text}");
    }

    /// Like [`delaying`], subscribed to `filter` for replies.
    fn delaying_on(settings: ExaminerSettings, filter: &str, t: Instant) -> Examiner {
        let mut e = Examiner::new(settings, t).unwrap();
        e.handle_connected(false, QoS::ExactlyOnce, t);
        e.handle_subscribed("login", Some(QoS::ExactlyOnce), t);
        e.handle_message("login", b"2547841", QoS::ExactlyOnce, t);
        e.handle_subscribed(filter, Some(QoS::ExactlyOnce), t);
        assert_eq!(e.phase(), Phase::Delaying);
        actions(&mut e);
        e
    }

    #[test]
    fn response_topic_settings_are_checked() {
        let t = Instant::now();
        let with_command =
            Template::parse("r/{command}", &[Var::UserId, Var::Uuid, Var::Command]).unwrap();
        assert!(matches!(
            Examiner::new(
                ExaminerSettings {
                    response_topic: Some(with_command),
                    ..settings()
                },
                t
            )
            .err(),
            Some(SettingsError::ResponseTopicWithCommand(_))
        ));
        // A user ID that would render a wildcard is refused at the login, as for the others.
        let mut e = Examiner::new(
            ExaminerSettings {
                user_id: None,
                ..response_settings("{user_id}/r")
            },
            t,
        )
        .unwrap();
        e.handle_connected(false, QoS::ExactlyOnce, t);
        e.handle_message("login", b"a+", QoS::ExactlyOnce, t);
        assert_eq!(e.phase(), Phase::WaitingForLogin);
    }

    #[test]
    fn own_publishes_stay_at_or_below_every_granted_qos() {
        // A 3.1.1 broker with max_qos 1 says so only in its SUBACKs, and disconnects a
        // client that publishes at QoS 2.
        let t = Instant::now();
        let mut e = Examiner::new(settings(), t).unwrap();
        e.handle_connected(false, QoS::ExactlyOnce, t);
        e.handle_subscribed("login", Some(QoS::AtLeastOnce), t);
        e.handle_message("login", b"2547841", QoS::AtLeastOnce, t);
        assert_eq!(
            actions(&mut e),
            [
                Action::Subscribe {
                    topic: "login".to_owned(),
                    qos: QoS::ExactlyOnce
                },
                Action::Subscribe {
                    topic: format!("{UUID}/+"),
                    qos: QoS::AtLeastOnce
                }
            ]
        );
        e.handle_subscribed(&format!("{UUID}/+"), Some(QoS::AtLeastOnce), t);
        assert_eq!(
            actions(&mut e),
            [publish("2547841/UUID", UUID, QoS::AtLeastOnce)]
        );
        e.handle_timeout(t + Duration::from_millis(100));
        let all = actions(&mut e);
        assert!(!all.is_empty());
        assert!(
            all.iter().all(|a| matches!(
                a,
                Action::Publish {
                    qos: QoS::AtLeastOnce,
                    ..
                }
            )),
            "{all:?}"
        );
        assert_eq!(e.report().expected_qos, QoS::AtLeastOnce);
    }

    #[test]
    fn pair_runs_in_request_response_mode_pass_at_every_qos() {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let mut s = session();
            s.qos = qos;
            let settings = ExaminerSettings {
                response_topic: response_settings("{user_id}/responses").response_topic,
                ..pair_settings(500, qos, 11)
            };
            let mut pair = Pair::new(&s, &ReplyTable::seed(), settings);
            pair.run();
            let report = pair.examiner.report();
            assert!(report.passed(), "qos {qos}:\n{report}");
            assert_eq!(report.totals().answered, 500);
            assert_eq!(report.uncorrelated + report.unexpected, 0);
            assert_eq!(pair.replies_published, 500);
            assert_eq!(pair.responder.phase(), responder::Phase::Finished);
        }
    }

    #[test]
    fn pair_run_with_a_responder_ignoring_the_response_topic_fails() {
        let settings = ExaminerSettings {
            response_topic: response_settings("{user_id}/responses").response_topic,
            ..pair_settings(30, QoS::ExactlyOnce, 12)
        };
        let mut pair = Pair::new(&session(), &ReplyTable::seed(), settings);
        pair.strip_response_topic = true;
        pair.run();
        let report = pair.examiner.report();
        assert!(!report.passed());
        assert!(report.timed_out);
        // Ordinary replies went to the reply topics, which the examiner did not subscribe to.
        assert_eq!(report.totals().answered, 0);
        assert!(pair.replies_published > 0);
    }
}
