//! The daemon's side of the protocol: subscribe to the UUID topic, log in, learn the UUID,
//! subscribe to the command topic, answer each command from the reply table, and on the
//! completion message drain and disconnect.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{debug, error, info, warn};

use rustc_hash::FxHashMap;

use super::{ReplyTable, Shown, UnknownCommand};
use crate::topic::{Template, TopicError, Vars, validate_level, validate_topic};
use crate::vocabulary::{MessageId, QoS};

/// What the responder is told to do; the configuration builds it from `[session]`. Every
/// template renders to a valid topic and `user_id` is a valid topic level (the
/// configuration checked both).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponderSettings {
    /// The user ID the daemon logs in with.
    pub user_id: String,
    /// Where the login is published (`{user_id}` allowed).
    pub login_topic: Template,
    /// Where the UUID arrives (`{user_id}` allowed).
    pub uuid_topic: Template,
    /// Where commands arrive (`{user_id}`, `{uuid}` allowed).
    pub command_topic: Template,
    /// Where replies go (`{user_id}`, `{uuid}`, `{command}` allowed).
    pub reply_topic: Template,
    /// The payload that ends the run.
    pub completion_message: String,
    /// Requested QoS for subscriptions and replies.
    pub qos: QoS,
    /// No UUID within this long after the login → log in again.
    pub login_timeout: Duration,
    /// Bound on waiting for in-flight acknowledgements before DISCONNECT (after the
    /// completion message or SIGTERM).
    pub drain_timeout: Duration,
    /// Larger command payloads are dropped.
    pub max_payload_bytes: usize,
    /// Replies waiting for acknowledgement (queued or in flight) at most before a QoS 0
    /// command is dropped (SPEC §2 Floods); QoS 1/2 commands are held back by the broker.
    pub max_pending: usize,
    /// What to do with a command that is not in the reply table.
    pub unknown_command: UnknownCommand,
}

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Subscribe to `topic` at `qos`; report the outcome with `handle_subscribed`.
    Subscribe {
        /// Topic filter (always a valid topic without wildcards).
        topic: String,
        /// Requested QoS.
        qos: QoS,
    },
    /// Publish a message.
    Publish(Outgoing),
    /// Acknowledge an inbound message that gets no reply (dropped, ignored, completion).
    Ack(MessageId),
    /// Every reply is acknowledged (or the drain timed out): send DISCONNECT and stop.
    Disconnect,
}

/// A message the responder wants published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// Topic name.
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// QoS (already capped by what the broker granted).
    pub qos: QoS,
    /// MQTT 5 Correlation Data echoed from the command (request/response only).
    pub correlation_data: Option<Bytes>,
    /// Why it is sent.
    pub kind: OutgoingKind,
}

/// MQTT 5 request/response properties of a command (SPEC §5).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseTo {
    /// The Response Topic the command asks to be answered on.
    pub topic: Option<String>,
    /// Correlation Data to echo.
    pub correlation_data: Option<Bytes>,
}

/// Why a message is published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutgoingKind {
    /// The login (payload: the user ID).
    Login,
    /// A reply to a command. The driver acknowledges `in_reply_to` once this publish is
    /// acknowledged and then calls `handle_delivered(in_reply_to)`.
    Reply {
        /// The command answered.
        command: String,
        /// The inbound command message.
        in_reply_to: MessageId,
    },
}

/// The phase the responder is in (one INFO line per change).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// No connection.
    Disconnected,
    /// Connected, subscribing to the UUID topic.
    SubscribingUuid,
    /// Login published, waiting for the UUID.
    WaitingForUuid,
    /// UUID known, subscribing to the command topic.
    SubscribingCommands,
    /// Answering commands.
    Answering,
    /// Completion received, waiting for in-flight replies to be acknowledged.
    Draining,
    /// Done: disconnect requested.
    Finished,
}

/// Counters for the exit summary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Replies acknowledged, per command, in reply-table order (unknown commands last).
    pub answered: Vec<(String, u64)>,
    /// Unknown commands seen.
    pub unknown: u64,
    /// Payloads dropped (empty, not UTF-8, oversized).
    pub dropped: u64,
    /// Messages on topics the protocol does not expect.
    pub unexpected: u64,
    /// Replies the broker would not take (MQTT 5 failure reason, or larger than its
    /// Maximum Packet Size): the command is done with, but not counted as answered.
    pub failed: u64,
    /// Of `dropped`: QoS 0 commands that arrived with `max_pending` replies waiting.
    pub overflowed: u64,
}

/// First delay before a refused subscription is tried again; doubles up to the maximum.
const FIRST_RESUBSCRIBE_DELAY: Duration = Duration::from_millis(500);
/// Longest delay between attempts at a refused subscription.
const MAX_RESUBSCRIBE_DELAY: Duration = Duration::from_secs(60);
/// Distinct unknown commands counted by name in [`Stats::answered`]; the rest share one row,
/// so a peer cannot make the summary grow without bound.
const MAX_UNKNOWN_ROWS: usize = 32;
/// At most one WARN about commands dropped in a flood per this long.
const OVERFLOW_REPORT_INTERVAL: Duration = Duration::from_secs(10);
/// Name of the row that collects unknown commands beyond [`MAX_UNKNOWN_ROWS`].
const OTHER_UNKNOWN_ROW: &str = "(other unknown)";

/// The deadlines the responder keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    /// No UUID within `login_timeout` after the login: log in again.
    LoginTimeout,
    /// Completion received (or SIGTERM) but replies still unacknowledged after
    /// `drain_timeout`: give up.
    DrainTimeout,
    /// A refused subscription is due to be tried again.
    Resubscribe,
    /// Commands dropped in a flood since the last WARN are due to be reported.
    OverflowReport,
}

impl Timer {
    const ALL: [Timer; 4] = [
        Timer::LoginTimeout,
        Timer::DrainTimeout,
        Timer::Resubscribe,
        Timer::OverflowReport,
    ];
}

/// One optional deadline per [`Timer`] (quinn-proto's `TimerTable`).
#[derive(Debug, Default)]
struct TimerTable([Option<Instant>; Timer::ALL.len()]);

impl TimerTable {
    fn set(&mut self, timer: Timer, deadline: Instant) {
        self.0[timer as usize] = Some(deadline);
    }

    fn stop(&mut self, timer: Timer) {
        self.0[timer as usize] = None;
    }

    fn get(&self, timer: Timer) -> Option<Instant> {
        self.0[timer as usize]
    }

    fn next(&self) -> Option<Instant> {
        self.0.iter().flatten().min().copied()
    }

    /// Stops and reports `timer` if its deadline has passed.
    fn expire(&mut self, timer: Timer, now: Instant) -> bool {
        match self.get(timer) {
            Some(deadline) if deadline <= now => {
                self.stop(timer);
                true
            }
            _ => false,
        }
    }
}

/// The two subscriptions the protocol needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sub {
    /// The UUID topic, subscribed before logging in.
    Uuid,
    /// The command topic, subscribed once the UUID is known.
    Commands,
}

/// What is known once a UUID has been accepted: every topic rendered once, so that answering
/// a command allocates nothing but the outgoing message.
#[derive(Debug)]
struct Accepted {
    uuid: String,
    command_topic: String,
    /// Reply topic per reply-table entry, in table order.
    reply_topics: Vec<String>,
}

/// The responder state machine.
///
/// Feed it connection events, SUBACKs, inbound messages, delivery confirmations and expired
/// deadlines; drain [`Responder::poll_action`] after each call and sleep until
/// [`Responder::poll_timeout`]. It never does I/O and never reads a clock.
#[derive(Debug)]
pub struct Responder {
    // Configuration, rendered once.
    user_id: String,
    login_topic: String,
    login_payload: Bytes,
    uuid_topic: String,
    command_template: Template,
    reply_template: Template,
    completion_message: String,
    configured_qos: QoS,
    login_timeout: Duration,
    drain_timeout: Duration,
    max_payload_bytes: usize,
    max_pending: usize,
    /// `Some(payload)` when unknown commands are answered.
    unknown_reply: Option<Bytes>,
    /// Command → index into `replies` (and into the first rows of `stats.answered`).
    table: FxHashMap<String, usize>,
    /// Reply payloads in table order; cloning a `Bytes` is a reference-count increment.
    replies: Vec<Bytes>,

    // State of the run.
    phase: Phase,
    accepted: Option<Accepted>,
    /// Completion received: no further commands are answered, even across reconnects.
    draining: bool,
    /// SIGTERM/SIGINT received: nothing new is answered; the stop ends by this deadline.
    stop_deadline: Option<Instant>,
    /// Replies published but not yet acknowledged → row in `stats.answered`.
    in_flight: FxHashMap<MessageId, usize>,
    /// Flood drops not yet reported, and when the last report was.
    overflow_unreported: u64,
    overflow_reported_at: Option<Instant>,
    /// The broker's cap from the latest CONNACK.
    broker_qos: QoS,
    /// The lowest QoS granted in a SUBACK during the current broker session.
    granted_qos: QoS,
    /// A SUBACK (or a restored run) has told `granted_qos` in the current broker session.
    granted_known: bool,
    qos_warned: bool,
    /// SUBSCRIBEs sent on this connection whose SUBACK has not arrived.
    pending_uuid_sub: bool,
    pending_command_sub: bool,
    /// The command subscription was granted in the current broker session.
    commands_subscribed: bool,
    /// A refused subscription waiting for [`Timer::Resubscribe`].
    retry: Option<Sub>,
    resubscribe_delay: Duration,
    /// The wait for the UUID after the next login: `login_timeout`, doubled after each
    /// timeout up to `login_wait_cap`, back to `login_timeout` once a UUID arrives.
    login_wait: Duration,
    login_wait_cap: Duration,
    timers: TimerTable,
    actions: VecDeque<Action>,
    stats: Stats,
}

