//! The responder wired to an MQTT session, as the driver's [`App`]: it maps replies to the
//! tokens the session hands out, and around the pure responder (which drains, on the
//! completion message and on SIGTERM alike) it carries presence (the online/offline record
//! and the Will, the farewell), systemd notifications, SIGHUP reloads and the crash-resume
//! journal.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::reconnect::{Context, Outcome};
use crate::config::{self, Config};
use crate::daemon::presence::{Farewell, Presence, Snapshot, WillChange, WillTrouble};
use crate::daemon::state::store::{DiskStore, Store};
use crate::daemon::state::{Journal, RunChange, RunState, SavedReply};
use crate::daemon::systemd::Notifier;
use crate::driver::{self, App, End};
use crate::logging::Logging;
use crate::mqtt::packet::{ConnectCode, Publish, WILL_QOS_REFUSED, WILL_RETAIN_REFUSED};
use crate::mqtt::session::{Change, Event, PublishToken, Session};
use crate::protocol::responder::{Action, OutgoingKind, Phase, Responder, ResponseTo};
use crate::vocabulary::MessageId;
use crate::vocabulary::{Protocol, QoS};
use rustc_hash::FxHashMap;

/// How long the offline record may take to be acknowledged when nothing else bounds it
/// (`drain_timeout_secs = 0`): on a live link that is well under a millisecond.
const FAREWELL_MIN: Duration = Duration::from_secs(1);

/// The responder wired to a session: maps replies to the tokens the session hands out. The
/// journal's files are `S` ([`DiskStore`] in the daemon; in memory in tests, which drive
/// the whole app without a socket or a disk).
pub(super) struct ResponderApp<S: Store = DiskStore> {
    pub(super) responder: Responder,
    /// The bound on the offline record's acknowledgement after the completion message.
    drain_timeout: Duration,
    /// Reply publish → the command it answers.
    replies: FxHashMap<PublishToken, Reply>,
    /// Until when the offline record may take to be acknowledged.
    farewell_deadline: Option<Instant>,
    disconnect_sent: bool,
    rejected: u64,
    /// The configuration in force (replies and log level change on reload).
    config: Config,
    logging: Option<Logging>,
    pub(super) notifier: Notifier,
    pub(super) presence: Option<Presence>,
    /// What the online record last sent on this connection said of the UUID (known or
    /// not) and the QoS; once the UUID is known, a record that no longer says what is so
    /// is sent again at once.
    online_said: Option<(bool, Option<QoS>)>,
    /// The offline record is on its way; DISCONNECT follows its acknowledgement.
    farewell: Option<PublishToken>,
    pub(super) reconnects: u32,
    started: Instant,
    /// Reason code of a DISCONNECT the broker sent on the current connection.
    broker_disconnect_reason: Option<u8>,
    /// READY=1 is due once the pending packets (the login) are written.
    ready_owed: bool,
    /// The crash-resume journal, when `session.state_dir` is set.
    pub(super) journal: Option<Journal<S>>,
    /// What the journal holds of the run beyond replies, to journal what changes.
    journaled: Journaled,
    /// The turn's changes, for the journal (buffers kept across turns).
    session_changes: Vec<Change>,
    run_changes: Vec<RunChange>,
    /// State from a previous process, until the broker confirms it kept the session.
    restored: bool,
}

/// The run's part of the journal that the responder holds rather than announces.
#[derive(Debug, Default)]
struct Journaled {
    uuid: Option<String>,
    draining: bool,
    qos: Option<QoS>,
}

/// A reply in flight, for the journal line when it is acknowledged.
struct Reply {
    id: MessageId,
    command: String,
    topic: String,
    qos: QoS,
    sent: Instant,
}

