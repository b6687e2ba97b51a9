//! Arbitrary broker bytes (raw, or well-formed broker packets so the fuzzer gets past the
//! CONNACK) interleaved with application calls into the sans-IO `mqtt::session::Session`,
//! for MQTT 3.1.1 and 5.
//!
//! Invariants checked after every step:
//! - it never panics;
//! - no two `Message` events for one inbound QoS 2 packet id while that message is
//!   unacknowledged or awaiting PUBREL (a CONNACK without a session starts afresh);
//! - packet ids of QoS 1/2 publishes and SUBSCRIBEs are never 0 and never reused while in
//!   flight; a DUP publish resends the same message under the same id; a PUBREL is only
//!   sent for a publish in flight;
//! - a `SubAck` event answers a SUBSCRIBE in progress and names that SUBSCRIBE's filters;
//! - everything transmitted decodes with rumqttc's codec as client packets, to the last byte;
//! - the recorded changes replay to the snapshot (what a crash-resume journal of them
//!   resumes is what the session holds).
#![no_main]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use bytes::{BufMut, Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use mqtt_responder::mqtt::packet::Publish;
use mqtt_responder::mqtt::session::{Event, PublishToken, Session, SessionConfig, SessionState};
use mqtt_responder::vocabulary::MessageId;
use mqtt_responder::vocabulary::Secret;
use mqtt_responder::vocabulary::{Protocol, QoS};

#[derive(Debug, Arbitrary)]
struct Input {
    v5: bool,
    manual_acks: bool,
    clean_first: bool,
    max_inflight: u8,
    keep_alive_secs: u8,
    small_max_packet: bool,
    ops: Vec<Op>,
}

#[derive(Debug, Arbitrary)]
enum Op {
    /// Raw bytes from the broker.
    Bytes(Vec<u8>),
    /// A well-formed broker packet.
    Packet(BrokerPacket),
    /// Acknowledge the oldest-but-`n` outgoing publish in flight the way its state expects.
    AckOutgoing {
        which: u8,
        pubcomp: bool,
        failure: bool,
    },
    /// SUBACK a SUBSCRIBE in progress.
    SubAckPending {
        which: u8,
        granted: Vec<u8>,
    },
    /// PUBREL an inbound QoS 2 message.
    PubRelInbound(u8),
    /// Redeliver an inbound message under its packet id.
    Redeliver {
        which: u8,
        dup: bool,
    },
    Publish {
        qos: u8,
        payload: Vec<u8>,
        correlation: Option<Vec<u8>>,
    },
    Ack(u8),
    AckRandom(u64),
    Subscribe(u8),
    Advance(u16),
    TransportDown,
    TransportUp,
    Disconnect,
    /// Crash and resume from a snapshot.
    Restore,
}

#[derive(Debug, Arbitrary)]
enum BrokerPacket {
    ConnAck {
        session_present: bool,
        code: u8,
        props: Vec<ConnAckProp>,
    },
    Publish {
        qos: u8,
        dup: bool,
        retain: bool,
        pkid: u16,
        topic: u8,
        payload: Vec<u8>,
        response: bool,
    },
    PubAck(u16, u8),
    PubRec(u16, u8),
    PubRel(u16),
    PubComp(u16),
    SubAck(u16, Vec<u8>),
    PingResp,
    Disconnect(u8),
}

#[derive(Debug, Arbitrary)]
enum ConnAckProp {
    ReceiveMaximum(u16),
    MaxQos(u8),
    MaxPacketSize(u32),
    ServerKeepAlive(u16),
    RetainAvailable(u8),
}

