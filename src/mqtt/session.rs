//! The MQTT client session as a sans-IO state machine: packet ids, the QoS 1/2 handshakes in
//! both directions, duplicate suppression, the in-flight window, what is resent on resume,
//! and keep-alive.
//!
//! Bytes come in through [`Session::handle_bytes`], bytes to write come out of
//! [`Session::poll_transmit`], application events out of [`Session::poll_event`]; time only
//! enters as `now`. One `Session` lives for a whole run and spans reconnects, so that a
//! resumed broker session is continued exactly: an inbound QoS 1/2 message is acknowledged
//! only when the application says so ([`Session::ack`]), a redelivered one is never surfaced
//! twice, and outgoing publishes are resent with DUP set until acknowledged.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};

use super::packet::{
    BrokerCaps, CodecError, ConnAck, Connect, ConnectCode, Packet, Publish, PublishHead, Will,
};
use crate::vocabulary::{MessageId, Protocol, QoS, Secret};
use rustc_hash::FxHashMap;
use saved::SavedPublish;
pub use saved::{Change, Counters, SavedInbound, SessionState};

mod saved;

/// Session settings, fixed for a run.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// MQTT version.
    pub protocol: Protocol,
    /// Client identifier (stable across reconnects: it names the broker-side session).
    pub client_id: String,
    /// User name.
    pub username: Option<String>,
    /// Password.
    pub password: Option<Secret>,
    /// Keep-alive we ask for (the broker may impose its own in MQTT 5).
    pub keep_alive: Duration,
    /// Our cap on unacknowledged outgoing QoS 1/2 publishes.
    pub max_inflight: u16,
    /// Largest packet we accept from the broker.
    pub max_incoming_packet: usize,
    /// MQTT 5: how long the broker keeps the session after a disconnect, in seconds.
    pub session_expiry: u32,
    /// Last Will.
    pub will: Option<Will>,
    /// Whether the application acknowledges inbound messages itself (the responder: a
    /// command is acknowledged once its reply is) or the session does so on arrival.
    pub manual_acks: bool,
    /// Start the run on a fresh broker-side session (discarding whatever an earlier run
    /// left), rather than resuming it.
    pub clean_first: bool,
    /// Record every change to what a [`SessionState`] holds, for a crash-resume journal
    /// ([`Session::take_changes`]).
    pub record_changes: bool,
}

/// Identifies an outgoing publish from [`Session::publish`] to its [`Event::Delivered`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublishToken(pub u64);

/// A message that arrived, with the handle to acknowledge it by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Handle for [`Session::ack`].
    pub id: MessageId,
    /// The PUBLISH as received.
    pub publish: Publish,
}

/// What happened, for the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// CONNACK accepted.
    Connected {
        /// Whether the broker resumed our session.
        session_present: bool,
        /// What the broker allows.
        caps: BrokerCaps,
    },
    /// The first connection of a 3.1.1 run only cleared the broker-side session; connect
    /// again at once (no backoff) to open the real one.
    Purged,
    /// CONNACK refused.
    Refused(ConnectCode),
    /// SUBACK for a SUBSCRIBE sent on this connection.
    SubAck {
        /// Packet id returned by [`Session::subscribe`].
        pkid: u16,
        /// The SUBSCRIBE's filters, in order, each with the QoS granted: `None` where
        /// refused (or where the SUBACK carries no return code for it).
        filters: Vec<(String, Option<QoS>)>,
    },
    /// A new message (never a redelivery of one already surfaced).
    Message(Message),
    /// MQTT 3.1.1: a PUBLISH larger than `max_incoming_packet` arrived. It was acknowledged
    /// and its bytes skipped: a 3.1.1 broker cannot be told our limit, and a connection
    /// error would only bring the same message back on every reconnect. (MQTT 5 announces
    /// the limit in CONNECT; a larger packet there is a protocol error.)
    Oversized {
        /// Its topic.
        topic: String,
        /// The whole packet's size in bytes.
        size: usize,
    },
    /// An outgoing publish is complete at its QoS (QoS 0: written).
    Delivered(PublishToken),
    /// An outgoing publish was not taken by the broker (MQTT 5 failure reason, or larger
    /// than the broker's Maximum Packet Size).
    Rejected(PublishToken, String),
    /// The broker sent DISCONNECT (MQTT 5 carries a reason).
    BrokerDisconnect {
        /// Reason code.
        reason: u8,
        /// Reason string.
        reason_string: Option<String>,
    },
}

