//! Presence (SPEC §5): the retained JSON record on `session.status_topic` that says whether
//! the daemon is online, and the Last Will that says so when it vanishes.
//!
//! Pure, like the protocol core: it renders records and keeps the refresh deadline, with
//! `now` passed in; the daemon publishes what it returns. Presence publishes are not replies
//! and never count as such.
//!
//! It also decides how the Will adapts to a broker that refuses it ([`Presence::will_refused`]):
//! without retain where retained messages are not kept, at QoS 0 where QoS 1 is above the
//! broker's maximum. The records never go out above what the broker has shown it takes: its
//! CONNACK Maximum QoS, the QoS of the Will it accepted, and the QoS granted in SUBACKs.

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::config::Session;
use crate::mqtt::packet::{Publish, Will};
use crate::topic::Vars;
use crate::vocabulary::QoS;

/// Presence goes out at QoS 1: the record must arrive, and exactly-once buys nothing for a
/// retained value that is overwritten anyway.
const PRESENCE_QOS: QoS = QoS::AtLeastOnce;

/// Why the daemon went offline cleanly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Farewell {
    /// The completion message arrived.
    Completed,
    /// SIGTERM/SIGINT.
    Stopped,
}

/// How a connection attempt ended before a CONNACK accepted it, as far as the Will goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WillTrouble {
    /// MQTT 5 CONNACK 0x9A: the broker keeps no retained messages.
    RetainRefused,
    /// MQTT 5 CONNACK 0x9B: the Will's QoS is above the broker's maximum.
    QosRefused,
    /// MQTT 3.1.1 has no return code for either: mosquitto 2.0 closes the connection without
    /// a CONNACK ("disconnected due to QoS too high or retain not supported"). Other causes
    /// look the same, so what this changes is a guess until the next CONNACK confirms it.
    ClosedWithoutConnAck,
}

/// How [`Presence::will_refused`] changed the Will.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WillChange {
    /// No longer retained (for the run).
    NoRetain,
    /// At QoS 0 (for the run): the broker said its maximum is below the Will's QoS.
    Qos0,
    /// At QoS 0 on a guess: kept for the run once a CONNACK accepts it.
    Qos0Guess,
    /// At QoS 0 and not retained on a guess (the QoS 0 attempt was closed too; mosquitto's
    /// other reason is `retain_available false`): kept for the run once a CONNACK accepts it.
    NoRetainGuess,
    /// Back at QoS 1, retained: the broker closed the QoS 0 unretained attempt too, so the
    /// Will was not the cause.
    GuessUndone,
}

impl WillChange {
    /// Whether to connect again at once (the broker refused this Will, not the client);
    /// otherwise the attempt counts as failed and the reconnect backs off.
    pub fn reconnect_at_once(self) -> bool {
        self != WillChange::GuessUndone
    }
}

/// What a CONNACK told presence that is worth saying once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Noted {
    /// Retain turned out to be unavailable (MQTT 5 Retain Available = 0), the first time.
    pub retain_unavailable: bool,
    /// A Will lowered on a guess (QoS 0, perhaps not retained) was accepted: the guess
    /// holds; [`Presence::will`] tells what it is.
    pub will_guess_confirmed: bool,
}

/// What the online record reports.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot<'a> {
    /// The session UUID, once known.
    pub uuid: Option<&'a str>,
    /// Replies acknowledged so far.
    pub answered: u64,
    /// Commands dropped so far (bad payloads, QoS 0 beyond `max_pending`).
    pub dropped: u64,
    /// Unknown commands seen so far.
    pub unknown: u64,
    /// Reconnects so far.
    pub reconnects: u32,
    /// Time since the daemon started.
    pub uptime: Duration,
    /// The QoS replies go out at (configured, capped by the broker), once the broker has
    /// told its caps; `None` (JSON `null`, like `uuid`) until then.
    pub qos: Option<QoS>,
}

/// The presence record's state.
#[derive(Debug)]
pub struct Presence {
    topic: String,
    interval: Duration,
    /// QoS of the records on this connection.
    qos: QoS,
    retain: bool,
    retain_noted: bool,
    /// The lowest QoS granted in any SUBACK of the run: a 3.1.1 broker's only word on its
    /// maximum.
    granted: QoS,
    will_qos: QoS,
    will_retain: bool,
    /// `will_qos` was lowered on a guess ([`WillTrouble::ClosedWithoutConnAck`]) that no
    /// CONNACK has confirmed yet.
    will_guess: bool,
    /// A CONNACK accepted the Will as it is: a later close is not about the Will.
    will_accepted: bool,
    next_refresh: Option<Instant>,
}

