//! The session as a new process needs it to continue exactly where a dead one stopped: the
//! [`SessionState`] ([`Session::snapshot`](super::Session::snapshot)), and the [`Change`]s
//! that carry a snapshot forward one step at a time ([`SessionState::apply`]), so that a
//! crash-resume journal can write what changed instead of the whole state.
//!
//! `apply` mirrors the session's own bookkeeping: replaying every change a session recorded
//! on the snapshot it started from gives its snapshot now (the session tests and the fuzz
//! target check exactly that).

use serde::{Deserialize, Serialize};

use super::{Awaiting, InFlight, InState, PublishToken};
use crate::mqtt::packet::Publish;
use crate::vocabulary::QoS;

/// The part of a [`Session`](super::Session) that a new process needs to resume it;
/// serialised by the daemon's journal.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionState {
    pub(super) counters: Counters,
    /// Outgoing QoS 1/2 publishes in flight, in send order, with what they await.
    pub(super) outgoing: Vec<(SavedPublish, Awaiting)>,
    /// Publishes queued behind the window, in queue order.
    pub(super) pending: Vec<SavedPublish>,
    /// Inbound QoS 1/2 messages not finished with the broker, by packet id.
    pub(super) inbound: Vec<SavedInbound>,
}

/// The session's id counters: the last packet id, publish token and message handle given
/// out. A journal writes them with every batch of changes; they are not changes themselves
/// (a SUBSCRIBE or a QoS 0 message moves them and changes nothing else).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub(super) pkid: u16,
    pub(super) token: u64,
    pub(super) message: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct SavedPublish {
    pub(super) token: u64,
    pub(super) pkid: u16,
    pub(super) qos: QoS,
    pub(super) topic: String,
    pub(super) payload: Vec<u8>,
    pub(super) correlation_data: Option<Vec<u8>>,
}

impl SavedPublish {
    pub(super) fn of(token: PublishToken, p: &Publish) -> SavedPublish {
        SavedPublish {
            token: token.0,
            pkid: p.pkid,
            qos: p.qos,
            topic: p.topic.clone(),
            payload: p.payload.to_vec(),
            correlation_data: p.correlation_data.as_ref().map(|c| c.to_vec()),
        }
    }
}

/// An inbound QoS 1/2 message's place in its handshake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedInbound {
    pub(super) pkid: u16,
    pub(super) message_id: u64,
    pub(super) qos: QoS,
    pub(super) state: InState,
}

impl SavedInbound {
    pub(super) fn of(pkid: u16, entry: &InFlight) -> SavedInbound {
        SavedInbound {
            pkid,
            message_id: entry.id.0,
            qos: entry.qos,
            state: entry.state,
        }
    }
}

/// One change to what a [`SessionState`] holds, in the order the session made them
/// ([`Session::take_changes`](super::Session::take_changes)). Outgoing publishes in flight
/// are named by packet id, queued ones by their place in the queue: the session only ever
/// takes the front of its queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(private_interfaces)]
pub enum Change {
    /// A publish joined the back of the queue (with the next token).
    Queued(SavedPublish),
    /// The front of the queue went out with packet id `pkid` at `qos` (1 or 2).
    Sent {
        /// Its packet id.
        pkid: u16,
        /// The QoS it went out at (the broker's maximum may have lowered it).
        qos: QoS,
    },
    /// The front of the queue is done with: written at QoS 0, or refused before sending.
    Unqueued,
    /// PUBREC for `pkid` came: PUBREL sent, PUBCOMP awaited.
    Released(u16),
    /// The publish in flight as `pkid` is finished with (acknowledged or refused).
    Completed(u16),
    /// The broker had no session: inbound state is void, and publishes in flight go back
    /// to the front of the queue, except those past PUBREC (delivered).
    SessionLost,
    /// An inbound message arrived, or moved on in its handshake.
    Inbound(SavedInbound),
    /// The inbound message with this packet id is finished with.
    InboundDone(u16),
    /// Everything in flight in both directions was forgotten.
    DiscardedAll,
}

impl SessionState {
    /// Carries the state one change forward. A change that names nothing the state holds
    /// (a journal cannot hold one, but its bytes may be damaged) changes nothing.
    pub fn apply(&mut self, change: Change) {
        match change {
            Change::Queued(publish) => {
                self.counters.token = self.counters.token.max(publish.token);
                self.pending.push(publish);
            }
            Change::Sent { pkid, qos } => {
                if self.pending.is_empty() {
                    return;
                }
                let mut publish = self.pending.remove(0);
                publish.pkid = pkid;
                publish.qos = qos;
                let awaiting = if qos == QoS::AtLeastOnce {
                    Awaiting::Ack
                } else {
                    Awaiting::Received
                };
                self.outgoing.push((publish, awaiting));
            }
            Change::Unqueued => {
                if !self.pending.is_empty() {
                    self.pending.remove(0);
                }
            }
            Change::Released(pkid) => {
                if let Some((_, awaiting)) = self.outgoing.iter_mut().find(|(p, _)| p.pkid == pkid)
                {
                    *awaiting = Awaiting::Complete;
                }
            }
            Change::Completed(pkid) => self.outgoing.retain(|(p, _)| p.pkid != pkid),
            Change::SessionLost => {
                self.inbound.clear();
                let mut requeued: Vec<SavedPublish> = std::mem::take(&mut self.outgoing)
                    .into_iter()
                    .filter(|(_, awaiting)| *awaiting != Awaiting::Complete)
                    .map(|(mut publish, _)| {
                        publish.pkid = 0;
                        publish
                    })
                    .collect();
                requeued.append(&mut self.pending);
                self.pending = requeued;
            }
            Change::Inbound(entry) => {
                self.counters.message = self.counters.message.max(entry.message_id);
                match self.inbound.binary_search_by_key(&entry.pkid, |e| e.pkid) {
                    Ok(i) => self.inbound[i] = entry,
                    Err(i) => self.inbound.insert(i, entry),
                }
            }
            Change::InboundDone(pkid) => self.inbound.retain(|e| e.pkid != pkid),
            Change::DiscardedAll => {
                self.outgoing.clear();
                self.pending.clear();
                self.inbound.clear();
            }
        }
    }

    /// Sets the id counters a journal saved with a batch of changes.
    pub fn set_counters(&mut self, counters: Counters) {
        self.counters = counters;
    }

    /// The highest message handle the state refers to or gave out.
    pub fn last_message_id(&self) -> u64 {
        self.counters.message
    }
}