/// Why the connection must be closed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Undecodable input.
    #[error("{0}")]
    Codec(#[from] CodecError),
    /// The broker stopped answering.
    #[error("no answer to keep-alive ping within {0:?}")]
    KeepAliveTimeout(Duration),
    /// A packet that makes no sense in this state.
    #[error("protocol violation: {0}")]
    Protocol(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Offline,
    AwaitingConnAck,
    Connected,
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum Awaiting {
    /// QoS 1 sent, waiting for PUBACK.
    Ack,
    /// QoS 2 sent, waiting for PUBREC.
    Received,
    /// PUBREL sent, waiting for PUBCOMP: the broker owns the message now.
    Complete,
}

#[derive(Debug)]
struct OutFlight {
    token: PublishToken,
    publish: Publish,
    state: Awaiting,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum InState {
    /// Surfaced to the application, not yet acknowledged by it.
    Unacked,
    /// Acknowledged by the application while offline: the ack is owed to the broker.
    AckOwed,
    /// QoS 2: PUBREC sent, waiting for PUBREL.
    AwaitRel,
    /// QoS 1: PUBACK owed from the last connection sent on resume. The broker redelivers
    /// the message right after CONNACK, before it can have read that PUBACK: a DUP
    /// redelivery on this connection is that one, not a new message.
    AckedOnResume,
}

#[derive(Debug)]
struct InFlight {
    id: MessageId,
    qos: QoS,
    state: InState,
}

/// The session. See the module documentation.
#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    link: Link,
    /// Next CONNECT asks for a clean start.
    clean_next: bool,
    /// 3.1.1: the current connection only exists to clear the old session.
    purging: bool,
    /// A CONNACK opened a session before (so a missing one now was lost).
    had_session: bool,
    /// The latest CONNECT carried the Will.
    will_offered: bool,
    caps: BrokerCaps,
    keep_alive: Duration,
    transmit: BytesMut,
    events: VecDeque<Event>,
    next_token: u64,
    next_message: u64,
    next_pkid: u16,
    /// Publishes waiting for a place in the window (or for a connection).
    pending: VecDeque<(PublishToken, Publish)>,
    /// Outgoing QoS 1/2 publishes by packet id.
    outgoing: FxHashMap<u16, OutFlight>,
    /// SUBSCRIBEs awaiting SUBACK: packet id and filters, so that the SUBACK can name them
    /// and no caller keeps a packet id → filter map.
    subscribing: Vec<(u16, Vec<String>)>,
    /// Inbound QoS 1/2 messages by packet id: the duplicate-suppression set.
    inbound: FxHashMap<u16, InFlight>,
    /// Message handle → inbound packet id.
    inbound_ids: FxHashMap<MessageId, u16>,
    last_sent: Instant,
    last_received: Instant,
    ping_sent: Option<Instant>,
    /// What a crash-resume snapshot holds changed this way since [`Session::take_changes`]
    /// (`None`: not recorded).
    changes: Option<Vec<Change>>,
    /// The snapshot the recorded changes replay to (tests check it against the real one).
    #[cfg(test)]
    replayed: SessionState,
    /// How many of `changes` are in `replayed` already.
    #[cfg(test)]
    replayed_upto: usize,
    /// Bytes of an oversized PUBLISH still to be discarded as they arrive.
    skipping: usize,
}

impl Session {
    /// A session for one run, offline.
    pub fn new(config: SessionConfig, now: Instant) -> Session {
        Session {
            keep_alive: config.keep_alive,
            clean_next: config.clean_first,
            changes: config.record_changes.then(Vec::new),
            config,
            link: Link::Offline,
            purging: false,
            had_session: false,
            will_offered: false,
            caps: BrokerCaps::default(),
            transmit: BytesMut::with_capacity(4096),
            events: VecDeque::new(),
            next_token: 0,
            next_message: 0,
            next_pkid: 0,
            pending: VecDeque::new(),
            outgoing: FxHashMap::default(),
            subscribing: Vec::new(),
            inbound: FxHashMap::default(),
            inbound_ids: FxHashMap::default(),
            last_sent: now,
            last_received: now,
            ping_sent: None,
            #[cfg(test)]
            replayed: SessionState::default(),
            #[cfg(test)]
            replayed_upto: 0,
            skipping: 0,
        }
    }

    /// A transport is up: write CONNECT.
    pub fn handle_transport_up(&mut self, now: Instant) {
        self.transmit.clear();
        self.skipping = 0;
        self.link = Link::AwaitingConnAck;
        self.keep_alive = self.config.keep_alive;
        let v311 = self.config.protocol == Protocol::V311;
        // A 3.1.1 clean session is discarded when it disconnects, so it cannot be resumed
        // after a link failure: clear the old one on a throwaway connection, then open a
        // persistent one (MQTT 5 does both at once with clean start + session expiry).
        self.purging = v311 && self.clean_next;
        let connect = Connect {
            client_id: self.config.client_id.clone(),
            clean_start: self.clean_next,
            keep_alive: u16::try_from(self.config.keep_alive.as_secs()).unwrap_or(u16::MAX),
            username: self.config.username.clone(),
            password: self.config.password.clone(),
            will: if self.purging {
                None
            } else {
                self.config.will.clone()
            },
            session_expiry: (!v311).then_some(self.config.session_expiry),
            // The broker sends no more unacknowledged QoS 1/2 commands than we may have
            // replies in flight: a flood waits at the broker, not in our memory.
            receive_maximum: (!v311).then_some(self.config.max_inflight.max(1)),
            max_packet_size: (!v311)
                .then(|| u32::try_from(self.config.max_incoming_packet).unwrap_or(u32::MAX)),
        };
        self.will_offered = connect.will.is_some();
        self.send(&Packet::Connect(Box::new(connect)), now);
    }

    /// The transport failed or was closed. Everything in flight stays for the resume.
    pub fn handle_transport_down(&mut self) {
        self.transmit.clear();
        self.subscribing.clear();
        self.ping_sent = None;
        if self.link != Link::Closed {
            self.link = Link::Offline;
        }
    }

    /// Feeds received bytes; complete packets are consumed from `buf`.
    pub fn handle_bytes(&mut self, buf: &mut BytesMut, now: Instant) -> Result<(), SessionError> {
        loop {
            if self.skipping > 0 {
                let n = self.skipping.min(buf.len());
                buf.advance(n);
                self.skipping -= n;
                // Bytes arriving prove the link alive, as a whole packet would.
                self.last_received = now;
                self.ping_sent = None;
                if self.skipping > 0 {
                    return Ok(());
                }
            }
            let packet =
                match Packet::read(self.config.protocol, buf, self.config.max_incoming_packet) {
                    Ok(p) => p,
                    Err(CodecError::Incomplete) => return Ok(()),
                    Err(CodecError::TooLarge { .. }) if self.config.protocol == Protocol::V311 => {
                        if self.link == Link::AwaitingConnAck {
                            return Err(SessionError::Protocol(
                                "expected CONNACK, got a packet too large to read".to_owned(),
                            ));
                        }
                        let Some(head) = PublishHead::read_v311(buf)? else {
                            return Ok(());
                        };
                        self.last_received = now;
                        self.ping_sent = None;
                        self.skip_publish(buf, head, now);
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                };
            self.last_received = now;
            self.ping_sent = None;
            self.handle_packet(packet, now)?;
        }
    }

    /// See [`Event::Oversized`]: acknowledges the PUBLISH `head` describes and discards its
    /// bytes, those in `buf` now and the rest as they arrive.
    fn skip_publish(&mut self, buf: &mut BytesMut, head: PublishHead, now: Instant) {
        let n = head.frame_len.min(buf.len());
        buf.advance(n);
        self.skipping = head.frame_len - n;
        let PublishHead {
            frame_len: size,
            topic,
            qos,
            pkid,
            dup,
        } = head;
        self.surface(qos, pkid, dup, true, now, |_| Event::Oversized {
            topic,
            size,
        });
    }

    /// Queues a publish; it is sent when connected and the window has room.
    pub fn publish(&mut self, publish: Publish, now: Instant) -> PublishToken {
        self.next_token += 1;
        let token = PublishToken(self.next_token);
        if self.changes.is_some() {
            self.record(Change::Queued(SavedPublish::of(token, &publish)));
        }
        self.pending.push_back((token, publish));
        self.flush_pending(now);
        token
    }

    /// Sends a SUBSCRIBE; returns its packet id, or `None` when offline (subscribe again
    /// after the next `Connected`). Its [`Event::SubAck`] names the filters.
    pub fn subscribe(&mut self, filters: Vec<(String, QoS)>, now: Instant) -> Option<u16> {
        if self.link != Link::Connected {
            return None;
        }
        let pkid = self.allocate_pkid()?;
        let names = filters.iter().map(|(filter, _)| filter.clone()).collect();
        self.subscribing.push((pkid, names));
        self.send(&Packet::Subscribe { pkid, filters }, now);
        Some(pkid)
    }

    /// The application is done with an inbound message: acknowledge it to the broker
    /// (now, or after the next resume if offline). Unknown handles (QoS 0, or from a
    /// session the broker discarded) are ignored.
    pub fn ack(&mut self, id: MessageId, now: Instant) {
        let Some(pkid) = self.inbound_ids.remove(&id) else {
            return;
        };
        let Some(entry) = self.inbound.get_mut(&pkid) else {
            return;
        };
        if entry.state != InState::Unacked {
            return;
        }
        if self.link == Link::Connected {
            self.send_inbound_ack(pkid, now);
        } else if let Some(entry) = self.inbound.get_mut(&pkid) {
            entry.state = InState::AckOwed;
            self.record_inbound(pkid);
        }
    }

    /// Writes DISCONNECT; the session is closed for good.
    pub fn disconnect(&mut self, now: Instant) {
        if self.link == Link::Connected {
            self.send(
                &Packet::Disconnect {
                    reason: 0,
                    reason_string: None,
                },
                now,
            );
        }
        self.link = Link::Closed;
    }

    /// Bytes to write to the transport, if any.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        (!self.transmit.is_empty()).then(|| self.transmit.split().freeze())
    }

    /// The next event, in order.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next keep-alive deadline while connected.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.link != Link::Connected || self.keep_alive.is_zero() {
            return None;
        }
        Some(match self.ping_sent {
            Some(sent) => sent + self.ping_grace(),
            None => (self.last_sent + self.keep_alive).min(self.last_received + self.keep_alive),
        })
    }

    /// A deadline passed: ping the broker, or give up on a silent one.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), SessionError> {
        if self.link != Link::Connected || self.keep_alive.is_zero() {
            return Ok(());
        }
        match self.ping_sent {
            Some(sent) if now >= sent + self.ping_grace() => Err(SessionError::KeepAliveTimeout(
                self.keep_alive + self.ping_grace(),
            )),
            Some(_) => Ok(()),
            None => {
                // Ping when idle in either direction: silence from the broker is what a
                // half-open link looks like, even while we keep sending.
                if now >= self.last_sent + self.keep_alive
                    || now >= self.last_received + self.keep_alive
                {
                    self.send(&Packet::PingReq, now);
                    self.ping_sent = Some(now);
                }
                Ok(())
            }
        }
    }

    /// Replaces the Last Will for the next CONNECT (a broker without retain refused it).
    pub fn set_will(&mut self, will: Option<Will>) {
        self.config.will = will;
    }

    /// Whether the latest CONNECT carried the Will (not the 3.1.1 purge connection's), so
    /// that a refusal of it can be about the Will.
    pub fn will_offered(&self) -> bool {
        self.will_offered
    }

    /// Whether CONNACK has been accepted on the current transport.
    pub fn is_connected(&self) -> bool {
        self.link == Link::Connected
    }

    /// Outgoing publishes not yet complete (queued or in flight).
    pub fn outstanding(&self) -> usize {
        self.pending.len() + self.outgoing.len()
    }

    /// What the broker allows (defaults until the first CONNACK).
    pub fn caps(&self) -> &BrokerCaps {
        &self.caps
    }

    /// The keep-alive in force (ours, or the broker's in MQTT 5).
    pub fn keep_alive(&self) -> Duration {
        self.keep_alive
    }

    /// Moves the changes to what a [`Session::snapshot`] holds, made since the last call
    /// and in order, to the end of `into` (nothing unless [`SessionConfig::record_changes`]).
    /// A journal writes them, with [`Session::counters`], before what
    /// [`Session::poll_transmit`] gives, so that it always runs ahead of the wire.
    pub fn take_changes(&mut self, into: &mut Vec<Change>) {
        #[cfg(test)]
        {
            self.replay_recorded();
            self.replayed_upto = 0;
        }
        if let Some(changes) = &mut self.changes {
            into.append(changes);
        }
    }

    /// The id counters, as a snapshot holds them.
    pub fn counters(&self) -> Counters {
        Counters {
            pkid: self.next_pkid,
            token: self.next_token,
            message: self.next_message,
        }
    }

    /// Replays the changes recorded since the last call onto the snapshot they started
    /// from, and asserts that this gives the snapshot now: what a journal of them would
    /// resume is what the session holds.
    #[cfg(test)]
    pub(crate) fn assert_changes_replay(&mut self) {
        if self.changes.is_none() {
            return;
        }
        self.replay_recorded();
        self.replayed.set_counters(self.counters());
        assert_eq!(
            self.replayed,
            self.snapshot(),
            "the changes replay to the snapshot"
        );
    }

    #[cfg(test)]
    fn replay_recorded(&mut self) {
        let Some(changes) = &self.changes else {
            return;
        };
        for change in &changes[self.replayed_upto..] {
            self.replayed.apply(change.clone());
        }
        self.replayed_upto = changes.len();
    }

    fn record(&mut self, change: Change) {
        if let Some(changes) = &mut self.changes {
            changes.push(change);
        }
    }

    /// Records where the inbound message `pkid` now stands (or that it is gone).
    fn record_inbound(&mut self, pkid: u16) {
        if self.changes.is_none() {
            return;
        }
        let change = match self.inbound.get(&pkid) {
            Some(entry) => Change::Inbound(SavedInbound::of(pkid, entry)),
            None => Change::InboundDone(pkid),
        };
        self.record(change);
    }

    /// What a new process needs to continue this broker session exactly where it was.
    pub fn snapshot(&self) -> SessionState {
        let mut outgoing: Vec<(SavedPublish, Awaiting)> = self
            .outgoing
            .values()
            .map(|f| (SavedPublish::of(f.token, &f.publish), f.state))
            .collect();
        outgoing.sort_by_key(|(p, _)| p.token);
        let mut inbound: Vec<SavedInbound> = self
            .inbound
            .iter()
            .map(|(pkid, e)| SavedInbound::of(*pkid, e))
            .collect();
        inbound.sort_by_key(|e| e.pkid);
        SessionState {
            counters: self.counters(),
            outgoing,
            pending: self
                .pending
                .iter()
                .map(|(t, p)| SavedPublish::of(*t, p))
                .collect(),
            inbound,
        }
    }

    /// A session continuing `state` (from a process that died): it connects without clean
    /// start and resends what was in flight once the broker confirms the session.
    pub fn restore(mut config: SessionConfig, state: SessionState, now: Instant) -> Session {
        config.clean_first = false;
        let mut session = Session::new(config, now);
        let publish = |p: SavedPublish| {
            (
                PublishToken(p.token),
                Publish {
                    dup: false,
                    qos: p.qos,
                    retain: false,
                    pkid: p.pkid,
                    topic: p.topic,
                    payload: Bytes::from(p.payload),
                    response_topic: None,
                    correlation_data: p.correlation_data.map(Bytes::from),
                },
            )
        };
        for (saved, state) in state.outgoing {
            let (token, publish) = publish(saved);
            session.outgoing.insert(
                publish.pkid,
                OutFlight {
                    token,
                    publish,
                    state,
                },
            );
        }
        session.pending = state.pending.into_iter().map(publish).collect();
        for e in state.inbound {
            let id = MessageId(e.message_id);
            let qos = e.qos;
            // The guard for a redelivery crossing a resume PUBACK is over with its
            // connection.
            if e.state == InState::AckedOnResume {
                continue;
            }
            if e.state == InState::Unacked {
                session.inbound_ids.insert(id, e.pkid);
            }
            session.inbound.insert(
                e.pkid,
                InFlight {
                    id,
                    qos,
                    state: e.state,
                },
            );
        }
        session.next_pkid = state.counters.pkid;
        session.next_token = state.counters.token;
        session.next_message = state.counters.message;
        session.had_session = true;
        #[cfg(test)]
        {
            session.replayed = session.snapshot();
        }
        session
    }

    /// Drops inbound messages surfaced but not yet acknowledged that `keep` does not claim:
    /// after a restore, a command whose reply never got queued must be delivered afresh by
    /// the broker, not suppressed as a duplicate.
    pub fn forget_unacked(&mut self, keep: impl Fn(MessageId) -> bool) {
        let forgotten: Vec<(u16, MessageId)> = self
            .inbound
            .iter()
            .filter(|(_, e)| e.state == InState::Unacked && !keep(e.id))
            .map(|(pkid, e)| (*pkid, e.id))
            .collect();
        for (pkid, id) in forgotten {
            self.inbound.remove(&pkid);
            self.inbound_ids.remove(&id);
            self.record(Change::InboundDone(pkid));
        }
    }

    /// Forgets everything in flight in both directions, without events (a restored run
    /// whose broker no longer has the session starts over).
    pub fn discard_all(&mut self) {
        self.pending.clear();
        self.outgoing.clear();
        self.inbound.clear();
        self.inbound_ids.clear();
        self.record(Change::DiscardedAll);
    }

    fn ping_grace(&self) -> Duration {
        (self.keep_alive / 2).max(Duration::from_secs(1))
    }

    fn handle_packet(&mut self, packet: Packet, now: Instant) -> Result<(), SessionError> {
        if self.link == Link::AwaitingConnAck {
            return match packet {
                Packet::ConnAck(ack) => {
                    self.handle_connack(ack, now);
                    Ok(())
                }
                other => Err(SessionError::Protocol(format!(
                    "expected CONNACK, got {}",
                    packet_name(&other)
                ))),
            };
        }
        match packet {
            Packet::Publish(publish) => self.handle_publish(publish, now),
            Packet::PubAck { pkid, failure } => {
                self.complete_outgoing(pkid, Awaiting::Ack, failure, now)
            }
            Packet::PubRec { pkid, failure } => self.handle_pubrec(pkid, failure, now),
            Packet::PubRel(pkid) => {
                // MQTT §4.3.3: answer PUBREL with PUBCOMP, even one we do not expect (a
                // resend for a message already completed): refusing it would wedge the
                // broker's retry loop.
                if let Some(entry) = self.inbound.get(&pkid)
                    && entry.state == InState::AwaitRel
                {
                    self.inbound.remove(&pkid);
                    self.record(Change::InboundDone(pkid));
                }
                self.send(&Packet::PubComp(pkid), now);
            }
            Packet::PubComp(pkid) => self.complete_outgoing(pkid, Awaiting::Complete, None, now),
            Packet::SubAck { pkid, granted } => {
                if let Some(i) = self.subscribing.iter().position(|(p, _)| *p == pkid) {
                    let (_, names) = self.subscribing.swap_remove(i);
                    let mut granted = granted.into_iter();
                    let filters = names
                        .into_iter()
                        .map(|filter| (filter, granted.next().flatten()))
                        .collect();
                    self.events.push_back(Event::SubAck { pkid, filters });
                }
            }
            Packet::PingResp | Packet::UnsubAck(_) => {}
            Packet::Disconnect {
                reason,
                reason_string,
            } => self.events.push_back(Event::BrokerDisconnect {
                reason,
                reason_string,
            }),
            other @ (Packet::ConnAck(_)
            | Packet::Auth
            | Packet::Connect(_)
            | Packet::Subscribe { .. }
            | Packet::PingReq) => {
                return Err(SessionError::Protocol(format!(
                    "unexpected {} from the broker",
                    packet_name(&other)
                )));
            }
        }
        Ok(())
    }

    fn handle_connack(&mut self, ack: ConnAck, now: Instant) {
        if ack.code != ConnectCode::Accepted {
            self.link = Link::Offline;
            self.events.push_back(Event::Refused(ack.code));
            return;
        }
        if self.purging {
            // The old session is gone; the real connection follows at once.
            self.send(
                &Packet::Disconnect {
                    reason: 0,
                    reason_string: None,
                },
                now,
            );
            self.purging = false;
            self.clean_next = false;
            self.link = Link::Offline;
            self.events.push_back(Event::Purged);
            return;
        }
        self.link = Link::Connected;
        self.caps = ack.caps.clone();
        if let Some(secs) = self.caps.server_keep_alive {
            self.keep_alive = Duration::from_secs(secs.into());
        }
        self.last_received = now;
        self.ping_sent = None;
        // A guard against a redelivery crossing our resume PUBACK lasts one connection.
        let guards: Vec<u16> = self
            .inbound
            .iter()
            .filter(|(_, e)| e.state == InState::AckedOnResume)
            .map(|(pkid, _)| *pkid)
            .collect();
        for pkid in guards {
            self.inbound.remove(&pkid);
            self.record(Change::InboundDone(pkid));
        }
        self.clean_next = false;
        if ack.session_present {
            self.resume(now);
        } else {
            self.session_lost();
        }
        self.had_session = true;
        self.events.push_back(Event::Connected {
            session_present: ack.session_present,
            caps: ack.caps,
        });
        self.flush_pending(now);
    }

    /// The broker kept our session: resend what it has not acknowledged, in send order,
    /// and the acks we owe it.
    fn resume(&mut self, now: Instant) {
        let mut flights: Vec<(PublishToken, u16)> = self
            .outgoing
            .iter()
            .map(|(pkid, f)| (f.token, *pkid))
            .collect();
        flights.sort_unstable();
        for (_, pkid) in flights {
            let Some(flight) = self.outgoing.get(&pkid) else {
                continue;
            };
            let packet = match flight.state {
                Awaiting::Complete => Packet::PubRel(pkid),
                Awaiting::Ack | Awaiting::Received => {
                    let mut publish = flight.publish.clone();
                    publish.dup = true;
                    Packet::Publish(publish)
                }
            };
            self.send(&packet, now);
        }
        let owed: Vec<u16> = self
            .inbound
            .iter()
            .filter(|(_, e)| e.state == InState::AckOwed)
            .map(|(p, _)| *p)
            .collect();
        for pkid in owed {
            let Some(&InFlight { id, qos, .. }) = self.inbound.get(&pkid) else {
                continue;
            };
            self.send_inbound_ack(pkid, now);
            if qos == QoS::AtLeastOnce {
                self.inbound.insert(
                    pkid,
                    InFlight {
                        id,
                        qos,
                        state: InState::AckedOnResume,
                    },
                );
                self.record_inbound(pkid);
            }
        }
    }

    /// The broker has no session for us: inbound state is void, and every publish it had
    /// not taken ownership of is sent again as a new one.
    fn session_lost(&mut self) {
        self.record(Change::SessionLost);
        self.inbound.clear();
        self.inbound_ids.clear();
        let mut flights: Vec<OutFlight> = self.outgoing.drain().map(|(_, f)| f).collect();
        flights.sort_unstable_by_key(|f| std::cmp::Reverse(f.token));
        for mut flight in flights {
            if flight.state == Awaiting::Complete {
                // PUBREC received: the broker had it, so it is delivered, not to be repeated.
                self.events.push_back(Event::Delivered(flight.token));
            } else {
                flight.publish.dup = false;
                flight.publish.pkid = 0;
                self.pending.push_front((flight.token, flight.publish));
            }
        }
        if self.had_session {
            tracing::warn!("the broker lost our session; unacknowledged replies are sent again");
        }
    }

    fn handle_publish(&mut self, publish: Publish, now: Instant) {
        let (qos, pkid, dup) = (publish.qos, publish.pkid, publish.dup);
        let ack_now = !self.config.manual_acks;
        self.surface(qos, pkid, dup, ack_now, now, |id| {
            Event::Message(Message { id, publish })
        });
    }

    /// Surfaces an inbound PUBLISH as `event` unless it is a redelivery of one already
    /// surfaced; acknowledges it at once when `ack_now`, else when the app calls `ack`.
    fn surface(
        &mut self,
        qos: QoS,
        pkid: u16,
        dup: bool,
        ack_now: bool,
        now: Instant,
        event: impl FnOnce(MessageId) -> Event,
    ) {
        if qos == QoS::AtMostOnce {
            let id = self.next_message_id();
            self.events.push_back(event(id));
            return;
        }
        if let Some(entry) = self.inbound.get(&pkid) {
            // A redelivery of a message already surfaced: never surface it twice.
            match entry.state {
                InState::Unacked => {}
                InState::AckOwed | InState::AwaitRel => self.send_inbound_ack(pkid, now),
                InState::AckedOnResume if dup => self.send(
                    &Packet::PubAck {
                        pkid,
                        failure: None,
                    },
                    now,
                ),
                // Not a redelivery: the broker had our PUBACK and reused the id.
                InState::AckedOnResume => {
                    self.inbound.remove(&pkid);
                    self.record(Change::InboundDone(pkid));
                }
            }
            if self.inbound.contains_key(&pkid) {
                tracing::debug!(pkid, "duplicate delivery suppressed");
                return;
            }
        }
        let id = self.next_message_id();
        self.inbound.insert(
            pkid,
            InFlight {
                id,
                qos,
                state: InState::Unacked,
            },
        );
        self.inbound_ids.insert(id, pkid);
        self.record_inbound(pkid);
        self.events.push_back(event(id));
        if ack_now {
            self.ack(id, now);
        }
    }

    /// Sends PUBACK (QoS 1, forgetting the message) or PUBREC (QoS 2, then awaiting PUBREL).
    fn send_inbound_ack(&mut self, pkid: u16, now: Instant) {
        let Some(entry) = self.inbound.get_mut(&pkid) else {
            return;
        };
        self.inbound_ids.remove(&entry.id);
        if entry.qos == QoS::AtLeastOnce {
            self.inbound.remove(&pkid);
            self.record(Change::InboundDone(pkid));
            self.send(
                &Packet::PubAck {
                    pkid,
                    failure: None,
                },
                now,
            );
        } else {
            entry.state = InState::AwaitRel;
            self.record_inbound(pkid);
            self.send(
                &Packet::PubRec {
                    pkid,
                    failure: None,
                },
                now,
            );
        }
    }

    fn handle_pubrec(&mut self, pkid: u16, failure: Option<String>, now: Instant) {
        let Some(flight) = self.outgoing.get_mut(&pkid) else {
            tracing::debug!(pkid, "PUBREC for no publish in flight ignored");
            return;
        };
        match (flight.state, failure) {
            (Awaiting::Received, Some(reason)) => {
                let token = flight.token;
                self.outgoing.remove(&pkid);
                self.record(Change::Completed(pkid));
                self.events.push_back(Event::Rejected(token, reason));
                self.flush_pending(now);
            }
            (Awaiting::Received | Awaiting::Complete, None) => {
                if flight.state != Awaiting::Complete {
                    flight.state = Awaiting::Complete;
                    self.record(Change::Released(pkid));
                }
                self.send(&Packet::PubRel(pkid), now);
            }
            _ => {}
        }
    }

    fn complete_outgoing(
        &mut self,
        pkid: u16,
        expected: Awaiting,
        failure: Option<String>,
        now: Instant,
    ) {
        match self.outgoing.get(&pkid) {
            Some(f) if f.state == expected => {
                let token = f.token;
                self.outgoing.remove(&pkid);
                self.record(Change::Completed(pkid));
                self.events.push_back(match failure {
                    None => Event::Delivered(token),
                    Some(reason) => Event::Rejected(token, reason),
                });
                self.flush_pending(now);
            }
            _ => tracing::debug!(pkid, "acknowledgement for no publish in flight ignored"),
        }
    }

    /// Moves queued publishes into the window while there is room.
    fn flush_pending(&mut self, now: Instant) {
        if self.link != Link::Connected {
            return;
        }
        let window = usize::from(self.config.max_inflight.min(self.caps.receive_maximum));
        while let Some((_, front)) = self.pending.front() {
            if front.qos != QoS::AtMostOnce && self.outgoing.len() >= window {
                return;
            }
            let Some((token, mut publish)) = self.pending.pop_front() else {
                return;
            };
            publish.qos = publish.qos.min(self.caps.max_qos);
            if let Some(max) = self.caps.max_packet_size {
                // Measure with a packet id in place: rumqttc leaves the two bytes of the
                // packet id out of the size of a QoS 1/2 publish whose id is still 0.
                let mut probe = publish.clone();
                if probe.qos != QoS::AtMostOnce {
                    probe.pkid = u16::MAX;
                }
                let size = Packet::Publish(probe).size(self.config.protocol);
                if size > max as usize {
                    self.record(Change::Unqueued);
                    self.events.push_back(Event::Rejected(
                        token,
                        format!("{size} bytes exceed the broker's maximum packet size of {max}"),
                    ));
                    continue;
                }
            }
            if publish.qos == QoS::AtMostOnce {
                publish.pkid = 0;
                self.record(Change::Unqueued);
                self.send(&Packet::Publish(publish), now);
                self.events.push_back(Event::Delivered(token));
                continue;
            }
            let Some(pkid) = self.allocate_pkid() else {
                self.pending.push_front((token, publish));
                return;
            };
            publish.pkid = pkid;
            self.record(Change::Sent {
                pkid,
                qos: publish.qos,
            });
            self.send(&Packet::Publish(publish.clone()), now);
            let state = if publish.qos == QoS::AtLeastOnce {
                Awaiting::Ack
            } else {
                Awaiting::Received
            };
            self.outgoing.insert(
                pkid,
                OutFlight {
                    token,
                    publish,
                    state,
                },
            );
        }
    }

    /// A packet id not in use by any outgoing publish (including those awaiting PUBCOMP)
    /// or subscription.
    fn allocate_pkid(&mut self) -> Option<u16> {
        for _ in 0..u16::MAX {
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            let id = self.next_pkid;
            if !self.outgoing.contains_key(&id) && !self.subscribing.iter().any(|(p, _)| *p == id) {
                return Some(id);
            }
        }
        None
    }

    fn next_message_id(&mut self) -> MessageId {
        self.next_message += 1;
        MessageId(self.next_message)
    }

    fn send(&mut self, packet: &Packet, now: Instant) {
        match packet.write(self.config.protocol, &mut self.transmit) {
            Ok(()) => self.last_sent = now,
            // Only a publish can be malformed (sizes are checked before); losing it loudly
            // beats killing the connection.
            Err(e) => tracing::error!("could not encode {}: {e}", packet_name(packet)),
        }
    }
}

fn packet_name(packet: &Packet) -> &'static str {
    match packet {
        Packet::Connect(_) => "CONNECT",
        Packet::ConnAck(_) => "CONNACK",
        Packet::Publish(_) => "PUBLISH",
        Packet::PubAck { .. } => "PUBACK",
        Packet::PubRec { .. } => "PUBREC",
        Packet::PubRel(_) => "PUBREL",
        Packet::PubComp(_) => "PUBCOMP",
        Packet::Subscribe { .. } => "SUBSCRIBE",
        Packet::SubAck { .. } => "SUBACK",
        Packet::UnsubAck(_) => "UNSUBACK",
        Packet::PingReq => "PINGREQ",
        Packet::PingResp => "PINGRESP",
        Packet::Disconnect { .. } => "DISCONNECT",
        Packet::Auth => "AUTH",
    }
}

#[cfg(test)]
mod tests;