impl Presence {
    /// Presence for `session`, or `None` when `status_topic = ""`.
    pub fn new(session: &Session) -> Option<Presence> {
        let vars = Vars {
            user_id: &session.responder.user_id,
            ..Vars::default()
        };
        let topic = session.status_topic.as_ref()?.render(&vars);
        Some(Presence {
            topic,
            interval: session.status_interval,
            qos: PRESENCE_QOS,
            retain: true,
            retain_noted: false,
            granted: QoS::ExactlyOnce,
            will_qos: PRESENCE_QOS,
            will_retain: true,
            will_guess: false,
            will_accepted: false,
            next_refresh: None,
        })
    }

    /// The topic the record goes to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The Last Will for the next CONNECT: `{"state":"offline","reason":"lost"}`, retained
    /// at QoS 1 unless a broker refused that.
    pub fn will(&self) -> Will {
        Will {
            topic: self.topic.clone(),
            payload: Bytes::from_static(br#"{"state":"offline","reason":"lost"}"#),
            qos: self.will_qos,
            retain: self.will_retain,
        }
    }

    /// A connection attempt ended with `trouble` before any CONNACK accepted it: adapts the
    /// Will for the next CONNECT ([`Presence::will`]) and says how, or `None` when the
    /// Will cannot be the cause (nothing left to lower, or a CONNACK already took it).
    pub fn will_refused(&mut self, trouble: WillTrouble) -> Option<WillChange> {
        match trouble {
            WillTrouble::RetainRefused if self.will_retain => {
                self.will_retain = false;
                Some(WillChange::NoRetain)
            }
            WillTrouble::QosRefused if self.will_qos > QoS::AtMostOnce => {
                self.will_qos = QoS::AtMostOnce;
                self.will_guess = false;
                Some(WillChange::Qos0)
            }
            WillTrouble::ClosedWithoutConnAck if self.will_guess && self.will_retain => {
                self.will_retain = false;
                Some(WillChange::NoRetainGuess)
            }
            WillTrouble::ClosedWithoutConnAck if self.will_guess => {
                // Refused at QoS 0 unretained as well: something else is wrong, and the
                // broker may well take the usual Will once that is fixed. The next close
                // guesses again.
                self.will_guess = false;
                self.will_qos = PRESENCE_QOS;
                self.will_retain = true;
                Some(WillChange::GuessUndone)
            }
            WillTrouble::ClosedWithoutConnAck
                if !self.will_accepted && self.will_qos > QoS::AtMostOnce =>
            {
                self.will_qos = QoS::AtMostOnce;
                self.will_guess = true;
                Some(WillChange::Qos0Guess)
            }
            _ => None,
        }
    }

    /// A connection attempt failed for a reason that is not the Will: a guess pending from
    /// the previous close is dropped (back to QoS 1, retained). Whether there was one.
    pub fn drop_guess(&mut self) -> bool {
        if !std::mem::take(&mut self.will_guess) {
            return false;
        }
        self.will_qos = PRESENCE_QOS;
        self.will_retain = true;
        true
    }

    /// A CONNACK arrived: the online record is due at once (every connect announces
    /// itself), and what the broker allows decides QoS and retain for this connection.
    /// Records never go above the Will's QoS: the broker took that one, and a 3.1.1 broker
    /// says nothing else before the first SUBACK (mosquitto with `max_qos 0` disconnects a
    /// client that publishes at QoS 1).
    pub fn handle_connected(
        &mut self,
        max_qos: QoS,
        retain_available: bool,
        now: Instant,
    ) -> Noted {
        self.next_refresh = Some(now);
        self.qos = PRESENCE_QOS
            .min(max_qos)
            .min(self.will_qos)
            .min(self.granted);
        // A broker that refused a retained Will does not take retained records either.
        self.retain = retain_available && self.will_retain;
        self.will_accepted = true;
        let mut noted = Noted {
            will_guess_confirmed: std::mem::take(&mut self.will_guess),
            ..Noted::default()
        };
        if !self.retain && !self.retain_noted {
            self.retain_noted = true;
            // A confirmed guess says so itself.
            noted.retain_unavailable = !noted.will_guess_confirmed;
        }
        noted
    }

    /// A SUBACK granted `qos`: records stay at or below it for the rest of the run.
    pub fn handle_granted(&mut self, qos: QoS) {
        self.granted = self.granted.min(qos);
        self.qos = self.qos.min(qos);
    }

    /// The QoS of the records on this connection.
    pub fn qos(&self) -> QoS {
        self.qos
    }

    /// The connection is gone: no refresh until the next one.
    pub fn handle_disconnected(&mut self) {
        self.next_refresh = None;
    }

    /// When the record is due for a refresh.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_refresh
    }