fn qos(n: u8) -> QoS {
    match n % 3 {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

fn varint(out: &mut BytesMut, mut n: usize) {
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if n == 0 {
            return;
        }
    }
}

fn frame(out: &mut BytesMut, header: u8, body: &[u8]) {
    out.put_u8(header);
    varint(out, body.len());
    out.put_slice(body);
}

fn string(out: &mut BytesMut, s: &[u8]) {
    out.put_u16(s.len() as u16);
    out.put_slice(s);
}

const TOPICS: &[&str] = &["a", "2547841/UUID", "cmd/x", "", "a/+", "#"];

/// Encodes a broker packet by hand (our codec only writes client packets).
fn encode(p: &BrokerPacket, v5: bool, out: &mut BytesMut) {
    let mut body = BytesMut::new();
    let ack = |out: &mut BytesMut, header: u8, pkid: u16, reason: Option<u8>| {
        let mut body = BytesMut::new();
        body.put_u16(pkid);
        if v5 && let Some(r) = reason {
            body.put_u8(r);
            body.put_u8(0);
        }
        frame(out, header, &body);
    };
    match p {
        BrokerPacket::ConnAck {
            session_present,
            code,
            props,
        } => {
            body.put_u8(u8::from(*session_present));
            if v5 {
                body.put_u8(if *code < 0x80 { 0 } else { *code });
                let mut p = BytesMut::new();
                for prop in props.iter().take(5) {
                    match prop {
                        ConnAckProp::ReceiveMaximum(n) => {
                            p.put_u8(0x21);
                            p.put_u16(*n)
                        }
                        ConnAckProp::MaxQos(n) => {
                            p.put_u8(0x24);
                            p.put_u8(*n)
                        }
                        ConnAckProp::MaxPacketSize(n) => {
                            p.put_u8(0x27);
                            p.put_u32(*n)
                        }
                        ConnAckProp::ServerKeepAlive(n) => {
                            p.put_u8(0x13);
                            p.put_u16(*n)
                        }
                        ConnAckProp::RetainAvailable(n) => {
                            p.put_u8(0x25);
                            p.put_u8(*n)
                        }
                    }
                }
                varint(&mut body, p.len());
                body.put_slice(&p);
            } else {
                body.put_u8(code % 6);
            }
            frame(out, 0x20, &body);
        }
        BrokerPacket::Publish {
            qos,
            dup,
            retain,
            pkid,
            topic,
            payload,
            response,
        } => {
            let qos = qos % 3;
            string(
                &mut body,
                TOPICS[usize::from(*topic) % TOPICS.len()].as_bytes(),
            );
            if qos > 0 {
                body.put_u16(*pkid);
            }
            if v5 {
                let mut p = BytesMut::new();
                if *response {
                    p.put_u8(0x08);
                    string(&mut p, b"resp/t");
                    p.put_u8(0x09);
                    string(&mut p, b"corr");
                }
                varint(&mut body, p.len());
                body.put_slice(&p);
            }
            body.put_slice(payload);
            let header = 0x30 | (u8::from(*dup) << 3) | (qos << 1) | u8::from(*retain);
            frame(out, header, &body);
        }
        BrokerPacket::PubAck(pkid, r) => ack(out, 0x40, *pkid, Some(*r)),
        BrokerPacket::PubRec(pkid, r) => ack(out, 0x50, *pkid, Some(*r)),
        BrokerPacket::PubRel(pkid) => ack(out, 0x62, *pkid, None),
        BrokerPacket::PubComp(pkid) => ack(out, 0x70, *pkid, None),
        BrokerPacket::SubAck(pkid, codes) => {
            body.put_u16(*pkid);
            if v5 {
                body.put_u8(0);
            }
            if codes.is_empty() {
                body.put_u8(0);
            }
            body.put_slice(codes);
            frame(out, 0x90, &body);
        }
        BrokerPacket::PingResp => frame(out, 0xD0, &[]),
        BrokerPacket::Disconnect(r) => {
            if v5 {
                frame(out, 0xE0, &[*r, 0]);
            } else {
                frame(out, 0xE0, &[]);
            }
        }
    }
}

/// Outgoing publish state as seen on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Out {
    Sent(QoS),
    Released,
}