impl Responder {
    /// A responder for one run, not yet connected.
    ///
    /// `session` comes from the validated configuration: `user_id` is a valid topic level and
    /// every template renders to a valid topic, so the topics that do not depend on the peer
    /// are rendered here without further checks.
    pub fn new(session: &ResponderSettings, replies: &ReplyTable) -> Responder {
        let vars = Vars {
            user_id: &session.user_id,
            ..Vars::default()
        };
        let mut table = FxHashMap::with_capacity_and_hasher(replies.0.len(), Default::default());
        let mut payloads = Vec::with_capacity(replies.0.len());
        let mut answered = Vec::with_capacity(replies.0.len());
        for (command, reply) in &replies.0 {
            // A duplicated command keeps its first reply, as `ReplyTable::reply` does.
            if table.contains_key(command) {
                continue;
            }
            table.insert(command.clone(), payloads.len());
            payloads.push(Bytes::from(reply.clone()));
            answered.push((command.clone(), 0));
        }
        let unknown_reply = match &session.unknown_command {
            UnknownCommand::Ignore => None,
            UnknownCommand::Reply(text) => Some(Bytes::from(text.clone())),
        };
        Responder {
            user_id: session.user_id.clone(),
            login_topic: session.login_topic.render(&vars),
            login_payload: Bytes::from(session.user_id.clone()),
            uuid_topic: session.uuid_topic.render(&vars),
            command_template: session.command_topic.clone(),
            reply_template: session.reply_topic.clone(),
            completion_message: session.completion_message.clone(),
            configured_qos: session.qos,
            login_timeout: session.login_timeout,
            drain_timeout: session.drain_timeout,
            max_payload_bytes: session.max_payload_bytes,
            max_pending: session.max_pending.max(1),
            unknown_reply,
            table,
            replies: payloads,
            phase: Phase::Disconnected,
            accepted: None,
            draining: false,
            stop_deadline: None,
            in_flight: FxHashMap::default(),
            overflow_unreported: 0,
            overflow_reported_at: None,
            broker_qos: QoS::ExactlyOnce,
            granted_qos: QoS::ExactlyOnce,
            granted_known: false,
            qos_warned: false,
            pending_uuid_sub: false,
            pending_command_sub: false,
            commands_subscribed: false,
            retry: None,
            resubscribe_delay: FIRST_RESUBSCRIBE_DELAY,
            login_wait: session.login_timeout,
            login_wait_cap: session.login_timeout,
            timers: TimerTable::default(),
            actions: VecDeque::new(),
            stats: Stats {
                answered,
                ..Stats::default()
            },
        }
    }

    /// Lets the wait for the UUID double after each login timeout, up to `cap` (the
    /// daemon passes `reconnect.max_delay`), so a peer that never answers is not asked
    /// at a fixed rate forever. Without it every wait is `login_timeout`.
    pub fn set_login_backoff_cap(&mut self, cap: Duration) {
        self.login_wait_cap = cap.max(self.login_timeout);
    }

    /// Continues a run that a previous process started and wrote down (crash-safe resume):
    /// the UUID accepted and its command subscription in place (the broker kept the
    /// session), `in_flight` replies still awaiting acknowledgement (message, command),
    /// draining if the completion message had arrived, replies at `qos`.
    pub fn restore(
        &mut self,
        uuid: &str,
        in_flight: &[(MessageId, String)],
        draining: bool,
        qos: QoS,
    ) -> Result<(), String> {
        let accepted = self.accept(uuid.as_bytes())?;
        self.accepted = Some(accepted);
        self.commands_subscribed = true;
        self.granted_qos = qos;
        self.granted_known = true;
        self.draining = draining;
        for (id, command) in in_flight {
            let row = match self.table.get(command.as_str()) {
                Some(&index) => index,
                None => self.unknown_row(command),
            };
            self.in_flight.insert(*id, row);
        }
        info!(
            uuid,
            in_flight = in_flight.len(),
            draining,
            "resuming the run a previous process left"
        );
        Ok(())
    }

    /// A CONNACK arrived. `max_qos` is the broker's cap (MQTT 5 CONNACK; `ExactlyOnce` for
    /// 3.1.1). With `session_present` the broker kept our subscriptions.
    pub fn handle_connected(&mut self, session_present: bool, max_qos: QoS, now: Instant) {
        let _ = now;
        if self.phase == Phase::Finished {
            return;
        }
        // Every CONNACK may start a new broker session: nothing in progress survives it.
        self.void_pending();
        if !session_present {
            self.commands_subscribed = false;
            self.granted_qos = QoS::ExactlyOnce;
            self.granted_known = false;
        }
        self.broker_qos = max_qos;
        self.note_qos_cap("the broker's maximum QoS", max_qos);

        if self.accepted.is_none() {
            // Even with a session present: subscribing again is cheap and certainly safe.
            self.set_phase(Phase::SubscribingUuid);
            self.subscribe(Sub::Uuid);
        } else if self.draining {
            // No new commands are answered; the session resends what is in flight.
            self.set_phase(Phase::Draining);
        } else if session_present && self.commands_subscribed {
            self.set_phase(Phase::Answering);
        } else {
            // Resume on the same UUID; logging in again would get a new one.
            self.set_phase(Phase::SubscribingCommands);
            self.subscribe(Sub::Commands);
        }
    }

    /// The connection was lost; subscriptions in progress are void.
    pub fn handle_disconnected(&mut self, now: Instant) {
        let _ = now;
        if self.phase == Phase::Finished {
            return;
        }
        self.void_pending();
        self.set_phase(Phase::Disconnected);
    }

    /// Subscriptions in progress, their retries and the login timer end with the connection
    /// (the login timer is armed again by the next login; the drain timer keeps running).
    fn void_pending(&mut self) {
        self.pending_uuid_sub = false;
        self.pending_command_sub = false;
        self.retry = None;
        self.timers.stop(Timer::Resubscribe);
        self.timers.stop(Timer::LoginTimeout);
    }

    /// The SUBACK for `topic`: the granted QoS, or `None` when refused.
    pub fn handle_subscribed(&mut self, topic: &str, granted: Option<QoS>, now: Instant) {
        let command_topic = self.accepted.as_ref().map(|a| a.command_topic.as_str());
        if self.pending_command_sub && command_topic == Some(topic) {
            self.pending_command_sub = false;
            match granted {
                Some(qos) => {
                    self.subscribed_ok();
                    self.commands_subscribed = true;
                    self.granted_qos = self.granted_qos.min(qos);
                    self.granted_known = true;
                    self.note_qos_cap("the command subscription's granted QoS", qos);
                    if !self.draining {
                        self.set_phase(Phase::Answering);
                    }
                }
                None => self.subscription_refused(Sub::Commands, topic, now),
            }
        } else if self.pending_uuid_sub && topic == self.uuid_topic {
            self.pending_uuid_sub = false;
            match granted {
                Some(qos) => {
                    self.subscribed_ok();
                    self.granted_qos = self.granted_qos.min(qos);
                    self.granted_known = true;
                    self.note_qos_cap("the UUID subscription's granted QoS", qos);
                    // The UUID may have arrived before its SUBACK: then there is no need to
                    // log in (again).
                    if self.accepted.is_none() {
                        self.login(now);
                    }
                }
                None if self.accepted.is_none() => self.subscription_refused(Sub::Uuid, topic, now),
                None => {}
            }
        } else {
            debug!(
                mqtt_topic = topic,
                "ignoring a SUBACK for a subscription not in progress"
            );
        }
    }

    /// A message arrived at `qos`.
    pub fn handle_message(
        &mut self,
        id: MessageId,
        topic: &str,
        payload: &[u8],
        qos: QoS,
        now: Instant,
    ) {
        self.handle_request(id, topic, payload, qos, &ResponseTo::default(), now);
    }

    /// A message arrived with MQTT 5 request/response properties: a command with a valid
    /// Response Topic is answered there, its Correlation Data echoed.
    pub fn handle_request(
        &mut self,
        id: MessageId,
        topic: &str,
        payload: &[u8],
        qos: QoS,
        response: &ResponseTo,
        now: Instant,
    ) {
        if self.stop_deadline.is_some() {
            // Not acknowledged: the broker keeps it for whoever comes next.
            debug!(mqtt_topic = %Shown(topic.as_bytes()), "stopping; message left unanswered");
            return;
        }
        let on_commands = self
            .accepted
            .as_ref()
            .is_some_and(|a| a.command_topic == topic);
        if on_commands {
            self.command_message(id, payload, qos, response, now);
        } else if topic == self.uuid_topic {
            self.uuid_message(id, payload, now);
        } else {
            self.stats.unexpected += 1;
            debug!(mqtt_topic = %Shown(topic.as_bytes()), "ignoring a message on an unexpected topic");
            self.actions.push_back(Action::Ack(id));
        }
    }

    /// A message too large to be read at all (see the session's `Event::Oversized`; it is
    /// acknowledged already): dropped and counted like an oversized payload.
    pub fn handle_oversized(&mut self, topic: &str, size: usize) {
        let on_commands = self
            .accepted
            .as_ref()
            .is_some_and(|a| a.command_topic == topic);
        if on_commands {
            self.stats.dropped += 1;
            warn!(
                "dropping a command: a {size}-byte packet, more than max_payload_bytes = {} allows",
                self.max_payload_bytes
            );
        } else if topic == self.uuid_topic {
            warn!("ignoring an invalid UUID: a {size}-byte packet");
        } else {
            self.stats.unexpected += 1;
            debug!(mqtt_topic = %Shown(topic.as_bytes()), "ignoring a message on an unexpected topic");
        }
    }

    /// The reply to `id` was acknowledged by the broker at its QoS (QoS 0: written).
    pub fn handle_delivered(&mut self, id: MessageId, now: Instant) {
        let _ = now;
        let Some(row) = self.in_flight.remove(&id) else {
            debug!(id = id.0, "delivery confirmation for no reply in flight");
            return;
        };
        if let Some((_, count)) = self.stats.answered.get_mut(row) {
            *count += 1;
        }
        if self.phase == Phase::Draining && self.in_flight.is_empty() {
            info!("every reply is acknowledged");
            self.finish();
        }
        self.stop_if_drained();
    }

    /// The reply to `id` could not be delivered and will not be (the broker refused it, or
    /// it exceeds the broker's Maximum Packet Size): counted as failed, not as answered.
    pub fn handle_failed(&mut self, id: MessageId, now: Instant) {
        let _ = now;
        if self.in_flight.remove(&id).is_none() {
            debug!(id = id.0, "failure report for no reply in flight");
            return;
        }
        self.stats.failed += 1;
        if self.phase == Phase::Draining && self.in_flight.is_empty() {
            info!("every reply is acknowledged or failed");
            self.finish();
        }
        self.stop_if_drained();
    }

    /// SIGTERM/SIGINT: answer nothing new (messages stay unacknowledged, so the broker keeps
    /// them for whoever comes next), wait at most `drain_timeout` for the replies in flight,
    /// then disconnect ([`Action::Disconnect`]). The same drain as after the completion
    /// message, with the earlier of the two deadlines.
    pub fn handle_shutdown(&mut self, now: Instant) {
        if self.stop_deadline.is_some() || self.phase == Phase::Finished {
            return;
        }
        let deadline = now + self.drain_timeout;
        self.stop_deadline = Some(deadline);
        if self.in_flight.is_empty() {
            info!("stopping: nothing in flight; disconnecting");
            self.finish();
            return;
        }
        info!(
            "stopping: waiting up to {:?} for {} in-flight replies",
            self.drain_timeout,
            self.in_flight.len()
        );
        let drain = self.timers.get(Timer::DrainTimeout);
        self.timers.set(
            Timer::DrainTimeout,
            drain.map_or(deadline, |d| d.min(deadline)),
        );
    }

    /// A stop whose last reply in flight is done with ends now.
    fn stop_if_drained(&mut self) {
        if self.stop_deadline.is_some()
            && self.in_flight.is_empty()
            && self.phase != Phase::Finished
        {
            info!("in-flight replies acknowledged; disconnecting");
            self.finish();
        }
    }