    /// Whether the refresh is due at `now`.
    pub fn is_due(&self, now: Instant) -> bool {
        self.next_refresh.is_some_and(|t| now >= t)
    }

    /// The online record, and the next refresh scheduled `status_interval` from `now`.
    pub fn online(&mut self, snapshot: Snapshot<'_>, now: Instant) -> Publish {
        self.next_refresh = Some(now + self.interval);
        let record = serde_json::json!({
            "state": "online",
            "version": env!("CARGO_PKG_VERSION"),
            "uuid": snapshot.uuid,
            "answered": snapshot.answered,
            "dropped": snapshot.dropped,
            "unknown": snapshot.unknown,
            "reconnects": snapshot.reconnects,
            "uptime_secs": snapshot.uptime.as_secs(),
            "qos": snapshot.qos.map(QoS::as_u8),
        });
        self.publish(record.to_string())
    }

    /// The offline record of a clean exit; refreshing stops.
    pub fn offline(&mut self, why: Farewell) -> Publish {
        self.next_refresh = None;
        let reason = match why {
            Farewell::Completed => "completed",
            Farewell::Stopped => "stopped",
        };
        self.publish(serde_json::json!({"state": "offline", "reason": reason}).to_string())
    }

    fn publish(&self, payload: String) -> Publish {
        Publish {
            dup: false,
            qos: self.qos,
            retain: self.retain,
            pkid: 0,
            topic: self.topic.clone(),
            payload: Bytes::from(payload),
            response_topic: None,
            correlation_data: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::session;

    fn json(p: &Publish) -> serde_json::Value {
        serde_json::from_slice(&p.payload).expect("presence is JSON")
    }

    #[test]
    fn off_when_the_topic_is_empty() {
        let mut s = session();
        s.status_topic = None;
        assert!(Presence::new(&s).is_none());
    }

    #[test]
    fn will_online_refresh_and_offline() {
        let t = Instant::now();
        let mut p = Presence::new(&session()).unwrap();
        assert_eq!(p.topic(), "2547841/status");
        let will = p.will();
        assert!(will.retain);
        assert_eq!(will.qos, QoS::AtLeastOnce);
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&will.payload).unwrap(),
            serde_json::json!({"state": "offline", "reason": "lost"})
        );

        assert_eq!(
            p.handle_connected(QoS::ExactlyOnce, true, t),
            Noted::default()
        );
        assert!(p.is_due(t), "announced on every connect");
        let snapshot = Snapshot {
            uuid: Some("u-1"),
            answered: 42,
            dropped: 5,
            unknown: 2,
            reconnects: 3,
            uptime: Duration::from_millis(7_900),
            qos: Some(QoS::AtLeastOnce),
        };
        let online = p.online(snapshot, t);
        assert!(online.retain);
        assert_eq!(online.qos, QoS::AtLeastOnce);
        let v = json(&online);
        assert_eq!(v["state"], "online");
        assert_eq!(v["uuid"], "u-1");
        assert_eq!(v["answered"], 42);
        assert_eq!(v["dropped"], 5);
        assert_eq!(v["unknown"], 2);
        assert_eq!(v["reconnects"], 3);
        assert_eq!(v["uptime_secs"], 7);
        assert_eq!(v["qos"], 1);
        assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(p.poll_timeout(), Some(t + Duration::from_secs(60)));
        assert!(!p.is_due(t + Duration::from_secs(59)));
        assert!(p.is_due(t + Duration::from_secs(60)));

        let none = Snapshot {
            uuid: None,
            qos: None,
            ..snapshot
        };
        let v = json(&p.online(none, t));
        assert!(v["uuid"].is_null(), "{v}");
        assert!(
            v["qos"].is_null(),
            "before the broker's caps are known: {v}"
        );

        let off = p.offline(Farewell::Completed);
        assert_eq!(
            json(&off),
            serde_json::json!({"state": "offline", "reason": "completed"})
        );
        assert_eq!(p.poll_timeout(), None);
        assert_eq!(json(&p.offline(Farewell::Stopped))["reason"], "stopped");
    }