#[derive(Default)]
struct Model {
    /// Application publish number → token.
    tokens: HashMap<PublishToken, u64>,
    /// Packet id → (publish number, state) of QoS 1/2 publishes in flight.
    outgoing: HashMap<u16, (u64, Out)>,
    /// SUBSCRIBEs in progress on this connection: packet id and filters.
    subscribing: Vec<(u16, Vec<String>)>,
    /// Inbound QoS 2 packet ids surfaced and not yet released → PUBREC sent.
    inbound2: HashMap<u16, bool>,
    /// Inbound messages surfaced (for acks and redeliveries).
    messages: Vec<(MessageId, Publish)>,
    connected: bool,
}

impl Model {
    fn events(&mut self, s: &mut Session) {
        while let Some(event) = s.poll_event() {
            match event {
                Event::Connected {
                    session_present, ..
                } => {
                    self.connected = true;
                    if !session_present {
                        // The broker forgot every packet id.
                        self.outgoing.clear();
                        self.inbound2.clear();
                    }
                }
                Event::Message(m) => {
                    let p = &m.publish;
                    if p.qos == QoS::ExactlyOnce {
                        assert!(
                            !self.inbound2.contains_key(&p.pkid),
                            "QoS 2 packet id {} surfaced twice",
                            p.pkid
                        );
                        self.inbound2.insert(p.pkid, false);
                    }
                    if self.messages.len() < 64 {
                        self.messages.push((m.id, m.publish));
                    }
                }
                Event::Delivered(token) | Event::Rejected(token, _) => {
                    let n = self.tokens.get(&token).copied();
                    self.outgoing.retain(|_, (m, _)| Some(*m) != n);
                }
                Event::SubAck { pkid, filters } => {
                    let i = self
                        .subscribing
                        .iter()
                        .position(|(p, _)| *p == pkid)
                        .unwrap_or_else(|| panic!("SUBACK {pkid} surfaced for no SUBSCRIBE"));
                    let (_, sent) = self.subscribing.swap_remove(i);
                    let named: Vec<&String> = filters.iter().map(|(f, _)| f).collect();
                    assert_eq!(
                        named,
                        sent.iter().collect::<Vec<_>>(),
                        "SUBACK {pkid} names other filters than its SUBSCRIBE"
                    );
                }
                Event::Purged | Event::Refused(_) => self.connected = false,
                // 3.1.1: acknowledged and skipped by the session; its packet id is not
                // surfaced, so the duplicate check above cannot see it.
                Event::BrokerDisconnect { .. } | Event::Oversized { .. } => {}
            }
        }
    }

    fn transmit(&mut self, s: &mut Session, v5: bool) {
        while let Some(bytes) = s.poll_transmit() {
            let mut buf = BytesMut::from(&bytes[..]);
            while !buf.is_empty() {
                for p in decode(&mut buf, v5) {
                    self.sent(p);
                }
            }
        }
    }

    fn sent(&mut self, p: Client) {
        match p {
            Client::Publish {
                qos,
                pkid,
                dup,
                topic,
            } => {
                if qos == QoS::AtMostOnce {
                    return;
                }
                assert_ne!(pkid, 0, "QoS {qos:?} publish with packet id 0");
                let n: u64 = topic
                    .strip_prefix("r/")
                    .and_then(|n| n.parse().ok())
                    .expect("topic of an application publish");
                match self.outgoing.get(&pkid) {
                    Some((m, _)) if dup => {
                        assert_eq!(*m, n, "DUP resend of packet id {pkid} is another message")
                    }
                    Some((m, _)) => {
                        panic!("packet id {pkid} reused for publish {n} while {m} is in flight")
                    }
                    None => {
                        assert!(
                            !self.outgoing.values().any(|(m, _)| *m == n),
                            "publish {n} sent again under a new packet id {pkid}"
                        );
                        assert!(
                            !self.subscribing.iter().any(|(p, _)| *p == pkid),
                            "packet id {pkid} of a SUBSCRIBE in progress"
                        );
                    }
                }
                self.outgoing.insert(pkid, (n, Out::Sent(qos)));
            }
            Client::PubRel(pkid) => {
                let entry = self.outgoing.get_mut(&pkid);
                assert!(
                    matches!(
                        entry,
                        Some((_, Out::Sent(QoS::ExactlyOnce) | Out::Released))
                    ),
                    "PUBREL {pkid} for no QoS 2 publish in flight"
                );
                if let Some(e) = entry {
                    e.1 = Out::Released;
                }
            }
            Client::PubRec(pkid) => {
                if let Some(awaiting) = self.inbound2.get_mut(&pkid) {
                    *awaiting = true;
                }
            }
            Client::PubComp(pkid) => {
                // Sent for a PUBREL: a message whose PUBREC went out is released.
                if self.inbound2.get(&pkid) == Some(&true) {
                    self.inbound2.remove(&pkid);
                }
            }
            Client::Subscribe(pkid, filters) => {
                assert_ne!(pkid, 0, "SUBSCRIBE with packet id 0");
                assert!(
                    !self.outgoing.contains_key(&pkid),
                    "SUBSCRIBE reuses packet id {pkid} of a publish in flight"
                );
                assert!(
                    !self.subscribing.iter().any(|(p, _)| *p == pkid),
                    "SUBSCRIBE reuses packet id {pkid}"
                );
                self.subscribing.push((pkid, filters));
            }
            Client::Other => {}
        }
    }
}

