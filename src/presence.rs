//! Presence (SPEC §5): the retained JSON record on `session.status_topic` that says whether
//! the daemon is online, and the Last Will that says so when it vanishes.
//!
//! Pure, like the protocol core: it renders records and keeps the refresh deadline, with
//! `now` passed in; the daemon publishes what it returns. Presence publishes are not replies
//! and never count as such.

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::config::Session;
use crate::mqtt::QoS;
use crate::mqtt::packet::{Publish, Will};
use crate::topic::Vars;

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

/// What the online record reports.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot<'a> {
    /// The session UUID, once known.
    pub uuid: Option<&'a str>,
    /// Replies acknowledged so far.
    pub answered: u64,
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
    qos: QoS,
    retain: bool,
    retain_noted: bool,
    next_refresh: Option<Instant>,
}

impl Presence {
    /// Presence for `session`, or `None` when `status_topic = ""`.
    pub fn new(session: &Session) -> Option<Presence> {
        let vars = Vars {
            user_id: &session.user_id,
            ..Vars::default()
        };
        let topic = session.status_topic.as_ref()?.render(&vars);
        Some(Presence {
            topic,
            interval: session.status_interval,
            qos: PRESENCE_QOS,
            retain: true,
            retain_noted: false,
            next_refresh: None,
        })
    }

    /// The topic the record goes to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The Last Will for the CONNECT: retained `{"state":"offline","reason":"lost"}`.
    pub fn will(&self) -> Will {
        Will {
            topic: self.topic.clone(),
            payload: Bytes::from_static(br#"{"state":"offline","reason":"lost"}"#),
            qos: PRESENCE_QOS,
            retain: true,
        }
    }

    /// A CONNACK arrived: the online record is due at once (every connect announces
    /// itself), and what the broker allows decides QoS and retain for this connection.
    /// Returns `true` the first time retain turns out to be unavailable (MQTT 5 Retain
    /// Available = 0), so the caller can say so once.
    pub fn handle_connected(&mut self, max_qos: QoS, retain_available: bool, now: Instant) -> bool {
        self.next_refresh = Some(now);
        self.qos = PRESENCE_QOS.min(max_qos);
        self.retain = retain_available;
        if !retain_available && !self.retain_noted {
            self.retain_noted = true;
            return true;
        }
        false
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
    use crate::protocol::testing::session;

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

        assert!(!p.handle_connected(QoS::ExactlyOnce, true, t));
        assert!(p.is_due(t), "announced on every connect");
        let snapshot = Snapshot {
            uuid: Some("u-1"),
            answered: 42,
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
        assert!(p.handle_connected(QoS::AtMostOnce, false, t), "noted once");
        assert!(!p.handle_connected(QoS::AtMostOnce, false, t));
        let snapshot = Snapshot {
            uuid: None,
            answered: 0,
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
}