    #[test]
    fn no_retain_and_capped_qos_when_the_broker_says_so() {
        let t = Instant::now();
        let mut p = Presence::new(&session()).unwrap();
        assert!(
            p.handle_connected(QoS::AtMostOnce, false, t)
                .retain_unavailable,
            "noted once"
        );
        assert!(
            !p.handle_connected(QoS::AtMostOnce, false, t)
                .retain_unavailable
        );
        let snapshot = Snapshot {
            uuid: None,
            answered: 0,
            dropped: 0,
            unknown: 0,
            reconnects: 0,
            uptime: Duration::ZERO,
            qos: None,
        };
        let online = p.online(snapshot, t);
        assert!(!online.retain);
        assert_eq!(online.qos, QoS::AtMostOnce);
        p.handle_disconnected();
        assert_eq!(p.poll_timeout(), None);
    }

    fn record() -> Snapshot<'static> {
        Snapshot {
            uuid: None,
            answered: 0,
            dropped: 0,
            unknown: 0,
            reconnects: 0,
            uptime: Duration::ZERO,
            qos: None,
        }
    }

    #[test]
    fn mqtt5_will_refusals_adapt_the_will_once_each() {
        let t = Instant::now();
        let mut p = Presence::new(&session()).unwrap();
        assert_eq!(
            p.will_refused(WillTrouble::RetainRefused),
            Some(WillChange::NoRetain)
        );
        assert!(!p.will().retain);
        assert_eq!(p.will().qos, QoS::AtLeastOnce);
        assert_eq!(
            p.will_refused(WillTrouble::QosRefused),
            Some(WillChange::Qos0)
        );
        assert_eq!(p.will().qos, QoS::AtMostOnce);
        assert!(WillChange::Qos0.reconnect_at_once());
        // Refused again although nothing is left to lower: a real refusal, not the Will's.
        assert_eq!(p.will_refused(WillTrouble::QosRefused), None);
        assert_eq!(p.will_refused(WillTrouble::RetainRefused), None);
        // Certain, not a guess: no confirmation to report, and it stays for the run. The
        // records are not retained either (said once), whatever the CONNACK claims.
        assert_eq!(
            p.handle_connected(QoS::AtMostOnce, true, t),
            Noted {
                retain_unavailable: true,
                will_guess_confirmed: false
            }
        );
        assert!(!p.online(record(), t).retain);
        assert_eq!(p.will_refused(WillTrouble::ClosedWithoutConnAck), None);
        assert_eq!(p.will().qos, QoS::AtMostOnce);
        assert_eq!(p.online(record(), t).qos, QoS::AtMostOnce);
        assert_eq!(p.offline(Farewell::Completed).qos, QoS::AtMostOnce);
    }

    #[test]
    fn a_v311_close_without_connack_lowers_the_will_on_a_guess_the_connack_confirms() {
        let t = Instant::now();
        let mut p = Presence::new(&session()).unwrap();
        assert_eq!(
            p.will_refused(WillTrouble::ClosedWithoutConnAck),
            Some(WillChange::Qos0Guess)
        );
        assert!(WillChange::Qos0Guess.reconnect_at_once());
        let will = p.will();
        assert_eq!((will.qos, will.retain), (QoS::AtMostOnce, true));
        // 3.1.1: the CONNACK has no Maximum QoS, yet the records stay at the Will's QoS.
        let noted = p.handle_connected(QoS::ExactlyOnce, true, t);
        assert!(noted.will_guess_confirmed, "said once");
        assert_eq!(p.online(record(), t).qos, QoS::AtMostOnce);
        assert!(p.online(record(), t).retain);
        assert_eq!(p.offline(Farewell::Stopped).qos, QoS::AtMostOnce);
        // Kept for the run; later closes are not about the Will.
        p.handle_disconnected();
        assert_eq!(p.will_refused(WillTrouble::ClosedWithoutConnAck), None);
        assert!(
            !p.handle_connected(QoS::ExactlyOnce, true, t)
                .will_guess_confirmed
        );
        assert_eq!(p.will().qos, QoS::AtMostOnce);
    }

    #[test]
    fn a_guess_refused_as_well_is_undone_and_a_will_once_accepted_is_never_guessed_at() {
        let t = Instant::now();
        let mut p = Presence::new(&session()).unwrap();
        assert_eq!(
            p.will_refused(WillTrouble::ClosedWithoutConnAck),
            Some(WillChange::Qos0Guess)
        );
        assert_eq!(
            p.will_refused(WillTrouble::ClosedWithoutConnAck),
            Some(WillChange::NoRetainGuess)
        );
        assert!(WillChange::NoRetainGuess.reconnect_at_once());
        assert_eq!(
            p.will_refused(WillTrouble::ClosedWithoutConnAck),
            Some(WillChange::GuessUndone)
        );
        assert!(!WillChange::GuessUndone.reconnect_at_once(), "backs off");
        let will = p.will();
        assert_eq!((will.qos, will.retain), (QoS::AtLeastOnce, true));
        // A QoS 1 Will accepted: a close before a later CONNACK is something else.
        assert_eq!(
            p.handle_connected(QoS::ExactlyOnce, true, t),
            Noted::default()
        );
        p.handle_disconnected();
        assert_eq!(p.will_refused(WillTrouble::ClosedWithoutConnAck), None);
        assert_eq!(p.will().qos, QoS::AtLeastOnce);
    }

    #[test]
    fn a_v311_close_at_qos_0_as_well_drops_retain_on_a_guess_the_connack_confirms() {
        let t = Instant::now();
        let mut p = Presence::new(&session()).unwrap();
        p.will_refused(WillTrouble::ClosedWithoutConnAck);
        assert_eq!(
            p.will_refused(WillTrouble::ClosedWithoutConnAck),
            Some(WillChange::NoRetainGuess)
        );
        let will = p.will();
        assert_eq!((will.qos, will.retain), (QoS::AtMostOnce, false));
        // 3.1.1 CONNACKs say nothing of retain; the accepted Will does.
        let noted = p.handle_connected(QoS::ExactlyOnce, true, t);
        assert!(noted.will_guess_confirmed);
        assert!(!noted.retain_unavailable, "the confirmed guess says it");
        let online = p.online(record(), t);
        assert_eq!((online.qos, online.retain), (QoS::AtMostOnce, false));
        assert!(!p.offline(Farewell::Completed).retain);
        p.handle_disconnected();
        assert_eq!(p.will_refused(WillTrouble::ClosedWithoutConnAck), None);
        assert!(
            !p.handle_connected(QoS::ExactlyOnce, true, t)
                .will_guess_confirmed
        );
    }

    #[test]
    fn an_attempt_failing_otherwise_drops_the_guess() {
        let t = Instant::now();
        let mut p = Presence::new(&session()).unwrap();
        assert!(!p.drop_guess(), "nothing to drop");
        p.will_refused(WillTrouble::ClosedWithoutConnAck);
        p.will_refused(WillTrouble::ClosedWithoutConnAck);
        assert!(p.drop_guess());
        let will = p.will();
        assert_eq!((will.qos, will.retain), (QoS::AtLeastOnce, true));
        // The next CONNACK confirms nothing.
        assert!(
            !p.handle_connected(QoS::ExactlyOnce, true, t)
                .will_guess_confirmed
        );
        assert!(p.online(record(), t).retain);
    }

    #[test]
    fn records_stay_at_or_below_every_suback_grant() {
        let t = Instant::now();
        let mut p = Presence::new(&session()).unwrap();
        p.handle_connected(QoS::ExactlyOnce, true, t);
        assert_eq!(p.qos(), QoS::AtLeastOnce);
        p.handle_granted(QoS::ExactlyOnce);
        assert_eq!(p.qos(), QoS::AtLeastOnce, "never raised");
        p.handle_granted(QoS::AtMostOnce);
        assert_eq!(p.online(record(), t).qos, QoS::AtMostOnce);
        // The next connection remembers it (a 3.1.1 CONNACK says nothing of it).
        p.handle_disconnected();
        p.handle_connected(QoS::ExactlyOnce, true, t);
        assert_eq!(p.offline(Farewell::Completed).qos, QoS::AtMostOnce);
    }
}