/// The client packets the checker cares about.
enum Client {
    Publish {
        qos: QoS,
        pkid: u16,
        dup: bool,
        topic: String,
    },
    PubRel(u16),
    PubRec(u16),
    PubComp(u16),
    /// Packet id and filters.
    Subscribe(u16, Vec<String>),
    Other,
}

/// Decodes one client packet with rumqttc's codec; anything else fails the run.
fn decode(buf: &mut BytesMut, v5: bool) -> Vec<Client> {
    use rumqttc::mqttbytes::v4;
    use rumqttc::v5::mqttbytes::v5 as m5;
    const MAX: usize = 1 << 28;
    if v5 {
        // rumqttc's v5 reader rejects a DISCONNECT with an empty body, which MQTT 5 allows.
        if buf.len() >= 2 && buf[0] == 0xE0 && buf[1] == 0 {
            let _ = buf.split_to(2);
            return vec![Client::Other];
        }
        let p = m5::Packet::read(buf, Some(MAX as u32))
            .unwrap_or_else(|e| panic!("transmitted bytes do not decode: {e:?}: {buf:02x?}"));
        vec![match p {
            m5::Packet::Publish(p) => Client::Publish {
                qos: qos5(p.qos),
                pkid: p.pkid,
                dup: p.dup,
                topic: String::from_utf8_lossy(&p.topic).into_owned(),
            },
            m5::Packet::PubRel(p) => Client::PubRel(p.pkid),
            m5::Packet::PubRec(p) => Client::PubRec(p.pkid),
            m5::Packet::PubComp(p) => Client::PubComp(p.pkid),
            m5::Packet::Subscribe(s) => {
                Client::Subscribe(s.pkid, s.filters.into_iter().map(|f| f.path).collect())
            }
            m5::Packet::Connect(..)
            | m5::Packet::PubAck(_)
            | m5::Packet::PingReq(_)
            | m5::Packet::Disconnect(_)
            | m5::Packet::Unsubscribe(_) => Client::Other,
            other => panic!("transmitted a broker packet: {other:?}"),
        }]
    } else {
        let p = v4::Packet::read(buf, MAX)
            .unwrap_or_else(|e| panic!("transmitted bytes do not decode: {e:?}: {buf:02x?}"));
        vec![match p {
            v4::Packet::Publish(p) => Client::Publish {
                qos: qos4(p.qos),
                pkid: p.pkid,
                dup: p.dup,
                topic: p.topic,
            },
            v4::Packet::PubRel(p) => Client::PubRel(p.pkid),
            v4::Packet::PubRec(p) => Client::PubRec(p.pkid),
            v4::Packet::PubComp(p) => Client::PubComp(p.pkid),
            v4::Packet::Subscribe(s) => {
                Client::Subscribe(s.pkid, s.filters.into_iter().map(|f| f.path).collect())
            }
            v4::Packet::Connect(..)
            | v4::Packet::PubAck(_)
            | v4::Packet::PingReq
            | v4::Packet::Disconnect
            | v4::Packet::Unsubscribe(_) => Client::Other,
            other => panic!("transmitted a broker packet: {other:?}"),
        }]
    }
}