impl<S: Store> ResponderApp<S> {
    pub(super) fn new(config: &Config, logging: Option<Logging>, now: Instant) -> ResponderApp<S> {
        ResponderApp {
            responder: fresh_responder(config),
            drain_timeout: config.session.responder.drain_timeout,
            replies: FxHashMap::default(),
            farewell_deadline: None,
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
            journaled: Journaled::default(),
            session_changes: Vec::new(),
            run_changes: Vec::new(),
            restored: false,
        }
    }
    /// Takes over the run a previous process left: its replies in flight and its UUID.
    pub(super) fn restore(&mut self, state: &RunState, session: &mut Session) {
        let in_flight: Vec<(MessageId, String)> = state
            .replies
            .iter()
            .map(|r| (MessageId(r.message_id), r.command.clone()))
            .collect();
        let qos = state.qos;
        self.journaled = Journaled {
            uuid: state.uuid.clone(),
            draining: state.draining,
            qos: Some(qos),
        };
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

    /// Journals what this turn changed, in one write (before the packets that the change
    /// guards are written): a snapshot when the journal wants one, else the changes.
    fn persist(&mut self, session: &mut Session, now: Instant) {
        if self.journal.is_none() {
            return;
        }
        session.take_changes(&mut self.session_changes);
        let uuid = self.responder.uuid();
        if self.journaled.uuid.as_deref() != uuid {
            self.journaled.uuid = uuid.map(str::to_owned);
            self.run_changes
                .push(RunChange::Uuid(self.journaled.uuid.clone()));
        }
        let draining = self.responder.is_draining();
        if self.journaled.draining != draining {
            self.journaled.draining = draining;
            self.run_changes.push(RunChange::Draining(draining));
        }
        let qos = self.responder.effective_qos();
        if self.journaled.qos != Some(qos) {
            self.journaled.qos = Some(qos);
            self.run_changes.push(RunChange::Qos(qos));
        }
        if self.session_changes.is_empty() && self.run_changes.is_empty() {
            return;
        }
        let Some(journal) = &mut self.journal else {
            return;
        };
        if journal.wants_snapshot() {
            let mut state = journal.state(session.snapshot());
            state.uuid = self.journaled.uuid.clone();
            state.draining = draining;
            state.qos = qos;
            state.replies = self
                .replies
                .iter()
                .map(|(token, reply)| SavedReply {
                    token: token.0,
                    message_id: reply.id.0,
                    command: reply.command.clone(),
                })
                .collect();
            state.replies.sort_by_key(|r| r.token);
            journal.snapshot(&state, now);
        } else {
            journal.append(
                session.counters(),
                &self.session_changes,
                &self.run_changes,
                now,
            );
        }
        self.session_changes.clear();
        self.run_changes.clear();
    }

    /// A completed run clears the file, so the next run starts fresh; any other end keeps
    /// it, so the next run resumes.
    pub(super) fn finish_journal(&mut self, outcome: Outcome, session: &mut Session) {
        if outcome == Outcome::Completed {
            if let Some(journal) = &mut self.journal {
                journal.clear();
            }
        } else {
            let now = Instant::now();
            self.persist(session, now);
            self.sync_journal(now);
        }
    }

    /// An fsync a throttled write left owed, now: the session state is settled while there
    /// is no connection, and the process may be about to end.
    pub(super) fn sync_journal(&mut self, now: Instant) {
        if let Some(journal) = &mut self.journal {
            journal.sync(now);
        }
    }

    /// A connection attempt ended with `trouble` (if any) before a CONNACK accepted it:
    /// presence adapts the Will (presence.rs decides), the session's next CONNECT carries
    /// the Will it wants now, and the change is logged.
    pub(super) fn will_refused(
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

    /// What the reconnect policy needs to know about how a connection ended, beyond the
    /// end itself; presence adapts the Will first when the end says the broker refused it.
    pub(super) fn context_after(
        &mut self,
        end: &End,
        session: &mut Session,
        addr: &str,
    ) -> Context {
        let mut cx = Context {
            opened: true,
            finished: self.responder.is_completed(),
            stopping: self.responder.is_stopping(),
            will_changed: false,
            disconnect_reason: self.broker_disconnect_reason.take(),
        };
        match end {
            End::Refused(ConnectCode::Permanent(reason)) => {
                cx.will_changed = self
                    .will_refused(will_trouble(reason), session, addr)
                    .is_some();
            }
            End::Lost {
                up_for,
                closed_by_broker,
                ..
            } => {
                self.handle_disconnected(Instant::now());
                if !self.responder.is_stopping() {
                    let refusal = (up_for.is_none()
                        && *closed_by_broker
                        && self.config.broker.protocol == Protocol::V311
                        && session.will_offered())
                    .then_some(WillTrouble::ClosedWithoutConnAck);
                    cx.will_changed = self
                        .will_refused(refusal, session, addr)
                        .is_some_and(WillChange::reconnect_at_once);
                }
            }
            End::Disconnected | End::Purged | End::Refused(_) => {}
        }
        cx
    }

    fn handle_disconnected(&mut self, now: Instant) {
        self.responder.handle_disconnected(now);
        if let Some(presence) = &mut self.presence {
            presence.handle_disconnected();
        }
        self.online_said = None;
    }

    /// Waits for `fut` between connections (connecting, backing off) while still feeding
    /// the watchdog and answering SIGHUP: this is the event loop while there is no socket.
    pub(super) async fn between<F: Future>(&mut self, reload: &Notify, fut: F) -> F::Output {
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

    pub(super) fn answered(&self) -> u64 {
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
                let record = presence.offline(why);
                // A stop keeps the deadline SIGTERM set; otherwise the record gets the drain
                // timeout, and at least FAREWELL_MIN.
                let bound = self
                    .responder
                    .stop_deadline()
                    .unwrap_or((now + self.drain_timeout).max(now + FAREWELL_MIN));
                if now >= bound {
                    // The stop's time is up: still say goodbye, the record goes out ahead
                    // of DISCONNECT, unconfirmed.
                    session.publish(record, now);
                    self.disconnect(session, now);
                } else {
                    self.farewell = Some(session.publish(record, now));
                    self.farewell_deadline = Some(bound);
                }
            }
            _ => self.disconnect(session, now),
        }
    }

    /// After every event: the online record when due, systemd status and readiness.
    fn after(&mut self, session: &mut Session, now: Instant) {
        let phase = self.responder.phase();
        let finishing =
            self.responder.is_stopping() || self.farewell.is_some() || phase == Phase::Finished;
        if let Some(presence) = &mut self.presence
            && session.is_connected()
            && !finishing
        {
            let uuid = self.responder.uuid();
            let qos = self.responder.known_qos();
            if presence.is_due(now) || online_stale(self.online_said, uuid.is_some(), qos) {
                let stats = self.responder.stats();
                let snapshot = Snapshot {
                    uuid,
                    answered: stats.answered.iter().map(|(_, n)| n).sum(),
                    dropped: stats.dropped,
                    unknown: stats.unknown,
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
                    session.subscribe(vec![(topic, qos)], now);
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
                        if self.journal.is_some() {
                            self.run_changes.push(RunChange::Reply(SavedReply {
                                token: token.0,
                                message_id: in_reply_to.0,
                                command: command.clone(),
                            }));
                        }
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
                Action::Disconnect => {
                    let why = if self.responder.is_draining() {
                        Farewell::Completed
                    } else {
                        Farewell::Stopped
                    };
                    self.finish(why, session, now);
                }
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
            if self.journal.is_some() {
                self.run_changes.push(RunChange::ReplyDone(token.0));
            }
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
    }

    pub(super) fn log_summary(&self, outcome: Outcome, reconnects: u32, elapsed: Duration) {
        let stats = self.responder.stats();
        let total: u64 = stats.answered.iter().map(|(_, n)| n).sum();
        let per_command: Vec<String> = stats
            .answered
            .iter()
            .map(|(c, n)| format!("{c}={n}"))
            .collect();
        tracing::info!(
            "summary: {outcome:?} after {:.1} s; {total} replies ({}); {} unknown, {} dropped{}, \
             {} unexpected, {} rejected by the broker; {reconnects} reconnects; QoS {}",
            elapsed.as_secs_f64(),
            per_command.join(", "),
            stats.unknown,
            stats.dropped,
            match stats.overflowed {
                0 => String::new(),
                n => format!(" ({n} QoS 0 beyond session.max_pending)"),
            },
            stats.unexpected,
            self.rejected,
            self.responder.effective_qos(),
        );
    }
}

impl<S: Store> App for ResponderApp<S> {
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
                    if self.journal.is_some() {
                        self.run_changes.push(RunChange::RepliesCleared);
                    }
                    self.responder = fresh_responder(&self.config);
                }
                self.responder
                    .handle_connected(session_present, caps.max_qos, now);
            }
            Event::SubAck { filters, .. } => {
                for (topic, granted) in filters {
                    if let (Some(presence), Some(granted)) = (&mut self.presence, granted) {
                        // 3.1.1 brokers tell their maximum QoS only here.
                        presence.handle_granted(granted);
                    }
                    self.responder.handle_subscribed(&topic, granted, now);
                }
            }
            Event::Message(message) => {
                let p = message.publish;
                let response = ResponseTo {
                    topic: p.response_topic,
                    correlation_data: p.correlation_data,
                };
                self.responder
                    .handle_request(message.id, &p.topic, &p.payload, p.qos, &response, now);
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
            self.farewell_deadline,
            self.notifier.poll_timeout(),
            self.presence.as_ref().and_then(Presence::poll_timeout),
            self.journal.as_ref().and_then(Journal::sync_due),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn handle_timeout(&mut self, session: &mut Session, now: Instant) {
        self.notifier.handle_timeout(now);
        if let Some(journal) = &mut self.journal
            && journal.sync_due().is_some_and(|due| now >= due)
        {
            journal.sync(now);
        }
        if let Some(deadline) = self.farewell_deadline
            && now >= deadline
            && self.farewell.is_some()
        {
            tracing::warn!("the offline record was not acknowledged in time; disconnecting");
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
        self.notifier.stopping("stopping");
        self.responder.handle_shutdown(now);
        self.run_actions(session, now);
    }

    fn wants_disconnect(&self) -> bool {
        self.disconnect_sent
    }

    fn close_linger(&self, now: Instant) -> Duration {
        // A stop is bounded by drain_timeout_secs, the wait for the broker's close included;
        // so is the farewell after the completion message.
        let deadline = self.farewell_deadline.or(self.responder.stop_deadline());
        deadline.map_or(driver::CLOSE_LINGER, |deadline| {
            deadline
                .saturating_duration_since(now)
                .min(driver::CLOSE_LINGER)
        })
    }

    fn handle_wake(&mut self, _session: &mut Session, _now: Instant) {
        self.reload();
    }

    fn before_transmit(&mut self, session: &mut Session, now: Instant) {
        self.persist(session, now);
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
    let mut responder = Responder::new(&config.session.responder, &config.replies);
    responder.set_login_backoff_cap(config.reconnect.max_delay);
    responder
}

#[cfg(test)]
mod tests;
