//! The broker's side of a conversation with a sans-IO [`Session`], for unit tests: broker
//! packets (CONNACK, PUBLISH, …) built and encoded with rumqttc's codec and fed to the
//! session, what the session transmitted decoded as a broker would, its events drained,
//! and sessions brought online by a CONNACK.
//!
//! `b4`/`Q4` are rumqttc's MQTT 3.1.1 packets and QoS, `b5`/`Q5` its MQTT 5 ones.

use std::time::Instant;

use bytes::BytesMut;
use rumqttc::mqttbytes::QoS as Q4;
use rumqttc::mqttbytes::v4 as b4;
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::v5::mqttbytes::v5 as b5;

use super::session::{Event, Session, SessionConfig, SessionError};

/// The largest packet the broker side writes (3.1.1); tests also give it to the session
/// as its `max_incoming_packet`.
pub(crate) const MAX_PACKET: usize = 1 << 20;

// --- what the broker sends ---

/// A 3.1.1 CONNACK.
pub(crate) fn connack4(code: b4::ConnectReturnCode, session_present: bool) -> b4::Packet {
    b4::Packet::ConnAck(b4::ConnAck::new(code, session_present))
}

/// A successful MQTT 5 CONNACK with the given properties.
pub(crate) fn connack5(session_present: bool, props: Option<b5::ConnAckProperties>) -> b5::Packet {
    b5::Packet::ConnAck(b5::ConnAck {
        session_present,
        code: b5::ConnectReturnCode::Success,
        properties: props,
    })
}

/// MQTT 5 CONNACK properties with none set: the base to set the ones a test is about on.
pub(crate) fn connack_props5() -> b5::ConnAckProperties {
    b5::ConnAckProperties {
        session_expiry_interval: None,
        receive_max: None,
        max_qos: None,
        retain_available: None,
        max_packet_size: None,
        assigned_client_identifier: None,
        topic_alias_max: None,
        reason_string: None,
        user_properties: Vec::new(),
        wildcard_subscription_available: None,
        subscription_identifiers_available: None,
        shared_subscription_available: None,
        server_keep_alive: None,
        response_information: None,
        server_reference: None,
        authentication_method: None,
        authentication_data: None,
    }
}

/// A 3.1.1 PUBLISH to the client on `cmd/u/1`.
pub(crate) fn inbound4(pkid: u16, qos: Q4, dup: bool, payload: &str) -> b4::Packet {
    let mut p = b4::Publish::new("cmd/u/1", qos, payload.as_bytes().to_vec());
    p.pkid = pkid;
    p.dup = dup;
    b4::Packet::Publish(p)
}

/// An MQTT 5 PUBLISH to the client on `cmd/u/1`, without properties.
pub(crate) fn inbound5(pkid: u16, qos: Q5, dup: bool, payload: &str) -> b5::Packet {
    let mut p = b5::Publish::new("cmd/u/1", qos, payload.as_bytes().to_vec(), None);
    p.pkid = pkid;
    p.dup = dup;
    b5::Packet::Publish(p)
}

/// A 3.1.1 SUBACK granting `granted` to one filter.
pub(crate) fn suback4(pkid: u16, granted: Q4) -> b4::Packet {
    b4::Packet::SubAck(b4::SubAck::new(
        pkid,
        vec![b4::SubscribeReasonCode::Success(granted)],
    ))
}

/// The bytes of 3.1.1 broker packets, back to back.
pub(crate) fn wire4(packets: Vec<b4::Packet>) -> Vec<u8> {
    let mut buf = BytesMut::new();
    for p in packets {
        p.write(&mut buf, MAX_PACKET)
            .expect("broker packet encodes");
    }
    buf.to_vec()
}

// --- feeding it to the session ---

/// Encodes a 3.1.1 broker packet and feeds it to `s`, which must consume all of it.
pub(crate) fn feed4(s: &mut Session, p: b4::Packet, now: Instant) -> Result<(), SessionError> {
    let mut buf = BytesMut::new();
    p.write(&mut buf, MAX_PACKET)
        .expect("broker packet encodes");
    s.handle_bytes(&mut buf, now)?;
    assert!(buf.is_empty(), "whole packet consumed");
    Ok(())
}

/// Encodes an MQTT 5 broker packet and feeds it to `s`, which must consume all of it.
pub(crate) fn feed5(s: &mut Session, p: b5::Packet, now: Instant) -> Result<(), SessionError> {
    let mut buf = BytesMut::new();
    p.write(&mut buf, None).expect("broker packet encodes");
    s.handle_bytes(&mut buf, now)?;
    assert!(buf.is_empty(), "whole packet consumed");
    Ok(())
}

