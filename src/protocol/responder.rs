//! The daemon's side of the protocol: subscribe to the UUID topic, log in, learn the UUID,
//! subscribe to the command topic, answer each command from the reply table, and on the
//! completion message drain and disconnect.

use std::time::Instant;

use bytes::Bytes;

use super::MessageId;
use crate::config::{ReplyTable, Session};
use crate::mqtt::QoS;

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
    /// Why it is sent.
    pub kind: OutgoingKind,
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
}

/// The responder state machine.
#[derive(Debug)]
pub struct Responder {
    _todo: (),
}

impl Responder {
    /// A responder for one run, not yet connected.
    pub fn new(session: &Session, replies: &ReplyTable) -> Responder {
        todo!()
    }

    /// A CONNACK arrived. `max_qos` is the broker's cap (MQTT 5 CONNACK; `ExactlyOnce` for
    /// 3.1.1). With `session_present` the broker kept our subscriptions.
    pub fn handle_connected(&mut self, session_present: bool, max_qos: QoS, now: Instant) {
        todo!()
    }

    /// The connection was lost; subscriptions in progress are void.
    pub fn handle_disconnected(&mut self, now: Instant) {
        todo!()
    }

    /// The SUBACK for `topic`: the granted QoS, or `None` when refused.
    pub fn handle_subscribed(&mut self, topic: &str, granted: Option<QoS>, now: Instant) {
        todo!()
    }

    /// A message arrived.
    pub fn handle_message(&mut self, id: MessageId, topic: &str, payload: &[u8], now: Instant) {
        todo!()
    }

    /// The reply to `id` was acknowledged by the broker at its QoS (QoS 0: written).
    pub fn handle_delivered(&mut self, id: MessageId, now: Instant) {
        todo!()
    }

    /// A deadline from `poll_timeout` passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        todo!()
    }

    /// The earliest pending deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        todo!()
    }

    /// The next action, in order.
    pub fn poll_action(&mut self) -> Option<Action> {
        todo!()
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        todo!()
    }

    /// The UUID, once accepted.
    pub fn uuid(&self) -> Option<&str> {
        todo!()
    }

    /// The QoS in use for replies (configured, capped by the broker).
    pub fn effective_qos(&self) -> QoS {
        todo!()
    }

    /// Counters for the exit summary.
    pub fn stats(&self) -> &Stats {
        todo!()
    }
}