    /// A deadline from `poll_timeout` passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        for timer in Timer::ALL {
            if !self.timers.expire(timer, now) {
                continue;
            }
            match timer {
                Timer::LoginTimeout => {
                    if self.phase == Phase::WaitingForUuid {
                        let waited = self.login_wait;
                        self.login_wait = (waited * 2).min(self.login_wait_cap);
                        warn!(
                            "no UUID within {}s, logging in again (next wait {}s)",
                            waited.as_secs_f64(),
                            self.login_wait.as_secs_f64()
                        );
                        self.login(now);
                    }
                }
                Timer::DrainTimeout if self.phase != Phase::Finished => {
                    let unacknowledged = self.in_flight.len();
                    if self.stop_deadline.is_some_and(|d| d <= now) {
                        warn!(
                            unacknowledged,
                            "{unacknowledged} replies still unacknowledged after {:?}; \
                             disconnecting anyway",
                            self.drain_timeout
                        );
                    } else {
                        warn!(
                            unacknowledged,
                            "drain timed out with {unacknowledged} replies still unacknowledged"
                        );
                    }
                    self.finish();
                }
                Timer::DrainTimeout => {}
                Timer::Resubscribe => {
                    if let Some(sub) = self.retry.take() {
                        self.subscribe(sub);
                    }
                }
                Timer::OverflowReport => self.report_overflow(now),
            }
        }
    }

    /// The earliest pending deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// The next action, in order.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Swaps in a new reply table (SIGHUP), without touching the connection: the reply
    /// topics are rendered again for the current UUID, in-flight replies keep what was sent
    /// and still count for their command, and the counters carry over by command name.
    /// All or nothing: if a reply topic cannot be rendered, the old table stays.
    pub fn replace_replies(&mut self, replies: &ReplyTable) -> Result<(), String> {
        let mut table = FxHashMap::with_capacity_and_hasher(replies.0.len(), Default::default());
        let mut payloads = Vec::with_capacity(replies.0.len());
        let mut commands: Vec<&str> = Vec::with_capacity(replies.0.len());
        for (command, reply) in &replies.0 {
            if table.contains_key(command) {
                continue;
            }
            table.insert(command.clone(), payloads.len());
            payloads.push(Bytes::from(reply.clone()));
            commands.push(command);
        }
        let reply_topics = match &self.accepted {
            Some(accepted) => {
                let vars = Vars {
                    user_id: &self.user_id,
                    uuid: &accepted.uuid,
                    command: "",
                };
                let mut topics = Vec::with_capacity(commands.len());
                for command in &commands {
                    let topic = self
                        .reply_template
                        .render_checked(&Vars { command, ..vars })
                        .map_err(|e| format!("reply topic for {command} {e}"))?;
                    topics.push(topic);
                }
                Some(topics)
            }
            None => None,
        };
        // New rows: the table's commands first (that is what indices into `replies` assume),
        // then the old rows that still mean something (removed commands that were answered
        // or have a reply in flight, unknown commands) after them.
        let old_rows = std::mem::take(&mut self.stats.answered);
        let mut rows: Vec<(String, u64)> = commands
            .iter()
            .map(|c| {
                let count = old_rows.iter().find(|(o, _)| o == c).map_or(0, |(_, n)| *n);
                ((*c).to_owned(), count)
            })
            .collect();
        for (row, (command, count)) in old_rows.iter().enumerate() {
            let in_flight = self.in_flight.values().any(|r| *r == row);
            if !table.contains_key(command) && (*count > 0 || in_flight) {
                rows.push((command.clone(), *count));
            }
        }
        for row in self.in_flight.values_mut() {
            let name = &old_rows[*row].0;
            *row = rows.iter().position(|(c, _)| c == name).unwrap_or(*row);
        }
        self.stats.answered = rows;
        self.table = table;
        self.replies = payloads;
        if let (Some(accepted), Some(topics)) = (&mut self.accepted, reply_topics) {
            accepted.reply_topics = topics;
        }
        Ok(())
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Whether the completion message arrived (no new commands are answered).
    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// Whether the run is over because its work is done: the completion message arrived
    /// and the drain ended (not a stop).
    pub fn is_completed(&self) -> bool {
        self.phase == Phase::Finished && self.draining
    }

    /// Whether SIGTERM/SIGINT arrived ([`Responder::handle_shutdown`]).
    pub fn is_stopping(&self) -> bool {
        self.stop_deadline.is_some()
    }

    /// The deadline of a stop: when SIGTERM arrived plus `drain_timeout`. Whatever ends the
    /// connection (the offline record, the broker's close) shares it.
    pub fn stop_deadline(&self) -> Option<Instant> {
        self.stop_deadline
    }

    /// The UUID, once accepted.
    pub fn uuid(&self) -> Option<&str> {
        self.accepted.as_ref().map(|a| a.uuid.as_str())
    }

    /// The QoS in use for replies (configured, capped by the broker).
    pub fn effective_qos(&self) -> QoS {
        self.configured_qos
            .min(self.broker_qos)
            .min(self.granted_qos)
    }

    /// [`Responder::effective_qos`] once it is settled: after a SUBACK of the current broker
    /// session (a 3.1.1 broker tells its limit only there), or when nothing can lower it
    /// any more. `None` before, when a SUBACK may still cap it.
    pub fn known_qos(&self) -> Option<QoS> {
        let qos = self.effective_qos();
        (self.granted_known || qos == QoS::AtMostOnce).then_some(qos)
    }

    /// Counters for the exit summary.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Replies published and not yet acknowledged.
    pub fn outstanding(&self) -> usize {
        self.in_flight.len()
    }

    /// A message on the UUID topic. It is acknowledged after the SUBSCRIBE it may cause, so
    /// the command subscription is on its way before the peer learns we have the UUID.
    fn uuid_message(&mut self, id: MessageId, payload: &[u8], now: Instant) {
        self.take_uuid(payload, now);
        self.actions.push_back(Action::Ack(id));
    }

    fn take_uuid(&mut self, payload: &[u8], now: Instant) {
        let _ = now;
        if let Some(accepted) = &self.accepted {
            if payload == accepted.uuid.as_bytes() {
                debug!("the UUID again; already using it");
            } else {
                // The first UUID wins: switching mid-run would orphan the peer's commands.
                warn!(
                    uuid = %Shown(payload),
                    current = %accepted.uuid,
                    "ignoring a different UUID; keeping the first one for this run"
                );
            }
            return;
        }
        let accepted = match self.accept(payload) {
            Ok(accepted) => accepted,
            Err(why) => {
                warn!(uuid = %Shown(payload), "ignoring an invalid UUID: {why}");
                return;
            }
        };
        info!(session_uuid = %accepted.uuid, "UUID received");
        self.accepted = Some(accepted);
        self.timers.stop(Timer::LoginTimeout);
        self.login_wait = self.login_timeout;
        // A retry of the UUID subscription is moot now.
        if self.retry == Some(Sub::Uuid) {
            self.retry = None;
            self.timers.stop(Timer::Resubscribe);
        }
        if self.phase != Phase::Disconnected {
            self.set_phase(Phase::SubscribingCommands);
            self.subscribe(Sub::Commands);
        }
    }

    /// Validates a UUID and renders every topic that depends on it.
    fn accept(&self, payload: &[u8]) -> Result<Accepted, String> {
        let uuid = std::str::from_utf8(payload).map_err(|_| "not UTF-8".to_owned())?;
        validate_level(uuid).map_err(|e| e.to_string())?;
        let vars = Vars {
            user_id: &self.user_id,
            uuid,
            command: "",
        };
        let command_topic = self
            .command_template
            .render_checked(&vars)
            .map_err(|e| format!("command topic {e}"))?;
        let mut reply_topics = Vec::with_capacity(self.table.len());
        let mut commands: Vec<(&String, &usize)> = self.table.iter().collect();
        commands.sort_by_key(|(_, index)| **index);
        for (command, _) in commands {
            let topic = self
                .reply_template
                .render_checked(&Vars { command, ..vars })
                .map_err(|e| format!("reply topic {e}"))?;
            reply_topics.push(topic);
        }
        Ok(Accepted {
            uuid: uuid.to_owned(),
            command_topic,
            reply_topics,
        })
    }

    /// A message on the command topic (the UUID is known).
    fn command_message(
        &mut self,
        id: MessageId,
        payload: &[u8],
        qos: QoS,
        response: &ResponseTo,
        now: Instant,
    ) {
        if self.in_flight.contains_key(&id) {
            // The session suppresses duplicates; this guards the one-reply promise anyway.
            debug!(id = id.0, "command already being answered");
            return;
        }
        let command = match self.check_payload(payload) {
            Ok(command) => command,
            Err(why) => {
                self.stats.dropped += 1;
                warn!(payload = %Shown(payload), "dropping a command: {why}");
                self.actions.push_back(Action::Ack(id));
                return;
            }
        };
        if self.draining {
            debug!(command = %Shown(payload), "draining; not answering");
            self.actions.push_back(Action::Ack(id));
            return;
        }
        if command == self.completion_message {
            self.actions.push_back(Action::Ack(id));
            self.draining = true;
            self.timers
                .set(Timer::DrainTimeout, now + self.drain_timeout);
            info!(
                outstanding = self.in_flight.len(),
                "completion message received"
            );
            if self.in_flight.is_empty() {
                self.finish();
            } else if self.phase != Phase::Disconnected {
                self.set_phase(Phase::Draining);
            }
            return;
        }
        if let Some(&index) = self.table.get(command) {
            if !self.has_slot(id, qos, now) {
                return;
            }
            let Some(topic) = self
                .accepted
                .as_ref()
                .and_then(|a| a.reply_topics.get(index))
            else {
                return;
            };
            let topic = topic.clone();
            let payload = self.replies[index].clone();
            let (topic, correlation) = destination(response, topic);
            self.reply(id, command.to_owned(), topic, correlation, payload, index);
            return;
        }
        self.stats.unknown += 1;
        warn!(command = %Shown(payload), "unknown command");
        let Some(reply_payload) = self.unknown_reply.clone() else {
            self.actions.push_back(Action::Ack(id));
            return;
        };
        if !self.has_slot(id, qos, now) {
            return;
        }
        if let Some((topic, correlation)) = response_destination(response) {
            let row = self.unknown_row(command);
            self.reply(
                id,
                command.to_owned(),
                topic,
                correlation,
                reply_payload,
                row,
            );
            return;
        }
        // The command becomes part of the reply topic: it must be one harmless level.
        let topic = validate_level(command).and_then(|()| {
            let accepted = self.accepted.as_ref().ok_or(TopicError::Empty)?;
            self.reply_template.render_checked(&Vars {
                user_id: &self.user_id,
                uuid: &accepted.uuid,
                command,
            })
        });
        match topic {
            Ok(topic) => {
                let row = self.unknown_row(command);
                self.reply(id, command.to_owned(), topic, None, reply_payload, row);
            }
            Err(why) => {
                warn!(command = %Shown(payload), "not answering an unknown command: it {why}");
                self.actions.push_back(Action::Ack(id));
            }
        }
    }

    /// Whether a command that arrived at `qos` may take a reply slot. A QoS 0 command with
    /// `max_pending` replies waiting is dropped (its sender expects no acknowledgement,
    /// and nothing else would bound the queue): counted, and reported at WARN at most
    /// every [`OVERFLOW_REPORT_INTERVAL`] with the number dropped. A QoS 1/2 command always
    /// gets one: it is acknowledged only once answered, so the broker's window (Receive
    /// Maximum over MQTT 5) bounds how many there are.
    fn has_slot(&mut self, id: MessageId, qos: QoS, now: Instant) -> bool {
        if qos != QoS::AtMostOnce || self.in_flight.len() < self.max_pending {
            return true;
        }
        self.stats.dropped += 1;
        self.stats.overflowed += 1;
        self.overflow_unreported += 1;
        self.actions.push_back(Action::Ack(id));
        match self.overflow_reported_at {
            Some(at) if now < at + OVERFLOW_REPORT_INTERVAL => {
                if self.timers.get(Timer::OverflowReport).is_none() {
                    self.timers
                        .set(Timer::OverflowReport, at + OVERFLOW_REPORT_INTERVAL);
                }
            }
            _ => self.report_overflow(now),
        }
        false
    }

    /// The WARN for the flood drops since the last one.
    fn report_overflow(&mut self, now: Instant) {
        if self.overflow_unreported == 0 {
            return;
        }
        warn!(
            dropped = self.overflow_unreported,
            "dropped {} QoS 0 commands: {} replies were already waiting \
             (session.max_pending); {} dropped in this run",
            self.overflow_unreported,
            self.max_pending,
            self.stats.overflowed
        );
        self.overflow_unreported = 0;
        self.overflow_reported_at = Some(now);
    }

    /// The checks every command payload passes before it is looked at.
    fn check_payload<'p>(&self, payload: &'p [u8]) -> Result<&'p str, String> {
        if payload.is_empty() {
            return Err("empty payload".to_owned());
        }
        if payload.len() > self.max_payload_bytes {
            return Err(format!(
                "{} bytes, more than max_payload_bytes = {}",
                payload.len(),
                self.max_payload_bytes
            ));
        }
        std::str::from_utf8(payload).map_err(|_| "not UTF-8".to_owned())
    }

    /// Publishes a reply and tracks it until `handle_delivered`.
    fn reply(
        &mut self,
        id: MessageId,
        command: String,
        topic: String,
        correlation_data: Option<Bytes>,
        payload: Bytes,
        row: usize,
    ) {
        let qos = self.effective_qos();
        debug!(%command, mqtt_topic = %topic, qos = qos.as_u8(), "answering");
        self.in_flight.insert(id, row);
        self.actions.push_back(Action::Publish(Outgoing {
            topic,
            payload,
            qos,
            correlation_data,
            kind: OutgoingKind::Reply {
                command,
                in_reply_to: id,
            },
        }));
    }

    /// The `stats.answered` row for an unknown command, bounded in number.
    fn unknown_row(&mut self, command: &str) -> usize {
        let first = self.table.len();
        let rows = &mut self.stats.answered;
        if let Some(offset) = rows[first..].iter().position(|(c, _)| c == command) {
            return first + offset;
        }
        let name = if rows.len() - first < MAX_UNKNOWN_ROWS {
            command
        } else {
            OTHER_UNKNOWN_ROW
        };
        if let Some(offset) = rows[first..].iter().position(|(c, _)| c == name) {
            return first + offset;
        }
        rows.push((name.to_owned(), 0));
        rows.len() - 1
    }

    /// Publishes the login and waits for the UUID.
    fn login(&mut self, now: Instant) {
        let qos = self.effective_qos();
        self.actions.push_back(Action::Publish(Outgoing {
            topic: self.login_topic.clone(),
            payload: self.login_payload.clone(),
            qos,
            correlation_data: None,
            kind: OutgoingKind::Login,
        }));
        self.timers.set(Timer::LoginTimeout, now + self.login_wait);
        self.set_phase(Phase::WaitingForUuid);
    }

    /// Emits a SUBSCRIBE and remembers that its SUBACK is due.
    fn subscribe(&mut self, sub: Sub) {
        let topic = match sub {
            Sub::Uuid => {
                self.pending_uuid_sub = true;
                self.uuid_topic.clone()
            }
            Sub::Commands => {
                let Some(accepted) = &self.accepted else {
                    return;
                };
                self.pending_command_sub = true;
                accepted.command_topic.clone()
            }
        };
        let qos = self.effective_qos();
        self.actions.push_back(Action::Subscribe { topic, qos });
    }

    fn subscribed_ok(&mut self) {
        self.resubscribe_delay = FIRST_RESUBSCRIBE_DELAY;
    }

    /// A refused subscription is retried with a doubling delay; never silently dropped.
    fn subscription_refused(&mut self, sub: Sub, topic: &str, now: Instant) {
        let delay = self.resubscribe_delay;
        error!(
            mqtt_topic = topic,
            "the broker refused the subscription; retrying in {} ms",
            delay.as_millis()
        );
        self.retry = Some(sub);
        self.timers.set(Timer::Resubscribe, now + delay);
        self.resubscribe_delay = (delay * 2).min(MAX_RESUBSCRIBE_DELAY);
    }

    /// Logs once when the QoS in use drops below the configured one.
    fn note_qos_cap(&mut self, cause: &str, value: QoS) {
        if !self.qos_warned && self.effective_qos() < self.configured_qos {
            self.qos_warned = true;
            warn!(
                configured = self.configured_qos.as_u8(),
                granted = value.as_u8(),
                "QoS capped to {} by {cause} (configured {})",
                value,
                self.configured_qos
            );
        }
    }

    /// Asks for DISCONNECT; the run is over.
    fn finish(&mut self) {
        // Flood drops the 10 s throttle still holds back are told now, before the run ends
        // (the throttle's clock does not matter any more).
        if let Some(at) = self.overflow_reported_at {
            self.report_overflow(at);
        }
        // Subscriptions still in progress are moot: a SUBACK that comes back refused after
        // this must not arm a retry that subscribes after the DISCONNECT.
        self.void_pending();
        self.timers = TimerTable::default();
        self.actions.push_back(Action::Disconnect);
        self.set_phase(Phase::Finished);
    }

    fn set_phase(&mut self, phase: Phase) {
        if self.phase == phase {
            return;
        }
        self.phase = phase;
        match phase {
            Phase::Disconnected => info!("disconnected"),
            Phase::SubscribingUuid => {
                info!(mqtt_topic = %self.uuid_topic, "subscribing to the UUID topic")
            }
            Phase::WaitingForUuid => info!(
                mqtt_topic = %self.login_topic,
                user_id = %self.user_id,
                "logged in, waiting for the UUID"
            ),
            Phase::SubscribingCommands => info!(
                mqtt_topic = self.accepted.as_ref().map(|a| a.command_topic.as_str()),
                "subscribing to the command topic"
            ),
            Phase::Answering => info!(session_uuid = self.uuid(), "answering commands"),
            Phase::Draining => info!(
                outstanding = self.in_flight.len(),
                "draining: waiting for replies to be acknowledged"
            ),
            Phase::Finished => info!("finished, disconnecting"),
        }
    }
}