/// Feeds `bytes` in `chunk`-byte reads, as a slow link delivers them.
pub(crate) fn feed_chunked(s: &mut Session, bytes: &[u8], chunk: usize, now: Instant) {
    let mut buf = BytesMut::new();
    for piece in bytes.chunks(chunk) {
        buf.extend_from_slice(piece);
        s.handle_bytes(&mut buf, now).expect("no connection error");
    }
    assert!(buf.is_empty(), "every byte consumed or skipped");
}

// --- what the session sent and emitted ---

/// Everything `s` has to transmit, concatenated.
pub(crate) fn transmitted(s: &mut Session) -> BytesMut {
    // Whatever a test looks at, a journal of the session's changes resumes it exactly.
    s.assert_changes_replay();
    let mut buf = BytesMut::new();
    let mut rounds = 0;
    while let Some(b) = s.poll_transmit() {
        buf.extend_from_slice(&b);
        rounds += 1;
        assert!(rounds < 1000, "poll_transmit never runs dry");
    }
    buf
}

/// What the client wrote, decoded as a 3.1.1 broker would.
pub(crate) fn sent4(s: &mut Session) -> Vec<b4::Packet> {
    let mut buf = transmitted(s);
    let mut out = Vec::new();
    while !buf.is_empty() {
        out.push(b4::Packet::read(&mut buf, usize::MAX).expect("client packet decodes"));
    }
    out
}

/// What the client wrote, decoded as an MQTT 5 broker would.
pub(crate) fn sent5(s: &mut Session) -> Vec<b5::Packet> {
    let mut buf = transmitted(s);
    let mut out = Vec::new();
    while !buf.is_empty() {
        // rumqttc's reader refuses the two-byte DISCONNECT it writes itself.
        if buf.len() >= 2 && buf[0] == 0xE0 && buf[1] == 0 {
            let _ = buf.split_to(2);
            out.push(b5::Packet::Disconnect(b5::Disconnect::new(
                b5::DisconnectReasonCode::NormalDisconnection,
            )));
            continue;
        }
        out.push(b5::Packet::read(&mut buf, None).expect("client packet decodes"));
    }
    out
}

/// The PUBLISHes among 3.1.1 packets the client sent.
pub(crate) fn publishes4(sent: &[b4::Packet]) -> Vec<b4::Publish> {
    sent.iter()
        .filter_map(|p| match p {
            b4::Packet::Publish(p) => Some(p.clone()),
            _ => None,
        })
        .collect()
}

/// The events `s` has for the application, drained.
pub(crate) fn events(s: &mut Session) -> Vec<Event> {
    let mut out = Vec::new();
    while let Some(e) = s.poll_event() {
        out.push(e);
        assert!(out.len() < 100_000, "poll_event never runs dry");
    }
    out
}

// --- sessions the broker has accepted ---

/// A 3.1.1 session connected by a CONNACK without a session present; what it sent and
/// its events are drained.
pub(crate) fn online4(config: SessionConfig, t0: Instant) -> Session {
    let mut s = Session::new(config, t0);
    s.handle_transport_up(t0);
    let _ = sent4(&mut s);
    feed4(&mut s, connack4(b4::ConnectReturnCode::Success, false), t0).unwrap();
    assert!(s.is_connected());
    let _ = sent4(&mut s);
    let _ = events(&mut s);
    s
}

/// An MQTT 5 session connected by a CONNACK without a session present and with `props`;
/// what it sent and its events are drained.
pub(crate) fn online5(
    config: SessionConfig,
    props: Option<b5::ConnAckProperties>,
    t0: Instant,
) -> Session {
    let mut s = Session::new(config, t0);
    s.handle_transport_up(t0);
    let _ = sent5(&mut s);
    feed5(&mut s, connack5(false, props), t0).unwrap();
    assert!(s.is_connected());
    let _ = sent5(&mut s);
    let _ = events(&mut s);
    s
}

/// Drops the link of a 3.1.1 session that resumes (its CONNECT must not ask for a clean
/// session) and reconnects with `session_present`; returns what was sent after the
/// CONNACK and the events.
pub(crate) fn reconnect4(
    s: &mut Session,
    session_present: bool,
    now: Instant,
) -> (Vec<b4::Packet>, Vec<Event>) {
    s.handle_transport_down();
    s.handle_transport_up(now);
    let connect = sent4(s);
    assert!(matches!(connect.as_slice(), [b4::Packet::Connect(c)] if !c.clean_session));
    feed4(
        s,
        connack4(b4::ConnectReturnCode::Success, session_present),
        now,
    )
    .unwrap();
    (sent4(s), events(s))
}