fn qos4(q: rumqttc::mqttbytes::QoS) -> QoS {
    match q {
        rumqttc::mqttbytes::QoS::AtMostOnce => QoS::AtMostOnce,
        rumqttc::mqttbytes::QoS::AtLeastOnce => QoS::AtLeastOnce,
        rumqttc::mqttbytes::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

fn qos5(q: rumqttc::v5::mqttbytes::QoS) -> QoS {
    match q {
        rumqttc::v5::mqttbytes::QoS::AtMostOnce => QoS::AtMostOnce,
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce => QoS::AtLeastOnce,
        rumqttc::v5::mqttbytes::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

fuzz_target!(|data: &[u8]| {
    // "RAW" + flags + broker bytes: a connection that receives exactly those bytes (the seed
    // corpus uses it for CONNACK + PUBLISH streams); anything else is a structured input.
    let input = match data.strip_prefix(b"RAW") {
        Some([flags, bytes @ ..]) => Input {
            v5: flags & 1 != 0,
            manual_acks: flags & 2 != 0,
            clean_first: flags & 4 != 0,
            max_inflight: 2,
            keep_alive_secs: 5,
            small_max_packet: false,
            ops: vec![
                Op::TransportUp,
                Op::Bytes(bytes.to_vec()),
                Op::Ack(0),
                Op::Ack(1),
            ],
        },
        _ => match Input::arbitrary_take_rest(arbitrary::Unstructured::new(data)) {
            Ok(input) => input,
            Err(_) => return,
        },
    };
    run(input);
});

fn run(input: Input) {
    let v5 = input.v5;
    let config = SessionConfig {
        protocol: if v5 { Protocol::V5 } else { Protocol::V311 },
        client_id: "fuzz".to_owned(),
        username: Some("user".to_owned()),
        password: Some(Secret::new("secret".to_owned())),
        keep_alive: Duration::from_secs(u64::from(input.keep_alive_secs % 8)),
        max_inflight: u16::from(input.max_inflight % 5).max(1),
        max_incoming_packet: if input.small_max_packet { 64 } else { 1 << 20 },
        session_expiry: 3600,
        will: None,
        manual_acks: input.manual_acks,
        clean_first: input.clean_first,
        record_changes: true,
    };
    let mut now = Instant::now();
    let mut s = Session::new(config.clone(), now);
    let mut m = Model::default();
    let mut rx = BytesMut::new();
    let mut published = 0u64;
    let mut up = false;
    let mut replayed = SessionState::default();
    let mut changes = Vec::new();

    for op in input.ops.iter().take(256) {
        let mut feed = BytesMut::new();
        match op {
            Op::Bytes(b) => feed.put_slice(b),
            Op::Packet(p) => encode(p, v5, &mut feed),
            Op::AckOutgoing {
                which,
                pubcomp,
                failure,
            } => {
                let mut ids: Vec<(u16, (u64, Out))> =
                    m.outgoing.iter().map(|(k, v)| (*k, *v)).collect();
                ids.sort_unstable();
                if !ids.is_empty() {
                    let (pkid, (_, state)) = ids[usize::from(*which) % ids.len()];
                    let reason = if *failure { 0x80 } else { 0 };
                    let p = match state {
                        Out::Sent(QoS::AtLeastOnce) => BrokerPacket::PubAck(pkid, reason),
                        Out::Sent(_) if !*pubcomp => BrokerPacket::PubRec(pkid, reason),
                        _ => BrokerPacket::PubComp(pkid),
                    };
                    encode(&p, v5, &mut feed);
                }
            }
            Op::SubAckPending { which, granted } => {
                if !m.subscribing.is_empty() {
                    let (pkid, _) = m.subscribing[usize::from(*which) % m.subscribing.len()];
                    encode(
                        &BrokerPacket::SubAck(
                            pkid,
                            granted
                                .iter()
                                .map(|g| if *g > 2 { 0x80 } else { *g })
                                .collect(),
                        ),
                        v5,
                        &mut feed,
                    );
                }
            }
            Op::PubRelInbound(which) => {
                let mut ids: Vec<u16> = m.inbound2.keys().copied().collect();
                ids.sort_unstable();
                if !ids.is_empty() {
                    encode(
                        &BrokerPacket::PubRel(ids[usize::from(*which) % ids.len()]),
                        v5,
                        &mut feed,
                    );
                }
            }
            Op::Redeliver { which, dup } => {
                if !m.messages.is_empty() {
                    let (_, p) = &m.messages[usize::from(*which) % m.messages.len()];
                    let topic = TOPICS.iter().position(|t| *t == p.topic).unwrap_or(0) as u8;
                    encode(
                        &BrokerPacket::Publish {
                            qos: p.qos.as_u8(),
                            dup: *dup,
                            retain: false,
                            pkid: p.pkid,
                            topic,
                            payload: p.payload.to_vec(),
                            response: false,
                        },
                        v5,
                        &mut feed,
                    );
                }
            }
            Op::Publish {
                qos: q,
                payload,
                correlation,
            } => {
                published += 1;
                let token = s.publish(
                    Publish {
                        dup: false,
                        qos: qos(*q),
                        retain: false,
                        pkid: 0,
                        topic: format!("r/{published}"),
                        payload: Bytes::from(payload.clone()),
                        response_topic: None,
                        correlation_data: correlation.clone().map(Bytes::from),
                    },
                    now,
                );
                m.tokens.insert(token, published);
            }
            Op::Ack(which) => {
                if !m.messages.is_empty() {
                    let (id, _) = m.messages[usize::from(*which) % m.messages.len()];
                    s.ack(id, now);
                }
            }
            Op::AckRandom(id) => s.ack(MessageId(*id), now),
            Op::Subscribe(n) => {
                let filters = (0..=n % 3).map(|i| (format!("t/{i}"), qos(*n))).collect();
                let _ = s.subscribe(filters, now);
            }
            Op::Advance(ms) => {
                now += Duration::from_millis(u64::from(*ms) * 8);
                if s.poll_timeout().is_some_and(|t| t <= now) && s.handle_timeout(now).is_err() {
                    m.transmit(&mut s, v5);
                    s.handle_transport_down();
                    up = false;
                    m.subscribing.clear();
                }
            }
            Op::TransportDown => {
                s.handle_transport_down();
                up = false;
                rx.clear();
                m.subscribing.clear();
            }
            Op::TransportUp => {
                m.transmit(&mut s, v5);
                s.handle_transport_up(now);
                up = true;
                rx.clear();
                // A new transport without handle_transport_down (a misuse the driver never
                // commits) leaves SUBSCRIBEs in progress, as the session does.
            }
            Op::Disconnect => s.disconnect(now),
            Op::Restore => {
                m.events(&mut s);
                m.transmit(&mut s, v5);
                let state = s.snapshot();
                s = Session::restore(config.clone(), state, now);
                // What the journal holds from here on starts with the restored session.
                changes.clear();
                replayed = s.snapshot();
                up = false;
                rx.clear();
                m.subscribing.clear();
            }
        }
        // Broker bytes only flow over a live transport. Feed them a byte at a time, so each
        // call completes at most one packet and events and transmits pair up exactly.
        if up {
            for byte in feed {
                rx.put_u8(byte);
                let result = s.handle_bytes(&mut rx, now);
                m.events(&mut s);
                m.transmit(&mut s, v5);
                if result.is_err() {
                    s.handle_transport_down();
                    up = false;
                    rx.clear();
                    m.subscribing.clear();
                    break;
                }
            }
        }
        m.events(&mut s);
        m.transmit(&mut s, v5);
        s.take_changes(&mut changes);
        for change in changes.drain(..) {
            replayed.apply(change);
        }
        replayed.set_counters(s.counters());
        assert_eq!(replayed, s.snapshot(), "the changes replay to the snapshot");
    }
}