/// Where a reply goes: the command's Response Topic when it has a valid one (with its
/// Correlation Data), else `ordinary`.
fn destination(response: &ResponseTo, ordinary: String) -> (String, Option<Bytes>) {
    response_destination(response).unwrap_or((ordinary, None))
}

/// The command's Response Topic and Correlation Data, if it has a topic one may publish to;
/// an unusable one is logged and ignored.
fn response_destination(response: &ResponseTo) -> Option<(String, Option<Bytes>)> {
    let topic = response.topic.as_ref()?;
    match validate_topic(topic) {
        Ok(()) => Some((topic.clone(), response.correlation_data.clone())),
        Err(why) => {
            warn!(
                response_topic = %Shown(topic.as_bytes()),
                "ignoring an invalid Response Topic (it {why}); replying on the reply topic"
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::testing::session;
    use crate::topic::Var;

    const UUID: &str = "6533a9a8-5b52-4ccb-95c1-4b75383d5c38";

    fn actions(r: &mut Responder) -> Vec<Action> {
        std::iter::from_fn(|| r.poll_action()).collect()
    }

    fn sub(topic: &str, qos: QoS) -> Action {
        Action::Subscribe {
            topic: topic.to_owned(),
            qos,
        }
    }

    fn login(qos: QoS) -> Action {
        Action::Publish(Outgoing {
            topic: "login".to_owned(),
            payload: Bytes::from_static(b"2547841"),
            qos,
            correlation_data: None,
            kind: OutgoingKind::Login,
        })
    }

    fn reply(command: &str, text: &'static str, id: u64, qos: QoS) -> Action {
        Action::Publish(Outgoing {
            topic: format!("{UUID}/{command}"),
            payload: Bytes::from_static(text.as_bytes()),
            qos,
            correlation_data: None,
            kind: OutgoingKind::Reply {
                command: command.to_owned(),
                in_reply_to: MessageId(id),
            },
        })
    }

    fn ms(base: Instant, n: u64) -> Instant {
        base + Duration::from_millis(n)
    }

    /// A responder that has logged in and is waiting for the UUID.
    fn waiting(session: &ResponderSettings, now: Instant) -> Responder {
        let mut r = Responder::new(session, &ReplyTable::seed());
        r.handle_connected(false, QoS::ExactlyOnce, now);
        r.handle_subscribed("2547841/UUID", Some(QoS::ExactlyOnce), now);
        assert_eq!(r.phase(), Phase::WaitingForUuid);
        actions(&mut r);
        r
    }

    /// A responder answering on [`UUID`].
    fn answering(session: &ResponderSettings, now: Instant) -> Responder {
        let mut r = waiting(session, now);
        r.handle_message(
            MessageId(1),
            "2547841/UUID",
            UUID.as_bytes(),
            QoS::ExactlyOnce,
            now,
        );
        r.handle_subscribed(UUID, Some(QoS::ExactlyOnce), now);
        assert_eq!(r.phase(), Phase::Answering);
        actions(&mut r);
        r
    }

    #[test]
    fn replace_replies_swaps_the_table_and_rerenders_reply_topics() {
        let t = Instant::now();
        let mut r = answering(&session(), t);
        r.handle_message(MessageId(2), UUID, b"CMD1", QoS::ExactlyOnce, t);
        r.handle_message(MessageId(3), UUID, b"CMD2", QoS::ExactlyOnce, t);
        actions(&mut r);
        r.handle_delivered(MessageId(2), t);
        let table = |pairs: &[(&str, &str)]| {
            ReplyTable(
                pairs
                    .iter()
                    .map(|(c, v)| (c.to_string(), v.to_string()))
                    .collect(),
            )
        };
        // CMD2 moves to another row and CMD1 disappears; a new command arrives.
        r.replace_replies(&table(&[("NEW", "Fresh"), ("CMD2", "Kitten")]))
            .unwrap();
        assert_eq!(r.phase(), Phase::Answering, "the connection is untouched");
        assert_eq!(actions(&mut r), []);
        r.handle_message(MessageId(4), UUID, b"NEW", QoS::ExactlyOnce, t);
        r.handle_message(MessageId(5), UUID, b"CMD2", QoS::ExactlyOnce, t);
        r.handle_message(MessageId(6), UUID, b"CMD1", QoS::ExactlyOnce, t);
        assert_eq!(
            actions(&mut r),
            [
                reply("NEW", "Fresh", 4, QoS::ExactlyOnce),
                reply("CMD2", "Kitten", 5, QoS::ExactlyOnce),
                Action::Ack(MessageId(6)),
            ]
        );
        assert_eq!(r.stats().unknown, 1, "CMD1 is unknown now");
        // The reply in flight before the reload still counts for its command.
        for id in [3, 4, 5] {
            r.handle_delivered(MessageId(id), t);
        }
        assert_eq!(
            r.stats().answered,
            [
                ("NEW".to_owned(), 1),
                ("CMD2".to_owned(), 2),
                ("CMD1".to_owned(), 1)
            ]
        );
        // Before the UUID is known there are no topics to render; they come with it.
        let mut r = waiting(&session(), t);
        r.replace_replies(&table(&[("X", "Y")])).unwrap();
        r.handle_message(
            MessageId(1),
            "2547841/UUID",
            UUID.as_bytes(),
            QoS::ExactlyOnce,
            t,
        );
        r.handle_subscribed(UUID, Some(QoS::ExactlyOnce), t);
        actions(&mut r);
        r.handle_message(MessageId(2), UUID, b"X", QoS::ExactlyOnce, t);
        assert_eq!(actions(&mut r), [reply("X", "Y", 2, QoS::ExactlyOnce)]);
    }

    #[test]
    fn replace_replies_keeps_the_old_table_when_a_topic_cannot_be_rendered() {
        let t = Instant::now();
        let mut r = answering(&session(), t);
        // A command long enough to push the reply topic past MQTT's 65535-byte limit.
        let long = "C".repeat(70_000);
        let bad = ReplyTable(vec![("CMD1".into(), "New".into()), (long, "x".into())]);
        assert!(r.replace_replies(&bad).is_err());
        r.handle_message(MessageId(2), UUID, b"CMD1", QoS::ExactlyOnce, t);
        assert_eq!(
            actions(&mut r),
            [reply("CMD1", "Apple", 2, QoS::ExactlyOnce)]
        );
    }

    #[test]
    fn happy_path() {
        let t = Instant::now();
        let mut r = Responder::new(&session(), &ReplyTable::seed());
        assert_eq!(r.phase(), Phase::Disconnected);
        assert_eq!(r.poll_timeout(), None);
        r.handle_connected(false, QoS::ExactlyOnce, t);
        assert_eq!(r.phase(), Phase::SubscribingUuid);
        assert_eq!(actions(&mut r), [sub("2547841/UUID", QoS::ExactlyOnce)]);
        r.handle_subscribed("2547841/UUID", Some(QoS::ExactlyOnce), t);
        assert_eq!(r.phase(), Phase::WaitingForUuid);
        assert_eq!(actions(&mut r), [login(QoS::ExactlyOnce)]);
        assert_eq!(r.poll_timeout(), Some(t + Duration::from_secs(30)));

        r.handle_message(
            MessageId(1),
            "2547841/UUID",
            UUID.as_bytes(),
            QoS::ExactlyOnce,
            ms(t, 10),
        );
        assert_eq!(r.phase(), Phase::SubscribingCommands);
        assert_eq!(r.uuid(), Some(UUID));
        assert_eq!(r.poll_timeout(), None, "login timer cancelled");
        assert_eq!(
            actions(&mut r),
            [sub(UUID, QoS::ExactlyOnce), Action::Ack(MessageId(1))]
        );
        r.handle_subscribed(UUID, Some(QoS::ExactlyOnce), ms(t, 11));
        assert_eq!(r.phase(), Phase::Answering);

        r.handle_message(MessageId(2), UUID, b"CMD4", QoS::ExactlyOnce, ms(t, 3000));
        r.handle_message(MessageId(3), UUID, b"CMD4", QoS::ExactlyOnce, ms(t, 3001));
        assert_eq!(
            actions(&mut r),
            [
                reply("CMD4", "Rat", 2, QoS::ExactlyOnce),
                reply("CMD4", "Rat", 3, QoS::ExactlyOnce)
            ]
        );
        assert_eq!(r.outstanding(), 2);
        r.handle_delivered(MessageId(2), ms(t, 3002));
        r.handle_delivered(MessageId(3), ms(t, 3002));
        r.handle_delivered(MessageId(3), ms(t, 3002)); // unknown now: ignored
        assert_eq!(r.outstanding(), 0);
        assert_eq!(r.stats().answered[3], ("CMD4".to_owned(), 2));

        r.handle_message(
            MessageId(4),
            UUID,
            b"Well done my IoT!",
            QoS::ExactlyOnce,
            ms(t, 4000),
        );
        assert_eq!(
            actions(&mut r),
            [Action::Ack(MessageId(4)), Action::Disconnect]
        );
        assert_eq!(r.phase(), Phase::Finished);
        assert_eq!(r.poll_timeout(), None);
    }

    #[test]
    fn response_topics_are_answered_with_correlation_data_echoed() {
        let t = Instant::now();
        let mut s = session();
        s.unknown_command = UnknownCommand::Reply("UNKNOWN".to_owned());
        let mut r = answering(&s, t);
        let request = |topic: &str| ResponseTo {
            topic: Some(topic.to_owned()),
            correlation_data: Some(Bytes::from_static(b"\x00\x2a")),
        };
        r.handle_request(
            MessageId(10),
            UUID,
            b"CMD4",
            QoS::ExactlyOnce,
            &request("app/resp/7"),
            t,
        );
        let Some(Action::Publish(out)) = r.poll_action() else {
            panic!("no reply");
        };
        assert_eq!(out.topic, "app/resp/7");
        assert_eq!(out.payload, &b"Rat"[..]);
        assert_eq!(out.correlation_data, Some(Bytes::from_static(b"\x00\x2a")));

        // Unusable Response Topics: the ordinary reply, without correlation data.
        for (id, bad) in [(11, ""), (12, "app/+/x"), (13, "app/#"), (14, "a\0b")] {
            r.handle_request(
                MessageId(id),
                UUID,
                b"CMD1",
                QoS::ExactlyOnce,
                &request(bad),
                t,
            );
            let Some(Action::Publish(out)) = r.poll_action() else {
                panic!("no reply for Response Topic {bad:?}");
            };
            assert_eq!(out.topic, format!("{UUID}/CMD1"), "for {bad:?}");
            assert_eq!(out.correlation_data, None);
        }

        // An unknown command answered on its (valid) Response Topic, even when the command
        // itself could not be a topic level.
        r.handle_request(
            MessageId(20),
            UUID,
            b"a/#",
            QoS::ExactlyOnce,
            &request("app/resp/8"),
            t,
        );
        let Some(Action::Publish(out)) = r.poll_action() else {
            panic!("no reply to the unknown command");
        };
        assert_eq!(out.topic, "app/resp/8");
        assert_eq!(out.payload, &b"UNKNOWN"[..]);

        // Without properties: exactly as before.
        r.handle_request(
            MessageId(21),
            UUID,
            b"CMD2",
            QoS::ExactlyOnce,
            &ResponseTo::default(),
            t,
        );
        let Some(Action::Publish(out)) = r.poll_action() else {
            panic!("no reply");
        };
        assert_eq!(out.topic, format!("{UUID}/CMD2"));
        assert_eq!(r.poll_action(), None);
    }

    #[test]
    fn every_table_command_is_answered_with_its_reply() {
        let t = Instant::now();
        let mut r = answering(&session(), t);
        let table = ReplyTable::seed();
        for (i, (command, text)) in table.0.iter().enumerate() {
            let id = 10 + i as u64;
            r.handle_message(MessageId(id), UUID, command.as_bytes(), QoS::ExactlyOnce, t);
            let Some(Action::Publish(out)) = r.poll_action() else {
                panic!("no reply to {command}");
            };
            assert_eq!(out.topic, format!("{UUID}/{command}"));
            assert_eq!(out.payload, text.as_bytes());
            r.handle_delivered(MessageId(id), t);
        }
        assert!(r.stats().answered.iter().all(|(_, n)| *n == 1));
        assert_eq!(r.stats().answered.len(), 7);
    }

    #[test]
    fn hostile_uuids_are_rejected_without_subscribing() {
        let t = Instant::now();
        let long = "x".repeat(257);
        let hostile: [&[u8]; 9] = [
            b"",
            b"+",
            b"#",
            b"a/b",
            b"abc+",
            b"a\0b",
            long.as_bytes(),
            b"\xff\xfe",
            b"/",
        ];
        for payload in hostile {
            let mut r = waiting(&session(), t);
            r.handle_message(MessageId(7), "2547841/UUID", payload, QoS::ExactlyOnce, t);
            assert_eq!(actions(&mut r), [Action::Ack(MessageId(7))], "{payload:?}");
            assert_eq!(r.phase(), Phase::WaitingForUuid);
            assert_eq!(r.uuid(), None);
            assert!(
                r.poll_timeout().is_some(),
                "still waiting with a login timer"
            );
        }
        // The longest valid level is accepted.
        let mut r = waiting(&session(), t);
        let longest = "x".repeat(256);
        r.handle_message(
            MessageId(7),
            "2547841/UUID",
            longest.as_bytes(),
            QoS::ExactlyOnce,
            t,
        );
        assert_eq!(
            actions(&mut r),
            [sub(&longest, QoS::ExactlyOnce), Action::Ack(MessageId(7))]
        );
    }

    #[test]
    fn uuid_rejected_when_a_rendered_topic_is_invalid() {
        let t = Instant::now();
        let mut s = session();
        // A command topic longer than MQTT allows once the UUID is in it.
        let prefix = "p/".repeat(32767);
        s.command_topic = Template::parse(&format!("{prefix}{{uuid}}"), &[Var::Uuid]).unwrap();
        let mut r = waiting(&s, t);
        r.handle_message(MessageId(1), "2547841/UUID", b"abc", QoS::ExactlyOnce, t);
        assert_eq!(actions(&mut r), [Action::Ack(MessageId(1))]);
        assert_eq!(r.uuid(), None);
    }

    #[test]
    fn first_uuid_wins() {
        let t = Instant::now();
        let mut r = answering(&session(), t);
        r.handle_message(
            MessageId(5),
            "2547841/UUID",
            UUID.as_bytes(),
            QoS::ExactlyOnce,
            t,
        );
        r.handle_message(
            MessageId(6),
            "2547841/UUID",
            b"other-uuid",
            QoS::ExactlyOnce,
            t,
        );
        assert_eq!(
            actions(&mut r),
            [Action::Ack(MessageId(5)), Action::Ack(MessageId(6))]
        );
        assert_eq!(r.uuid(), Some(UUID));
        assert_eq!(r.phase(), Phase::Answering);
    }

    #[test]
    fn uuid_before_its_suback_skips_the_login() {
        let t = Instant::now();
        let mut r = Responder::new(&session(), &ReplyTable::seed());
        r.handle_connected(false, QoS::ExactlyOnce, t);
        actions(&mut r);
        r.handle_message(
            MessageId(1),
            "2547841/UUID",
            UUID.as_bytes(),
            QoS::ExactlyOnce,
            t,
        );
        assert_eq!(r.phase(), Phase::SubscribingCommands);
        assert_eq!(
            actions(&mut r),
            [sub(UUID, QoS::ExactlyOnce), Action::Ack(MessageId(1))]
        );
        // The late SUBACK still caps the QoS but does not log in.
        r.handle_subscribed("2547841/UUID", Some(QoS::AtLeastOnce), t);
        assert_eq!(actions(&mut r), []);
        assert_eq!(r.effective_qos(), QoS::AtLeastOnce);
        assert_eq!(r.poll_timeout(), None);
        r.handle_subscribed(UUID, Some(QoS::ExactlyOnce), t);
        assert_eq!(r.phase(), Phase::Answering);
    }

    #[test]
    fn commands_before_the_command_suback_are_answered() {
        let t = Instant::now();
        let mut r = waiting(&session(), t);
        r.handle_message(
            MessageId(1),
            "2547841/UUID",
            UUID.as_bytes(),
            QoS::ExactlyOnce,
            t,
        );
        actions(&mut r);
        r.handle_message(MessageId(2), UUID, b"CMD1", QoS::ExactlyOnce, t);
        assert_eq!(
            actions(&mut r),
            [reply("CMD1", "Apple", 2, QoS::ExactlyOnce)]
        );
        assert_eq!(r.phase(), Phase::SubscribingCommands);
    }

    #[test]
    fn refused_subscriptions_are_retried_with_doubling_delay() {
        let t = Instant::now();
        let mut r = Responder::new(&session(), &ReplyTable::seed());
        r.handle_connected(false, QoS::ExactlyOnce, t);
        actions(&mut r);
        let mut now = t;
        let mut expected = Duration::from_millis(500);
        for _ in 0..10 {
            r.handle_subscribed("2547841/UUID", None, now);
            assert_eq!(actions(&mut r), []);
            assert_eq!(r.phase(), Phase::SubscribingUuid);
            assert_eq!(r.poll_timeout(), Some(now + expected));
            now += expected;
            r.handle_timeout(now - Duration::from_millis(1));
            assert_eq!(actions(&mut r), [], "not due yet");
            r.handle_timeout(now);
            assert_eq!(actions(&mut r), [sub("2547841/UUID", QoS::ExactlyOnce)]);
            expected = (expected * 2).min(Duration::from_secs(60));
        }
        assert_eq!(expected, Duration::from_secs(60));
        // Success resets the delay; the command subscription starts again at 500 ms.
        r.handle_subscribed("2547841/UUID", Some(QoS::ExactlyOnce), now);
        r.handle_message(
            MessageId(1),
            "2547841/UUID",
            UUID.as_bytes(),
            QoS::ExactlyOnce,
            now,
        );
        actions(&mut r);
        r.handle_subscribed(UUID, None, now);
        assert_eq!(r.phase(), Phase::SubscribingCommands);
        assert_eq!(r.poll_timeout(), Some(now + Duration::from_millis(500)));
        r.handle_timeout(now + Duration::from_millis(500));
        assert_eq!(actions(&mut r), [sub(UUID, QoS::ExactlyOnce)]);
        r.handle_subscribed(UUID, Some(QoS::ExactlyOnce), now);
        assert_eq!(r.phase(), Phase::Answering);
    }

    #[test]
    fn subacks_not_pending_are_ignored() {
        let t = Instant::now();
        let mut r = answering(&session(), t);
        r.handle_subscribed(UUID, None, t);
        r.handle_subscribed("2547841/UUID", None, t);
        r.handle_subscribed("elsewhere", Some(QoS::AtMostOnce), t);
        assert_eq!(actions(&mut r), []);
        assert_eq!(r.poll_timeout(), None);
        assert_eq!(r.effective_qos(), QoS::ExactlyOnce);
        assert_eq!(r.phase(), Phase::Answering);
    }

    #[test]
    fn qos_is_capped_by_the_broker_and_by_subacks() {
        let t = Instant::now();
        let mut r = Responder::new(&session(), &ReplyTable::seed());
        r.handle_connected(false, QoS::AtLeastOnce, t);
        assert_eq!(r.effective_qos(), QoS::AtLeastOnce);
        assert_eq!(actions(&mut r), [sub("2547841/UUID", QoS::AtLeastOnce)]);
        r.handle_subscribed("2547841/UUID", Some(QoS::AtMostOnce), t);
        assert_eq!(r.effective_qos(), QoS::AtMostOnce);
        assert_eq!(actions(&mut r), [login(QoS::AtMostOnce)]);

        // A SUBACK granting 1 caps replies at 1.
        let mut r = waiting(&session(), t);
        r.handle_message(
            MessageId(1),
            "2547841/UUID",
            UUID.as_bytes(),
            QoS::ExactlyOnce,
            t,
        );
        r.handle_subscribed(UUID, Some(QoS::AtLeastOnce), t);
        actions(&mut r);
        r.handle_message(MessageId(2), UUID, b"CMD2", QoS::ExactlyOnce, t);
        assert_eq!(actions(&mut r), [reply("CMD2", "Cat", 2, QoS::AtLeastOnce)]);

        // Configured QoS 0 is never raised.
        let mut s = session();
        s.qos = QoS::AtMostOnce;
        let mut r = Responder::new(&s, &ReplyTable::seed());
        r.handle_connected(false, QoS::ExactlyOnce, t);
        assert_eq!(actions(&mut r), [sub("2547841/UUID", QoS::AtMostOnce)]);
    }

    #[test]
    fn known_qos_waits_for_a_suback_of_the_current_broker_session() {
        let t = Instant::now();
        let mut r = Responder::new(&session(), &ReplyTable::seed());
        assert_eq!(r.known_qos(), None, "not connected yet");
        r.handle_connected(false, QoS::ExactlyOnce, t);
        assert_eq!(r.known_qos(), None, "a 3.1.1 SUBACK may still cap it");
        actions(&mut r);
        r.handle_subscribed("2547841/UUID", Some(QoS::AtLeastOnce), t);
        assert_eq!(r.known_qos(), Some(QoS::AtLeastOnce));
        // A session kept by the broker keeps its grants; a new one must grant again.
        r.handle_disconnected(t);
        r.handle_connected(true, QoS::ExactlyOnce, t);
        assert_eq!(r.known_qos(), Some(QoS::AtLeastOnce));
        r.handle_disconnected(t);
        r.handle_connected(false, QoS::ExactlyOnce, t);
        assert_eq!(r.known_qos(), None);

        // Nothing lowers QoS 0: known at once.
        let mut r = Responder::new(&session(), &ReplyTable::seed());
        r.handle_connected(false, QoS::AtMostOnce, t);
        assert_eq!(r.known_qos(), Some(QoS::AtMostOnce));
    }

    #[test]
    fn login_timeout_logs_in_again() {
        let t = Instant::now();
        let mut r = waiting(&session(), t);
        let deadline = t + Duration::from_secs(30);
        r.handle_timeout(deadline - Duration::from_millis(1));
        assert_eq!(actions(&mut r), []);
        r.handle_timeout(deadline);
        assert_eq!(actions(&mut r), [login(QoS::ExactlyOnce)]);
        assert_eq!(r.poll_timeout(), Some(deadline + Duration::from_secs(30)));
        assert_eq!(r.phase(), Phase::WaitingForUuid);
    }

    #[test]
    fn login_timeout_backs_off_up_to_the_cap_and_resets_with_the_uuid() {
        let t = Instant::now();
        let mut r = Responder::new(&session(), &ReplyTable::seed());
        r.set_login_backoff_cap(Duration::from_secs(100));
        r.handle_connected(false, QoS::ExactlyOnce, t);
        r.handle_subscribed("2547841/UUID", Some(QoS::ExactlyOnce), t);
        actions(&mut r);
        // 30 s, then 60, then 100 (the cap), and it stays there.
        let mut now = t;
        for wait in [30, 60, 100, 100] {
            let deadline = now + Duration::from_secs(wait);
            assert_eq!(r.poll_timeout(), Some(deadline), "wait {wait}");
            r.handle_timeout(deadline);
            assert_eq!(actions(&mut r), [login(QoS::ExactlyOnce)]);
            now = deadline;
        }
        // A reconnect before the UUID keeps the grown wait (the peer is still silent).
        r.handle_disconnected(now);
        r.handle_connected(false, QoS::ExactlyOnce, now);
        r.handle_subscribed("2547841/UUID", Some(QoS::ExactlyOnce), now);
        actions(&mut r);
        assert_eq!(r.poll_timeout(), Some(now + Duration::from_secs(100)));
        // The UUID resets it: a later login (a new broker session) waits 30 s again.
        r.handle_message(
            MessageId(1),
            "2547841/UUID",
            UUID.as_bytes(),
            QoS::ExactlyOnce,
            now,
        );
        assert_eq!(r.login_wait, Duration::from_secs(30));
        // A cap below login_timeout means no growth at all.
        let mut r = waiting(&session(), t);
        r.set_login_backoff_cap(Duration::from_secs(1));
        r.handle_timeout(t + Duration::from_secs(30));
        actions(&mut r);
        assert_eq!(r.poll_timeout(), Some(t + Duration::from_secs(60)));
    }

    #[test]
    fn unknown_commands_are_ignored_by_default() {
        let t = Instant::now();
        let mut r = answering(&session(), t);
        r.handle_message(MessageId(2), UUID, b"CMD8", QoS::ExactlyOnce, t);
        r.handle_message(MessageId(3), UUID, b"#", QoS::ExactlyOnce, t);
        assert_eq!(
            actions(&mut r),
            [Action::Ack(MessageId(2)), Action::Ack(MessageId(3))]
        );
        assert_eq!(r.stats().unknown, 2);
        assert_eq!(r.outstanding(), 0);
    }

    #[test]
    fn unknown_commands_get_the_unknown_reply_on_a_safe_topic_only() {
        let t = Instant::now();
        let mut s = session();
        s.unknown_command = UnknownCommand::Reply("UNKNOWN".to_owned());
        let mut r = answering(&s, t);
        r.handle_message(MessageId(2), UUID, b"CMD8", QoS::ExactlyOnce, t);
        assert_eq!(
            actions(&mut r),
            [reply("CMD8", "UNKNOWN", 2, QoS::ExactlyOnce)]
        );
        r.handle_delivered(MessageId(2), t);
        assert_eq!(r.stats().answered.last(), Some(&("CMD8".to_owned(), 1)));
        for (id, hostile) in [b"#".as_slice(), b"+", b"a/b", b"a\0", b"CMD+"]
            .into_iter()
            .enumerate()
        {
            let id = MessageId(10 + id as u64);
            r.handle_message(id, UUID, hostile, QoS::ExactlyOnce, t);
            assert_eq!(actions(&mut r), [Action::Ack(id)], "{hostile:?}");
        }
        assert_eq!(r.stats().unknown, 6);
        assert_eq!(r.outstanding(), 0);
    }

    #[test]
    fn unknown_command_rows_are_bounded() {
        let t = Instant::now();
        let mut s = session();
        s.unknown_command = UnknownCommand::Reply("UNKNOWN".to_owned());
        let mut r = answering(&s, t);
        for i in 0..100u64 {
            let command = format!("X{i}");
            r.handle_message(
                MessageId(100 + i),
                UUID,
                command.as_bytes(),
                QoS::ExactlyOnce,
                t,
            );
            r.handle_delivered(MessageId(100 + i), t);
        }
        let rows = &r.stats().answered;
        assert_eq!(rows.len(), 7 + MAX_UNKNOWN_ROWS + 1);
        assert_eq!(rows.last(), Some(&(OTHER_UNKNOWN_ROW.to_owned(), 68)));
    }

    #[test]
    fn a_qos0_flood_beyond_max_pending_is_dropped_counted_and_reported_every_10s() {
        let t = Instant::now();
        let mut settings = session();
        settings.max_pending = 3;
        let mut r = answering(&settings, t);
        let publishes = |actions: &[Action]| {
            actions
                .iter()
                .filter(|a| matches!(a, Action::Publish(_)))
                .count()
        };
        for id in 10..15 {
            r.handle_message(MessageId(id), UUID, b"CMD1", QoS::AtMostOnce, t);
        }
        let first = actions(&mut r);
        assert_eq!(publishes(&first), 3, "{first:?}");
        assert_eq!(
            first[3..],
            [Action::Ack(MessageId(13)), Action::Ack(MessageId(14))]
        );
        assert_eq!((r.stats().dropped, r.stats().overflowed), (2, 2));
        // The first drop was reported at once; the next report is due 10 s after it.
        assert_eq!(r.poll_timeout(), Some(t + OVERFLOW_REPORT_INTERVAL));

        // QoS 1/2 commands are never dropped: the broker holds the rest back.
        r.handle_message(MessageId(20), UUID, b"CMD2", QoS::AtLeastOnce, t);
        r.handle_message(MessageId(21), UUID, b"CMD2", QoS::ExactlyOnce, t);
        assert_eq!(publishes(&actions(&mut r)), 2);
        // Neither is the completion message, nor an unknown command that needs no slot.
        r.handle_message(MessageId(22), UUID, b"NOPE", QoS::AtMostOnce, t);
        assert_eq!(actions(&mut r), [Action::Ack(MessageId(22))]);
        assert_eq!(r.stats().overflowed, 2);

        // A slot freed: the next QoS 0 command is answered.
        for id in [10, 11, 12] {
            r.handle_delivered(MessageId(id), t);
        }
        r.handle_message(MessageId(30), UUID, b"CMD1", QoS::AtMostOnce, t);
        assert_eq!(publishes(&actions(&mut r)), 1);
        r.handle_timeout(t + OVERFLOW_REPORT_INTERVAL);
        assert_eq!(r.poll_timeout(), None, "nothing left to report");

        r.handle_message(MessageId(31), UUID, b"CMD1", QoS::AtMostOnce, t);
        r.handle_message(MessageId(32), UUID, b"CMD1", QoS::AtMostOnce, t);
        r.handle_message(
            MessageId(33),
            UUID,
            b"Well done my IoT!",
            QoS::AtMostOnce,
            t,
        );
        let last = actions(&mut r);
        assert_eq!(publishes(&last), 0, "{last:?}");
        assert_eq!(r.stats().overflowed, 4);
        assert_eq!(
            r.phase(),
            Phase::Draining,
            "the completion message is never dropped"
        );
    }

    #[test]
    fn bad_payloads_are_dropped() {
        let t = Instant::now();
        let mut s = session();
        s.max_payload_bytes = 8;
        s.unknown_command = UnknownCommand::Reply("UNKNOWN".to_owned());
        let mut r = answering(&s, t);
        for (i, payload) in [b"".as_slice(), b"123456789", b"CMD\xff"]
            .into_iter()
            .enumerate()
        {
            let id = MessageId(i as u64 + 2);
            r.handle_message(id, UUID, payload, QoS::ExactlyOnce, t);
            assert_eq!(actions(&mut r), [Action::Ack(id)], "{payload:?}");
        }
        assert_eq!(r.stats().dropped, 3);
        // Exactly the limit is accepted (and answered as unknown here).
        r.handle_message(MessageId(9), UUID, b"12345678", QoS::ExactlyOnce, t);
        assert_eq!(
            actions(&mut r),
            [reply("12345678", "UNKNOWN", 9, QoS::ExactlyOnce)]
        );
        assert_eq!(r.stats().dropped, 3);
    }

    #[test]
    fn messages_too_large_to_read_are_counted_without_actions() {
        let t = Instant::now();
        let mut r = answering(&session(), t);
        r.handle_oversized(UUID, 200_000);
        r.handle_oversized("somewhere/else", 200_000);
        let uuid_topic = r.uuid_topic.clone();
        r.handle_oversized(&uuid_topic, 300);
        // The session acknowledged them already; nothing to publish or acknowledge.
        assert_eq!(actions(&mut r), []);
        assert_eq!(r.stats().dropped, 1);
        assert_eq!(r.stats().unexpected, 1);
        assert_eq!(r.phase(), Phase::Answering);
    }

    #[test]
    fn unexpected_topics_are_counted_and_acked() {
        let t = Instant::now();
        let mut r = answering(&session(), t);
        r.handle_message(MessageId(2), "somewhere/else", b"CMD1", QoS::ExactlyOnce, t);
        r.handle_message(
            MessageId(3),
            &format!("{UUID}/CMD1"),
            b"CMD1",
            QoS::ExactlyOnce,
            t,
        );
        assert_eq!(
            actions(&mut r),
            [Action::Ack(MessageId(2)), Action::Ack(MessageId(3))]
        );
        assert_eq!(r.stats().unexpected, 2);
        // Before the UUID is known, its future command topic is unexpected too.
        let mut r = waiting(&session(), t);
        r.handle_message(MessageId(4), UUID, b"CMD1", QoS::ExactlyOnce, t);
        assert_eq!(actions(&mut r), [Action::Ack(MessageId(4))]);
        assert_eq!(r.stats().unexpected, 1);
    }

    #[test]
    fn a_repeated_message_id_is_answered_once() {
        let t = Instant::now();
        let mut r = answering(&session(), t);
        r.handle_message(MessageId(2), UUID, b"CMD1", QoS::ExactlyOnce, t);
        r.handle_message(MessageId(2), UUID, b"CMD1", QoS::ExactlyOnce, t);
        assert_eq!(
            actions(&mut r),
            [reply("CMD1", "Apple", 2, QoS::ExactlyOnce)]
        );
    }

    #[test]
    fn completion_waits_for_outstanding_replies() {
        let t = Instant::now();
        let mut r = answering(&session(), t);
        r.handle_message(MessageId(2), UUID, b"CMD1", QoS::ExactlyOnce, t);
        r.handle_message(MessageId(3), UUID, b"CMD2", QoS::ExactlyOnce, t);
        actions(&mut r);
        r.handle_message(
            MessageId(4),
            UUID,
            b"Well done my IoT!",
            QoS::ExactlyOnce,
            t,
        );
        assert_eq!(r.phase(), Phase::Draining);
        assert_eq!(actions(&mut r), [Action::Ack(MessageId(4))]);
        assert_eq!(r.poll_timeout(), Some(t + Duration::from_secs(5)));
        // No new work while draining.
        r.handle_message(MessageId(5), UUID, b"CMD3", QoS::ExactlyOnce, t);
        r.handle_message(
            MessageId(6),
            UUID,
            b"Well done my IoT!",
            QoS::ExactlyOnce,
            t,
        );
        assert_eq!(
            actions(&mut r),
            [Action::Ack(MessageId(5)), Action::Ack(MessageId(6))]
        );
        r.handle_delivered(MessageId(2), t);
        assert_eq!(actions(&mut r), []);
        assert_eq!(r.phase(), Phase::Draining);
        r.handle_delivered(MessageId(3), t);
        assert_eq!(actions(&mut r), [Action::Disconnect]);
        assert_eq!(r.phase(), Phase::Finished);
        assert_eq!(r.poll_timeout(), None);
        // Nothing happens after the end.
        r.handle_message(MessageId(7), UUID, b"CMD1", QoS::ExactlyOnce, t);
        r.handle_connected(false, QoS::ExactlyOnce, t);
        assert_eq!(actions(&mut r), [Action::Ack(MessageId(7))]);
        assert_eq!(r.phase(), Phase::Finished);
    }

    #[test]
    fn a_suback_after_the_end_subscribes_nothing() {
        // The completion arrived before the command subscription's SUBACK, which then came
        // back refused: the retry used to subscribe again after the Disconnect.
        let t = Instant::now();
        let mut r = waiting(&session(), t);
        r.handle_message(
            MessageId(1),
            "2547841/UUID",
            UUID.as_bytes(),
            QoS::ExactlyOnce,
            t,
        );
        actions(&mut r);
        r.handle_message(
            MessageId(2),
            UUID,
            b"Well done my IoT!",
            QoS::ExactlyOnce,
            t,
        );
        assert_eq!(
            actions(&mut r),
            [Action::Ack(MessageId(2)), Action::Disconnect]
        );
        r.handle_subscribed(UUID, None, t);
        assert_eq!(r.poll_timeout(), None);
        r.handle_timeout(t + Duration::from_secs(60));
        assert_eq!(actions(&mut r), []);
        assert_eq!(r.phase(), Phase::Finished);
    }

    #[test]
    fn drain_timeout_disconnects() {
        let t = Instant::now();
        let mut r = answering(&session(), t);
        r.handle_message(MessageId(2), UUID, b"CMD1", QoS::ExactlyOnce, t);
        r.handle_message(
            MessageId(4),
            UUID,
            b"Well done my IoT!",
            QoS::ExactlyOnce,
            t,
        );
        actions(&mut r);
        r.handle_timeout(t + Duration::from_secs(5));
        assert_eq!(actions(&mut r), [Action::Disconnect]);
        assert_eq!(r.phase(), Phase::Finished);
        assert_eq!(r.stats().answered[0].1, 0);
    }

    #[test]
    fn shutdown_with_nothing_in_flight_disconnects_at_once_as_a_stop() {
        let t = Instant::now();
        let mut r = answering(&session(), t);
        r.handle_shutdown(t);
        assert_eq!(actions(&mut r), [Action::Disconnect]);
        assert!(r.is_stopping());
        assert!(!r.is_completed(), "a stop, not a completed run");
        assert_eq!(r.stop_deadline(), Some(t + session().drain_timeout));
        // A second signal changes nothing.
        r.handle_shutdown(ms(t, 10));
        assert_eq!(actions(&mut r), []);
        assert_eq!(r.stop_deadline(), Some(t + session().drain_timeout));
    }

    #[test]
    fn shutdown_waits_for_the_replies_in_flight_and_answers_nothing_new() {
        let t = Instant::now();
        let mut r = answering(&session(), t);
        r.handle_message(MessageId(2), UUID, b"CMD1", QoS::ExactlyOnce, t);
        r.handle_message(MessageId(3), UUID, b"CMD2", QoS::ExactlyOnce, t);
        actions(&mut r);
        r.handle_shutdown(t);
        assert_eq!(actions(&mut r), [], "the replies are awaited");
        assert_eq!(r.poll_timeout(), Some(t + session().drain_timeout));
        // New messages are neither answered nor acknowledged: the broker keeps them.
        r.handle_message(MessageId(4), UUID, b"CMD3", QoS::ExactlyOnce, t);
        r.handle_message(
            MessageId(5),
            UUID,
            b"Well done my IoT!",
            QoS::ExactlyOnce,
            t,
        );
        assert_eq!(actions(&mut r), []);
        assert!(
            !r.is_draining(),
            "the completion message was not taken either"
        );
        r.handle_delivered(MessageId(2), ms(t, 1));
        assert_eq!(actions(&mut r), []);
        r.handle_failed(MessageId(3), ms(t, 2));
        assert_eq!(actions(&mut r), [Action::Disconnect]);
        assert_eq!(r.phase(), Phase::Finished);
        assert!(!r.is_completed());
        assert_eq!(r.stats().answered[0].1, 1);
        assert_eq!(r.stats().failed, 1);
    }

    #[test]
    fn shutdown_gives_up_on_unacknowledged_replies_after_drain_timeout() {
        let t = Instant::now();
        let drain = session().drain_timeout;
        let mut r = answering(&session(), t);
        r.handle_message(MessageId(2), UUID, b"CMD1", QoS::ExactlyOnce, t);
        actions(&mut r);
        let signal = ms(t, 100);
        r.handle_shutdown(signal);
        r.handle_timeout(signal + drain - Duration::from_millis(1));
        assert_eq!(actions(&mut r), []);
        r.handle_timeout(signal + drain);
        assert_eq!(actions(&mut r), [Action::Disconnect]);
        assert_eq!(r.phase(), Phase::Finished);
        assert_eq!(r.stats().answered[0].1, 0);
    }

    #[test]
    fn shutdown_while_draining_keeps_the_earlier_deadline_and_completes() {
        let t = Instant::now();
        let drain = session().drain_timeout;
        let mut r = answering(&session(), t);
        r.handle_message(MessageId(2), UUID, b"CMD1", QoS::ExactlyOnce, t);
        r.handle_message(
            MessageId(4),
            UUID,
            b"Well done my IoT!",
            QoS::ExactlyOnce,
            t,
        );
        actions(&mut r);
        r.handle_shutdown(ms(t, 500));
        assert_eq!(
            r.poll_timeout(),
            Some(t + drain),
            "the completion's drain ends first"
        );
        r.handle_delivered(MessageId(2), ms(t, 600));
        assert_eq!(actions(&mut r), [Action::Disconnect]);
        assert!(
            r.is_completed(),
            "the completion message had arrived: the run is complete"
        );
    }

    #[test]
    fn reconnect_before_the_uuid_logs_in_again() {
        let t = Instant::now();
        for session_present in [false, true] {
            let mut r = waiting(&session(), t);
            r.handle_disconnected(t);
            assert_eq!(r.phase(), Phase::Disconnected);
            assert_eq!(r.poll_timeout(), None, "login timer cancelled");
            r.handle_connected(session_present, QoS::ExactlyOnce, ms(t, 100));
            assert_eq!(r.phase(), Phase::SubscribingUuid);
            assert_eq!(actions(&mut r), [sub("2547841/UUID", QoS::ExactlyOnce)]);
            r.handle_subscribed("2547841/UUID", Some(QoS::ExactlyOnce), ms(t, 100));
            assert_eq!(actions(&mut r), [login(QoS::ExactlyOnce)]);
            assert_eq!(r.poll_timeout(), Some(ms(t, 30_100)));
        }
    }

    #[test]
    fn suback_from_an_earlier_connection_is_void() {
        let t = Instant::now();
        let mut r = Responder::new(&session(), &ReplyTable::seed());
        r.handle_connected(false, QoS::ExactlyOnce, t);
        actions(&mut r);
        r.handle_disconnected(t);
        r.handle_subscribed("2547841/UUID", Some(QoS::ExactlyOnce), t);
        assert_eq!(actions(&mut r), []);
        assert_eq!(r.phase(), Phase::Disconnected);
    }

    #[test]
    fn reconnect_after_the_uuid_resumes_on_it() {
        let t = Instant::now();
        // Without a session: subscribe to the command topic again, no login.
        let mut r = answering(&session(), t);
        r.handle_message(MessageId(2), UUID, b"CMD1", QoS::ExactlyOnce, t);
        actions(&mut r);
        r.handle_disconnected(t);
        r.handle_connected(false, QoS::ExactlyOnce, t);
        assert_eq!(r.phase(), Phase::SubscribingCommands);
        assert_eq!(actions(&mut r), [sub(UUID, QoS::ExactlyOnce)]);
        assert_eq!(r.outstanding(), 1, "the session resends in-flight replies");
        r.handle_subscribed(UUID, Some(QoS::ExactlyOnce), t);
        assert_eq!(r.phase(), Phase::Answering);

        // With a session: straight back to answering.
        let mut r = answering(&session(), t);
        r.handle_disconnected(t);
        r.handle_connected(true, QoS::ExactlyOnce, t);
        assert_eq!(r.phase(), Phase::Answering);
        assert_eq!(actions(&mut r), []);

        // Lost before the command SUBACK: subscribe again even with a session.
        let mut r = waiting(&session(), t);
        r.handle_message(
            MessageId(1),
            "2547841/UUID",
            UUID.as_bytes(),
            QoS::ExactlyOnce,
            t,
        );
        actions(&mut r);
        r.handle_disconnected(t);
        r.handle_connected(true, QoS::ExactlyOnce, t);
        assert_eq!(r.phase(), Phase::SubscribingCommands);
        assert_eq!(actions(&mut r), [sub(UUID, QoS::ExactlyOnce)]);
    }

    #[test]
    fn draining_continues_across_a_reconnect() {
        let t = Instant::now();
        for session_present in [false, true] {
            let mut r = answering(&session(), t);
            r.handle_message(MessageId(2), UUID, b"CMD1", QoS::ExactlyOnce, t);
            r.handle_message(
                MessageId(3),
                UUID,
                b"Well done my IoT!",
                QoS::ExactlyOnce,
                t,
            );
            actions(&mut r);
            r.handle_disconnected(ms(t, 1000));
            assert_eq!(r.poll_timeout(), Some(t + Duration::from_secs(5)));
            r.handle_connected(session_present, QoS::ExactlyOnce, ms(t, 2000));
            assert_eq!(r.phase(), Phase::Draining);
            assert_eq!(actions(&mut r), []);
            r.handle_delivered(MessageId(2), ms(t, 2001));
            assert_eq!(actions(&mut r), [Action::Disconnect]);
            assert_eq!(r.phase(), Phase::Finished);
        }
    }

    #[test]
    fn completion_delivered_after_a_disconnect_drains_on_reconnect() {
        let t = Instant::now();
        let mut r = answering(&session(), t);
        r.handle_message(MessageId(2), UUID, b"CMD1", QoS::ExactlyOnce, t);
        r.handle_disconnected(t);
        r.handle_message(
            MessageId(3),
            UUID,
            b"Well done my IoT!",
            QoS::ExactlyOnce,
            t,
        );
        assert_eq!(r.phase(), Phase::Disconnected);
        actions(&mut r);
        r.handle_connected(false, QoS::ExactlyOnce, t);
        assert_eq!(r.phase(), Phase::Draining);
        assert_eq!(
            actions(&mut r),
            [],
            "no command subscription while draining"
        );
        r.handle_timeout(t + Duration::from_secs(5));
        assert_eq!(actions(&mut r), [Action::Disconnect]);
    }

    #[test]
    fn uuid_received_while_disconnected_is_kept() {
        let t = Instant::now();
        let mut r = waiting(&session(), t);
        r.handle_disconnected(t);
        r.handle_message(
            MessageId(1),
            "2547841/UUID",
            UUID.as_bytes(),
            QoS::ExactlyOnce,
            t,
        );
        assert_eq!(actions(&mut r), [Action::Ack(MessageId(1))]);
        assert_eq!(r.phase(), Phase::Disconnected);
        r.handle_connected(true, QoS::ExactlyOnce, t);
        assert_eq!(r.phase(), Phase::SubscribingCommands);
        assert_eq!(actions(&mut r), [sub(UUID, QoS::ExactlyOnce)]);
    }

    #[test]
    fn a_failed_reply_is_counted_as_failed_not_answered() {
        let t = Instant::now();
        let s = session();
        let mut r = answering(&s, t);
        r.handle_message(MessageId(10), UUID, b"CMD1", QoS::ExactlyOnce, t);
        r.handle_message(MessageId(11), UUID, b"CMD2", QoS::ExactlyOnce, t);
        actions(&mut r);
        r.handle_failed(MessageId(10), t);
        r.handle_failed(MessageId(10), t);
        assert_eq!(r.stats().failed, 1, "reported once");
        assert_eq!(r.outstanding(), 1);
        // Draining ends when the last reply is delivered or failed.
        r.handle_message(
            MessageId(12),
            UUID,
            b"Well done my IoT!",
            QoS::ExactlyOnce,
            t,
        );
        actions(&mut r);
        assert_eq!(r.phase(), Phase::Draining);
        r.handle_delivered(MessageId(11), t);
        assert_eq!(r.phase(), Phase::Finished);
        let answered: u64 = r.stats().answered.iter().map(|(_, n)| n).sum();
        assert_eq!(answered, 1);
    }
}
