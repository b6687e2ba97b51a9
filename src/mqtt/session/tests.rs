//! Unit tests of the sans-IO [`Session`]: CONNECT and CONNACK, the inbound and outgoing
//! QoS 1/2 handshakes, resume and session loss, the in-flight window, packet ids,
//! keep-alive, framing, broker DISCONNECT and SUBSCRIBE, with rumqttc's codec playing
//! the broker.

use super::*;
use crate::mqtt::broker_side::{
    MAX_PACKET, connack_props5, connack4, connack5, events, feed_chunked, feed4, feed5, inbound4,
    inbound5, online4, online5, publishes4, reconnect4, sent4, sent5, suback4, transmitted, wire4,
};
use crate::mqtt::packet::{WILL_QOS_REFUSED, WILL_RETAIN_REFUSED};
use rumqttc::mqttbytes::QoS as Q4;
use rumqttc::mqttbytes::v4 as b4;
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::v5::mqttbytes::v5 as b5;

/// The session's packet cap in these tests: as large as what the broker side writes.
const MAX: usize = MAX_PACKET;
const KA: Duration = Duration::from_secs(30);

fn cfg(protocol: Protocol) -> SessionConfig {
    SessionConfig {
        protocol,
        client_id: "responder-1".into(),
        username: Some("alice".into()),
        password: Some(Secret::new("s3cret".into())),
        keep_alive: KA,
        max_inflight: 20,
        max_incoming_packet: MAX,
        session_expiry: 3600,
        will: None,
        manual_acks: true,
        clean_first: false,
        record_changes: true,
    }
}

/// The simulated clock: `at(t0, ms)`.
fn at(t0: Instant, ms: u64) -> Instant {
    t0 + Duration::from_millis(ms)
}

// --- what the application sees and sends ---

fn messages(evs: &[Event]) -> Vec<Message> {
    evs.iter()
        .filter_map(|e| match e {
            Event::Message(m) => Some(m.clone()),
            _ => None,
        })
        .collect()
}

fn delivered(evs: &[Event]) -> Vec<PublishToken> {
    evs.iter()
        .filter_map(|e| match e {
            Event::Delivered(t) => Some(*t),
            _ => None,
        })
        .collect()
}

fn reply(qos: QoS, payload: &str) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        pkid: 0,
        topic: "reply/u/1".into(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        response_topic: None,
        correlation_data: None,
    }
}

// --- CONNECT and CONNACK ---

#[test]
fn connect_carries_client_id_keep_alive_and_credentials_v311() {
    let t0 = Instant::now();
    let mut s = Session::new(cfg(Protocol::V311), t0);
    s.handle_transport_up(t0);
    let sent = sent4(&mut s);
    let [b4::Packet::Connect(c)] = sent.as_slice() else {
        panic!("expected one CONNECT, got {sent:?}");
    };
    assert_eq!(c.client_id, "responder-1");
    assert_eq!(c.keep_alive, 30);
    assert!(!c.clean_session);
    let login = c.login.as_ref().expect("credentials");
    assert_eq!(
        (login.username.as_str(), login.password.as_str()),
        ("alice", "s3cret")
    );
    assert!(!s.is_connected());
}

#[test]
fn connect_carries_client_id_keep_alive_credentials_expiry_and_receive_maximum_v5() {
    let t0 = Instant::now();
    let mut s = Session::new(cfg(Protocol::V5), t0);
    s.handle_transport_up(t0);
    let sent = sent5(&mut s);
    let [b5::Packet::Connect(c, will, login)] = sent.as_slice() else {
        panic!("expected one CONNECT, got {sent:?}");
    };
    assert_eq!(c.client_id, "responder-1");
    assert_eq!(c.keep_alive, 30);
    assert!(!c.clean_start);
    assert!(will.is_none());
    let props = c.properties.as_ref().expect("properties");
    assert_eq!(props.session_expiry_interval, Some(3600));
    assert_eq!(props.max_packet_size, Some(MAX as u32));
    // The broker holds back QoS 1/2 commands beyond our reply window (SPEC §2 Floods).
    assert_eq!(props.receive_maximum, Some(20));
    let login = login.as_ref().expect("credentials");
    assert_eq!(
        (login.username.as_str(), login.password.as_str()),
        ("alice", "s3cret")
    );
}

#[test]
fn clean_first_v311_purges_on_a_throwaway_connection_then_connects_persistent() {
    let t0 = Instant::now();
    let mut config = cfg(Protocol::V311);
    config.clean_first = true;
    config.will = Some(Will {
        topic: "status/u".into(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
    });
    let mut s = Session::new(config, t0);
    s.handle_transport_up(t0);
    let sent = sent4(&mut s);
    let [b4::Packet::Connect(c)] = sent.as_slice() else {
        panic!("expected CONNECT, got {sent:?}");
    };
    assert!(c.clean_session);
    assert!(c.last_will.is_none(), "no Will on the purge connection");
    assert!(!s.will_offered());

    feed4(&mut s, connack4(b4::ConnectReturnCode::Success, false), t0).unwrap();
    assert_eq!(sent4(&mut s), vec![b4::Packet::Disconnect]);
    assert_eq!(events(&mut s), vec![Event::Purged]);
    assert!(!s.is_connected());

    s.handle_transport_down();
    s.handle_transport_up(at(t0, 10));
    let sent = sent4(&mut s);
    let [b4::Packet::Connect(c)] = sent.as_slice() else {
        panic!("expected CONNECT, got {sent:?}");
    };
    assert!(!c.clean_session);
    assert!(c.last_will.is_some());
    assert!(s.will_offered());
    feed4(
        &mut s,
        connack4(b4::ConnectReturnCode::Success, false),
        at(t0, 10),
    )
    .unwrap();
    assert!(s.is_connected());
    assert!(matches!(
        events(&mut s).as_slice(),
        [Event::Connected {
            session_present: false,
            ..
        }]
    ));
    assert!(sent4(&mut s).is_empty());
}

#[test]
fn clean_first_v5_is_clean_start_with_expiry_once_and_no_purge() {
    let t0 = Instant::now();
    let mut config = cfg(Protocol::V5);
    config.clean_first = true;
    let mut s = Session::new(config, t0);
    s.handle_transport_up(t0);
    let sent = sent5(&mut s);
    let [b5::Packet::Connect(c, _, _)] = sent.as_slice() else {
        panic!("expected CONNECT, got {sent:?}");
    };
    assert!(c.clean_start);
    assert_eq!(
        c.properties
            .as_ref()
            .and_then(|p| p.session_expiry_interval),
        Some(3600)
    );
    feed5(&mut s, connack5(false, None), t0).unwrap();
    assert!(s.is_connected());
    assert!(sent5(&mut s).is_empty(), "no DISCONNECT: nothing to purge");
    let evs = events(&mut s);
    assert!(!evs.contains(&Event::Purged));
    assert!(matches!(evs.as_slice(), [Event::Connected { .. }]));

    s.handle_transport_down();
    s.handle_transport_up(at(t0, 10));
    let sent = sent5(&mut s);
    let [b5::Packet::Connect(c, _, _)] = sent.as_slice() else {
        panic!("expected CONNECT, got {sent:?}");
    };
    assert!(!c.clean_start);
    assert_eq!(
        c.properties
            .as_ref()
            .and_then(|p| p.session_expiry_interval),
        Some(3600)
    );
}

#[test]
fn refused_connack_reports_the_code_v311() {
    for (code, expected) in [
        (
            b4::ConnectReturnCode::BadUserNamePassword,
            ConnectCode::BadCredentials,
        ),
        (
            b4::ConnectReturnCode::NotAuthorized,
            ConnectCode::NotAuthorized,
        ),
    ] {
        let t0 = Instant::now();
        let mut s = Session::new(cfg(Protocol::V311), t0);
        s.handle_transport_up(t0);
        let _ = sent4(&mut s);
        feed4(&mut s, connack4(code, false), t0).unwrap();
        assert_eq!(events(&mut s), vec![Event::Refused(expected)]);
        assert!(!s.is_connected());
        assert_eq!(s.poll_timeout(), None);
    }
}

#[test]
fn refused_connack_reports_the_code_v5() {
    for (code, expected) in [
        (
            b5::ConnectReturnCode::BadUserNamePassword,
            ConnectCode::BadCredentials,
        ),
        (
            b5::ConnectReturnCode::NotAuthorized,
            ConnectCode::NotAuthorized,
        ),
        // The Will refusals the daemon adapts to (mosquitto: retain_available false,
        // max_qos 0).
        (
            b5::ConnectReturnCode::RetainNotSupported,
            ConnectCode::Permanent(WILL_RETAIN_REFUSED),
        ),
        (
            b5::ConnectReturnCode::QoSNotSupported,
            ConnectCode::Permanent(WILL_QOS_REFUSED),
        ),
    ] {
        let t0 = Instant::now();
        let mut s = Session::new(cfg(Protocol::V5), t0);
        s.handle_transport_up(t0);
        let _ = sent5(&mut s);
        let ack = b5::Packet::ConnAck(b5::ConnAck {
            session_present: false,
            code,
            properties: None,
        });
        feed5(&mut s, ack, t0).unwrap();
        assert_eq!(events(&mut s), vec![Event::Refused(expected)]);
        assert!(!s.is_connected());
    }
}

#[test]
fn a_packet_before_connack_is_a_protocol_error() {
    let t0 = Instant::now();
    let mut s = Session::new(cfg(Protocol::V311), t0);
    s.handle_transport_up(t0);
    let err = feed4(&mut s, inbound4(1, Q4::AtLeastOnce, false, "x"), t0).unwrap_err();
    assert!(matches!(err, SessionError::Protocol(_)), "{err}");
}

// --- inbound QoS 1 and 2 ---

#[test]
fn inbound_qos1_surfaced_once_and_acked_only_on_ack() {
    let t0 = Instant::now();
    let mut s = online4(cfg(Protocol::V311), t0);
    feed4(
        &mut s,
        inbound4(7, Q4::AtLeastOnce, false, "cmd"),
        at(t0, 1),
    )
    .unwrap();
    let msgs = messages(&events(&mut s));
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].publish.payload, Bytes::from_static(b"cmd"));
    assert_eq!(msgs[0].publish.pkid, 7);
    assert!(sent4(&mut s).is_empty(), "no PUBACK before ack");

    feed4(&mut s, inbound4(7, Q4::AtLeastOnce, true, "cmd"), at(t0, 2)).unwrap();
    assert!(events(&mut s).is_empty(), "redelivery not surfaced");
    assert!(sent4(&mut s).is_empty());

    s.ack(msgs[0].id, at(t0, 3));
    assert_eq!(sent4(&mut s), vec![b4::Packet::PubAck(b4::PubAck::new(7))]);
    s.ack(msgs[0].id, at(t0, 4));
    assert!(sent4(&mut s).is_empty(), "a second ack sends nothing");

    // After PUBACK the id is free: a new message with it is new.
    feed4(
        &mut s,
        inbound4(7, Q4::AtLeastOnce, false, "next"),
        at(t0, 5),
    )
    .unwrap();
    assert_eq!(messages(&events(&mut s)).len(), 1);
}

#[test]
fn inbound_qos1_auto_ack_without_manual_acks() {
    let t0 = Instant::now();
    let mut config = cfg(Protocol::V311);
    config.manual_acks = false;
    let mut s = online4(config, t0);
    feed4(&mut s, inbound4(3, Q4::AtLeastOnce, false, "cmd"), t0).unwrap();
    assert_eq!(messages(&events(&mut s)).len(), 1);
    assert_eq!(sent4(&mut s), vec![b4::Packet::PubAck(b4::PubAck::new(3))]);
}

#[test]
fn inbound_qos2_exactly_once_handshake_v311() {
    let t0 = Instant::now();
    let mut s = online4(cfg(Protocol::V311), t0);
    feed4(
        &mut s,
        inbound4(9, Q4::ExactlyOnce, false, "cmd"),
        at(t0, 1),
    )
    .unwrap();
    let msgs = messages(&events(&mut s));
    assert_eq!(msgs.len(), 1);
    assert!(sent4(&mut s).is_empty(), "no PUBREC before ack");

    // Redelivered before PUBREC: suppressed, nothing sent.
    feed4(&mut s, inbound4(9, Q4::ExactlyOnce, true, "cmd"), at(t0, 2)).unwrap();
    assert!(events(&mut s).is_empty());
    assert!(sent4(&mut s).is_empty());

    s.ack(msgs[0].id, at(t0, 3));
    assert_eq!(sent4(&mut s), vec![b4::Packet::PubRec(b4::PubRec::new(9))]);

    // Redelivered after PUBREC: PUBREC again, not surfaced.
    feed4(&mut s, inbound4(9, Q4::ExactlyOnce, true, "cmd"), at(t0, 4)).unwrap();
    assert!(events(&mut s).is_empty());
    assert_eq!(sent4(&mut s), vec![b4::Packet::PubRec(b4::PubRec::new(9))]);

    feed4(&mut s, b4::Packet::PubRel(b4::PubRel::new(9)), at(t0, 5)).unwrap();
    assert_eq!(
        sent4(&mut s),
        vec![b4::Packet::PubComp(b4::PubComp::new(9))]
    );
    assert!(events(&mut s).is_empty());

    // The id is free again: a new message with it is surfaced.
    feed4(
        &mut s,
        inbound4(9, Q4::ExactlyOnce, false, "next"),
        at(t0, 6),
    )
    .unwrap();
    let msgs = messages(&events(&mut s));
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].publish.payload, Bytes::from_static(b"next"));
}

#[test]
fn inbound_qos2_exactly_once_handshake_v5() {
    let t0 = Instant::now();
    let mut s = online5(cfg(Protocol::V5), None, t0);
    feed5(&mut s, inbound5(9, Q5::ExactlyOnce, false, "cmd"), t0).unwrap();
    let msgs = messages(&events(&mut s));
    assert_eq!(msgs.len(), 1);
    feed5(&mut s, inbound5(9, Q5::ExactlyOnce, true, "cmd"), t0).unwrap();
    assert!(events(&mut s).is_empty());
    s.ack(msgs[0].id, t0);
    assert!(matches!(sent5(&mut s).as_slice(), [b5::Packet::PubRec(r)] if r.pkid == 9));
    feed5(&mut s, b5::Packet::PubRel(b5::PubRel::new(9, None)), t0).unwrap();
    assert!(matches!(sent5(&mut s).as_slice(), [b5::Packet::PubComp(c)] if c.pkid == 9));
}

#[test]
fn unexpected_pubrel_is_answered_with_pubcomp() {
    let t0 = Instant::now();
    let mut s = online4(cfg(Protocol::V311), t0);
    feed4(&mut s, b4::Packet::PubRel(b4::PubRel::new(4242)), t0).unwrap();
    assert_eq!(
        sent4(&mut s),
        vec![b4::Packet::PubComp(b4::PubComp::new(4242))]
    );
    assert!(events(&mut s).is_empty());
    assert!(s.is_connected());

    let mut s = online5(cfg(Protocol::V5), None, t0);
    feed5(&mut s, b5::Packet::PubRel(b5::PubRel::new(17, None)), t0).unwrap();
    assert!(matches!(sent5(&mut s).as_slice(), [b5::Packet::PubComp(c)] if c.pkid == 17));
}

#[test]
fn ack_while_offline_is_sent_on_resume_and_redelivery_not_surfaced() {
    for qos in [Q4::AtLeastOnce, Q4::ExactlyOnce] {
        let t0 = Instant::now();
        let mut s = online4(cfg(Protocol::V311), t0);
        feed4(&mut s, inbound4(5, qos, false, "cmd"), at(t0, 1)).unwrap();
        let msgs = messages(&events(&mut s));
        assert_eq!(msgs.len(), 1);

        s.handle_transport_down();
        s.ack(msgs[0].id, at(t0, 2));
        assert!(s.poll_transmit().is_none(), "nothing written while offline");

        let (sent, evs) = reconnect4(&mut s, true, at(t0, 3));
        let expected = match qos {
            Q4::AtLeastOnce => b4::Packet::PubAck(b4::PubAck::new(5)),
            _ => b4::Packet::PubRec(b4::PubRec::new(5)),
        };
        assert_eq!(sent, vec![expected.clone()], "{qos:?}");
        assert!(messages(&evs).is_empty());

        // The broker redelivers right after CONNACK, before it has read our ack.
        feed4(&mut s, inbound4(5, qos, true, "cmd"), at(t0, 4)).unwrap();
        assert!(
            messages(&events(&mut s)).is_empty(),
            "{qos:?} surfaced twice"
        );
        assert_eq!(sent4(&mut s), vec![expected], "{qos:?}");
    }
}

#[test]
fn after_a_resume_ack_a_fresh_publish_with_the_id_is_new() {
    let t0 = Instant::now();
    let mut s = online4(cfg(Protocol::V311), t0);
    feed4(&mut s, inbound4(5, Q4::AtLeastOnce, false, "one"), t0).unwrap();
    let msgs = messages(&events(&mut s));
    s.handle_transport_down();
    s.ack(msgs[0].id, t0);
    let _ = reconnect4(&mut s, true, t0);
    // The broker had the PUBACK and reused the id for a new message (DUP=0).
    feed4(&mut s, inbound4(5, Q4::AtLeastOnce, false, "two"), t0).unwrap();
    let msgs = messages(&events(&mut s));
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].publish.payload, Bytes::from_static(b"two"));
    // And the guard ends with the connection.
    s.ack(msgs[0].id, t0);
    let _ = sent4(&mut s);
    let _ = reconnect4(&mut s, true, t0);
    feed4(&mut s, inbound4(5, Q4::AtLeastOnce, true, "three"), t0).unwrap();
    assert_eq!(messages(&events(&mut s)).len(), 1);
}

#[test]
fn unacked_inbound_survives_resume_and_redelivery_is_suppressed() {
    let t0 = Instant::now();
    let mut s = online4(cfg(Protocol::V311), t0);
    feed4(&mut s, inbound4(5, Q4::ExactlyOnce, false, "cmd"), t0).unwrap();
    let msgs = messages(&events(&mut s));
    let (sent, _) = reconnect4(&mut s, true, at(t0, 1));
    assert!(sent.is_empty());
    feed4(&mut s, inbound4(5, Q4::ExactlyOnce, true, "cmd"), at(t0, 2)).unwrap();
    assert!(messages(&events(&mut s)).is_empty());
    s.ack(msgs[0].id, at(t0, 3));
    assert_eq!(sent4(&mut s), vec![b4::Packet::PubRec(b4::PubRec::new(5))]);
}

#[test]
fn pubrel_resent_on_resume_after_pubrec_completes() {
    let t0 = Instant::now();
    let mut s = online4(cfg(Protocol::V311), t0);
    feed4(&mut s, inbound4(6, Q4::ExactlyOnce, false, "cmd"), t0).unwrap();
    let msgs = messages(&events(&mut s));
    s.ack(msgs[0].id, t0);
    assert_eq!(sent4(&mut s), vec![b4::Packet::PubRec(b4::PubRec::new(6))]);
    let (sent, evs) = reconnect4(&mut s, true, at(t0, 1));
    assert!(sent.is_empty());
    assert!(messages(&evs).is_empty());
    feed4(&mut s, b4::Packet::PubRel(b4::PubRel::new(6)), at(t0, 2)).unwrap();
    assert_eq!(
        sent4(&mut s),
        vec![b4::Packet::PubComp(b4::PubComp::new(6))]
    );
    // A second PUBREL (our PUBCOMP was lost) is answered again, not an error.
    feed4(&mut s, b4::Packet::PubRel(b4::PubRel::new(6)), at(t0, 3)).unwrap();
    assert_eq!(
        sent4(&mut s),
        vec![b4::Packet::PubComp(b4::PubComp::new(6))]
    );
    assert!(events(&mut s).is_empty());
}

#[test]
fn session_lost_clears_inbound_state() {
    let t0 = Instant::now();
    let mut s = online4(cfg(Protocol::V311), t0);
    feed4(&mut s, inbound4(5, Q4::ExactlyOnce, false, "old"), t0).unwrap();
    let old = messages(&events(&mut s));
    let (sent, _) = reconnect4(&mut s, false, at(t0, 1));
    assert!(sent.is_empty());
    // The old handle is void: acking it sends nothing.
    s.ack(old[0].id, at(t0, 2));
    assert!(sent4(&mut s).is_empty());
    // The broker's new session may use id 5 for a new message.
    feed4(
        &mut s,
        inbound4(5, Q4::ExactlyOnce, false, "new"),
        at(t0, 3),
    )
    .unwrap();
    assert_eq!(messages(&events(&mut s)).len(), 1);
}

// --- outgoing ---

#[test]
fn outgoing_qos0_delivered_at_write() {
    let t0 = Instant::now();
    let mut s = online4(cfg(Protocol::V311), t0);
    let tok = s.publish(reply(QoS::AtMostOnce, "r"), t0);
    let sent = publishes4(&sent4(&mut s));
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].qos, Q4::AtMostOnce);
    assert_eq!(events(&mut s), vec![Event::Delivered(tok)]);
    assert_eq!(s.outstanding(), 0);
}

#[test]
fn outgoing_qos1_delivered_at_puback_duplicates_ignored() {
    let t0 = Instant::now();
    let mut s = online4(cfg(Protocol::V311), t0);
    let tok = s.publish(reply(QoS::AtLeastOnce, "r"), t0);
    let sent = publishes4(&sent4(&mut s));
    assert_eq!(sent.len(), 1);
    assert!(!sent[0].dup);
    let pkid = sent[0].pkid;
    assert_ne!(pkid, 0);
    assert!(events(&mut s).is_empty());
    feed4(&mut s, b4::Packet::PubAck(b4::PubAck::new(pkid)), t0).unwrap();
    assert_eq!(events(&mut s), vec![Event::Delivered(tok)]);
    feed4(&mut s, b4::Packet::PubAck(b4::PubAck::new(pkid)), t0).unwrap();
    feed4(&mut s, b4::Packet::PubAck(b4::PubAck::new(999)), t0).unwrap();
    assert!(events(&mut s).is_empty());
    assert!(s.is_connected());
    assert_eq!(s.outstanding(), 0);
}

#[test]
fn outgoing_qos2_delivered_at_pubcomp_duplicates_ignored() {
    let t0 = Instant::now();
    let mut s = online4(cfg(Protocol::V311), t0);
    let tok = s.publish(reply(QoS::ExactlyOnce, "r"), t0);
    let pkid = publishes4(&sent4(&mut s))[0].pkid;
    feed4(&mut s, b4::Packet::PubRec(b4::PubRec::new(pkid)), t0).unwrap();
    assert_eq!(
        sent4(&mut s),
        vec![b4::Packet::PubRel(b4::PubRel::new(pkid))]
    );
    assert!(events(&mut s).is_empty(), "not delivered at PUBREC");
    // A duplicate PUBREC gets the PUBREL again.
    feed4(&mut s, b4::Packet::PubRec(b4::PubRec::new(pkid)), t0).unwrap();
    assert_eq!(
        sent4(&mut s),
        vec![b4::Packet::PubRel(b4::PubRel::new(pkid))]
    );
    // PUBACK for a QoS 2 publish is not a completion.
    feed4(&mut s, b4::Packet::PubAck(b4::PubAck::new(pkid)), t0).unwrap();
    assert!(events(&mut s).is_empty());
    feed4(&mut s, b4::Packet::PubComp(b4::PubComp::new(pkid)), t0).unwrap();
    assert_eq!(events(&mut s), vec![Event::Delivered(tok)]);
    feed4(&mut s, b4::Packet::PubComp(b4::PubComp::new(pkid)), t0).unwrap();
    feed4(&mut s, b4::Packet::PubComp(b4::PubComp::new(31000)), t0).unwrap();
    feed4(&mut s, b4::Packet::PubRec(b4::PubRec::new(31000)), t0).unwrap();
    assert!(events(&mut s).is_empty());
    assert!(s.is_connected());
}

#[test]
fn publish_while_offline_waits_for_connack() {
    let t0 = Instant::now();
    let mut s = Session::new(cfg(Protocol::V311), t0);
    let tok = s.publish(reply(QoS::AtLeastOnce, "early"), t0);
    assert!(s.poll_transmit().is_none());
    s.handle_transport_up(t0);
    assert!(publishes4(&sent4(&mut s)).is_empty(), "not before CONNACK");
    feed4(&mut s, connack4(b4::ConnectReturnCode::Success, false), t0).unwrap();
    let sent = publishes4(&sent4(&mut s));
    assert_eq!(sent.len(), 1);
    feed4(
        &mut s,
        b4::Packet::PubAck(b4::PubAck::new(sent[0].pkid)),
        t0,
    )
    .unwrap();
    assert!(delivered(&events(&mut s)).contains(&tok));
}

#[test]
fn session_lost_resends_unconfirmed_as_new_and_completes_pubrecd() {
    let t0 = Instant::now();
    let mut s = online4(cfg(Protocol::V311), t0);
    let t1 = s.publish(reply(QoS::AtLeastOnce, "one"), t0);
    let t2 = s.publish(reply(QoS::ExactlyOnce, "two"), t0);
    let t3 = s.publish(reply(QoS::ExactlyOnce, "three"), t0);
    let first = publishes4(&sent4(&mut s));
    assert_eq!(first.len(), 3);
    feed4(
        &mut s,
        b4::Packet::PubRec(b4::PubRec::new(first[2].pkid)),
        t0,
    )
    .unwrap();
    let _ = sent4(&mut s);

    let (sent, evs) = reconnect4(&mut s, false, at(t0, 1));
    assert!(delivered(&evs).contains(&t3), "PUBREC'd: the broker has it");
    assert!(!delivered(&evs).contains(&t1) && !delivered(&evs).contains(&t2));
    let again = publishes4(&sent);
    let payloads: Vec<_> = again.iter().map(|p| p.payload.clone()).collect();
    assert_eq!(
        payloads,
        vec![Bytes::from_static(b"one"), Bytes::from_static(b"two")]
    );
    assert!(again.iter().all(|p| !p.dup), "new publishes, DUP=0");
    assert!(!sent.iter().any(|p| matches!(p, b4::Packet::PubRel(_))));
    assert_eq!(again[0].qos, Q4::AtLeastOnce);
    assert_eq!(again[1].qos, Q4::ExactlyOnce);
    feed4(
        &mut s,
        b4::Packet::PubAck(b4::PubAck::new(again[0].pkid)),
        t0,
    )
    .unwrap();
    assert_eq!(events(&mut s), vec![Event::Delivered(t1)]);
    assert_eq!(s.outstanding(), 1);
}

#[test]
fn resume_resends_with_dup_same_pkid_in_send_order_and_pubrel() {
    let t0 = Instant::now();
    let mut s = online4(cfg(Protocol::V311), t0);
    // Make the id order differ from the send order: wrap the counter.
    s.next_pkid = u16::MAX - 1;
    let toks: Vec<_> = (0..4)
        .map(|i| {
            let qos = if i % 2 == 0 {
                QoS::AtLeastOnce
            } else {
                QoS::ExactlyOnce
            };
            s.publish(reply(qos, &format!("r{i}")), t0)
        })
        .collect();
    let first = publishes4(&sent4(&mut s));
    let ids: Vec<u16> = first.iter().map(|p| p.pkid).collect();
    assert_eq!(ids, vec![u16::MAX, 1, 2, 3]);
    // r1 (QoS 2) got its PUBREC: on resume it gets a PUBREL, not a PUBLISH.
    feed4(&mut s, b4::Packet::PubRec(b4::PubRec::new(1)), t0).unwrap();
    let _ = sent4(&mut s);

    let (sent, evs) = reconnect4(&mut s, true, at(t0, 1));
    assert!(delivered(&evs).is_empty());
    let expected_order = [
        (u16::MAX, Some("r0")),
        (1, None),
        (2, Some("r2")),
        (3, Some("r3")),
    ];
    assert_eq!(sent.len(), 4, "{sent:?}");
    for (packet, (pkid, payload)) in sent.iter().zip(expected_order) {
        match (packet, payload) {
            (b4::Packet::Publish(p), Some(payload)) => {
                assert_eq!(p.pkid, pkid);
                assert!(p.dup, "resent with DUP=1");
                assert_eq!(p.payload, Bytes::copy_from_slice(payload.as_bytes()));
            }
            (b4::Packet::PubRel(r), None) => assert_eq!(r.pkid, pkid),
            other => panic!("unexpected {other:?}"),
        }
    }
    feed4(&mut s, b4::Packet::PubComp(b4::PubComp::new(1)), t0).unwrap();
    assert_eq!(events(&mut s), vec![Event::Delivered(toks[1])]);
}

#[test]
fn inflight_window_caps_publishes_and_refills_on_acks() {
    let t0 = Instant::now();
    let mut config = cfg(Protocol::V311);
    config.max_inflight = 3;
    let mut s = online4(config, t0);
    let toks: Vec<_> = (0..10)
        .map(|i| s.publish(reply(QoS::AtLeastOnce, &format!("r{i}")), t0))
        .collect();
    let mut sent = publishes4(&sent4(&mut s));
    assert_eq!(sent.len(), 3);
    let mut done = Vec::new();
    for _ in 0..20 {
        let Some(p) = sent.first().cloned() else {
            break;
        };
        sent.remove(0);
        feed4(&mut s, b4::Packet::PubAck(b4::PubAck::new(p.pkid)), t0).unwrap();
        done.extend(delivered(&events(&mut s)));
        let more = publishes4(&sent4(&mut s));
        sent.extend(more);
        assert!(sent.len() <= 3, "window exceeded");
    }
    assert_eq!(done, toks);
    assert_eq!(s.outstanding(), 0);
}

#[test]
fn v5_receive_maximum_caps_the_window() {
    let t0 = Instant::now();
    let mut props = connack_props5();
    props.receive_max = Some(2);
    let mut s = online5(cfg(Protocol::V5), Some(props), t0);
    assert_eq!(s.caps().receive_maximum, 2);
    for i in 0..5 {
        s.publish(reply(QoS::ExactlyOnce, &format!("r{i}")), t0);
    }
    let sent = sent5(&mut s);
    assert_eq!(sent.len(), 2);
    // PUBREC does not free a place: the window counts until PUBCOMP.
    feed5(&mut s, b5::Packet::PubRec(b5::PubRec::new(1, None)), t0).unwrap();
    assert!(matches!(sent5(&mut s).as_slice(), [b5::Packet::PubRel(_)]));
    feed5(&mut s, b5::Packet::PubComp(b5::PubComp::new(1, None)), t0).unwrap();
    let sent = sent5(&mut s);
    assert!(matches!(sent.as_slice(), [b5::Packet::Publish(p)] if p.pkid == 3));
}

#[test]
fn v5_maximum_qos_1_downgrades_qos2_publishes() {
    let t0 = Instant::now();
    let mut props = connack_props5();
    props.max_qos = Some(1);
    let mut s = online5(cfg(Protocol::V5), Some(props), t0);
    let tok = s.publish(reply(QoS::ExactlyOnce, "r"), t0);
    let sent = sent5(&mut s);
    let [b5::Packet::Publish(p)] = sent.as_slice() else {
        panic!("{sent:?}");
    };
    assert_eq!(p.qos, Q5::AtLeastOnce);
    feed5(
        &mut s,
        b5::Packet::PubAck(b5::PubAck::new(p.pkid, None)),
        t0,
    )
    .unwrap();
    assert_eq!(events(&mut s), vec![Event::Delivered(tok)]);
}

#[test]
fn v5_maximum_packet_size_rejects_oversized_publish_only() {
    let t0 = Instant::now();
    let mut props = connack_props5();
    props.max_packet_size = Some(100);
    let mut s = online5(cfg(Protocol::V5), Some(props), t0);
    let small = s.publish(reply(QoS::AtLeastOnce, "ok"), t0);
    let big = s.publish(reply(QoS::AtLeastOnce, &"x".repeat(200)), t0);
    let after = s.publish(reply(QoS::AtLeastOnce, "ok too"), t0);
    let evs = events(&mut s);
    assert!(
        matches!(evs.as_slice(), [Event::Rejected(t, _)] if *t == big),
        "{evs:?}"
    );
    let sent = sent5(&mut s);
    assert_eq!(sent.len(), 2);
    for p in sent {
        let b5::Packet::Publish(p) = p else {
            panic!("{p:?}");
        };
        feed5(
            &mut s,
            b5::Packet::PubAck(b5::PubAck::new(p.pkid, None)),
            t0,
        )
        .unwrap();
    }
    assert_eq!(delivered(&events(&mut s)), vec![small, after]);
}

#[test]
fn v5_maximum_packet_size_counts_the_packet_id() {
    let t0 = Instant::now();
    // Topic "reply/u/1" (2 + 9), packet id (2), property length (1), header (2).
    let base = 2 + 2 + 9 + 2 + 1;
    let limit = 60;
    let mut props = connack_props5();
    props.max_packet_size = Some(limit);
    let mut s = online5(cfg(Protocol::V5), Some(props), t0);
    let fits = s.publish(
        reply(QoS::AtLeastOnce, &"x".repeat(limit as usize - base)),
        t0,
    );
    let over = s.publish(
        reply(QoS::AtLeastOnce, &"x".repeat(limit as usize - base + 1)),
        t0,
    );
    let evs = events(&mut s);
    assert!(
        matches!(evs.as_slice(), [Event::Rejected(t, _)] if *t == over),
        "{evs:?}"
    );
    let mut buf = transmitted(&mut s);
    assert_eq!(buf.len(), limit as usize);
    let p = b5::Packet::read(&mut buf, Some(limit)).expect("within the limit");
    assert!(matches!(p, b5::Packet::Publish(_)));
    let _ = fits;
}

#[test]
fn v5_puback_failure_is_rejected() {
    let t0 = Instant::now();
    let mut s = online5(cfg(Protocol::V5), None, t0);
    let tok = s.publish(reply(QoS::AtLeastOnce, "r"), t0);
    let _ = sent5(&mut s);
    let mut ack = b5::PubAck::new(1, None);
    ack.reason = b5::PubAckReason::NotAuthorized;
    feed5(&mut s, b5::Packet::PubAck(ack), t0).unwrap();
    assert!(matches!(events(&mut s).as_slice(), [Event::Rejected(t, _)] if *t == tok));
}

// --- packet ids ---

#[test]
fn packet_ids_wrap_to_1_and_skip_ids_awaiting_pubcomp() {
    let t0 = Instant::now();
    let mut config = cfg(Protocol::V311);
    config.max_inflight = 2;
    let mut s = online4(config, t0);
    let stuck_tok = s.publish(reply(QoS::ExactlyOnce, "stuck"), t0);
    let stuck = publishes4(&sent4(&mut s))[0].pkid;
    assert_eq!(stuck, 1);
    feed4(&mut s, b4::Packet::PubRec(b4::PubRec::new(stuck)), t0).unwrap();
    let _ = sent4(&mut s);

    let mut seen_max = false;
    let mut wrapped = false;
    for i in 0..70_000u32 {
        let tok = s.publish(reply(QoS::ExactlyOnce, "r"), t0);
        let sent = publishes4(&sent4(&mut s));
        assert_eq!(sent.len(), 1, "iteration {i}");
        let pkid = sent[0].pkid;
        assert_ne!(pkid, 0);
        assert_ne!(pkid, stuck, "id in AwaitComp reused at iteration {i}");
        seen_max |= pkid == u16::MAX;
        wrapped |= seen_max && pkid == 2;
        feed4(&mut s, b4::Packet::PubRec(b4::PubRec::new(pkid)), t0).unwrap();
        feed4(&mut s, b4::Packet::PubComp(b4::PubComp::new(pkid)), t0).unwrap();
        let _ = sent4(&mut s);
        assert_eq!(delivered(&events(&mut s)), vec![tok]);
    }
    assert!(seen_max && wrapped);
    feed4(&mut s, b4::Packet::PubComp(b4::PubComp::new(stuck)), t0).unwrap();
    assert_eq!(events(&mut s), vec![Event::Delivered(stuck_tok)]);
}

#[test]
fn packet_ids_unique_among_publishes_and_subscribes() {
    let t0 = Instant::now();
    let mut s = online4(cfg(Protocol::V311), t0);
    s.publish(reply(QoS::AtLeastOnce, "a"), t0);
    let sub = s
        .subscribe(vec![("cmd/#".into(), QoS::ExactlyOnce)], t0)
        .unwrap();
    s.publish(reply(QoS::AtLeastOnce, "b"), t0);
    let mut ids: Vec<u16> = sent4(&mut s)
        .iter()
        .map(|p| match p {
            b4::Packet::Publish(p) => p.pkid,
            b4::Packet::Subscribe(s) => s.pkid,
            other => panic!("{other:?}"),
        })
        .collect();
    assert!(ids.contains(&sub));
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 3);
}

// --- keep-alive ---

#[test]
fn keep_alive_pings_when_idle_and_pingresp_clears() {
    let t0 = Instant::now();
    let mut s = online4(cfg(Protocol::V311), t0);
    assert_eq!(s.poll_timeout(), Some(t0 + KA));
    s.handle_timeout(t0 + KA - Duration::from_millis(1))
        .unwrap();
    assert!(sent4(&mut s).is_empty(), "not early");
    s.handle_timeout(t0 + KA).unwrap();
    assert_eq!(sent4(&mut s), vec![b4::Packet::PingReq]);
    let grace = t0 + KA + KA / 2;
    assert_eq!(s.poll_timeout(), Some(grace));
    let t1 = t0 + KA + Duration::from_secs(1);
    feed4(&mut s, b4::Packet::PingResp, t1).unwrap();
    // Next deadline: keep-alive after the ping (last sent).
    assert_eq!(s.poll_timeout(), Some(t0 + KA + KA));
    s.handle_timeout(grace).unwrap();
    assert!(sent4(&mut s).is_empty());
}

#[test]
fn keep_alive_times_out_without_an_answer() {
    let t0 = Instant::now();
    let mut s = online5(cfg(Protocol::V5), None, t0);
    s.handle_timeout(t0 + KA).unwrap();
    assert!(matches!(sent5(&mut s).as_slice(), [b5::Packet::PingReq(_)]));
    let deadline = s.poll_timeout().unwrap();
    assert_eq!(deadline, t0 + KA + KA / 2);
    s.handle_timeout(deadline - Duration::from_millis(1))
        .unwrap();
    let err = s.handle_timeout(deadline).unwrap_err();
    assert!(matches!(err, SessionError::KeepAliveTimeout(_)), "{err}");
}

#[test]
fn keep_alive_detects_a_silent_broker_while_we_keep_sending() {
    let t0 = Instant::now();
    let mut s = online4(cfg(Protocol::V311), t0);
    let mut pinged = false;
    let mut failed_at = None;
    // Publish QoS 0 every second; the broker never answers anything.
    for sec in 1..=60u64 {
        let now = t0 + Duration::from_secs(sec);
        if let Some(deadline) = s.poll_timeout()
            && deadline <= now
        {
            if let Err(SessionError::KeepAliveTimeout(_)) = s.handle_timeout(now) {
                failed_at = Some(sec);
                break;
            }
        }
        s.publish(reply(QoS::AtMostOnce, "tick"), now);
        pinged |= sent4(&mut s).contains(&b4::Packet::PingReq);
    }
    assert!(pinged, "a silent broker is pinged even while we send");
    let failed_at = failed_at.expect("half-open link detected");
    assert!(failed_at <= 45 + 1, "detected after {failed_at} s");
}

#[test]
fn v5_server_keep_alive_overrides_ours() {
    let t0 = Instant::now();
    let mut props = connack_props5();
    props.server_keep_alive = Some(10);
    let s = online5(cfg(Protocol::V5), Some(props), t0);
    assert_eq!(s.keep_alive(), Duration::from_secs(10));
    assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(10)));
}

#[test]
fn no_keep_alive_deadline_while_offline() {
    let t0 = Instant::now();
    let mut s = online4(cfg(Protocol::V311), t0);
    s.handle_transport_down();
    assert_eq!(s.poll_timeout(), None);
    s.handle_timeout(t0 + KA * 10).unwrap();
    assert!(s.poll_transmit().is_none());
}

// --- framing ---

#[test]
fn malformed_bytes_are_an_error() {
    let t0 = Instant::now();
    let mut s = online4(cfg(Protocol::V311), t0);
    // Packet type 0 is reserved.
    let mut buf = BytesMut::from(&[0x00u8, 0x00][..]);
    assert!(matches!(
        s.handle_bytes(&mut buf, t0),
        Err(SessionError::Codec(_))
    ));
    // Remaining length longer than four bytes.
    let mut s = online4(cfg(Protocol::V311), t0);
    let mut buf = BytesMut::from(&[0x30u8, 0xFF, 0xFF, 0xFF, 0xFF, 0x01][..]);
    assert!(s.handle_bytes(&mut buf, t0).is_err());
    // QoS 1 publish with packet id 0.
    let mut s = online5(cfg(Protocol::V5), None, t0);
    let mut buf = BytesMut::from(&[0x32u8, 0x06, 0x00, 0x01, b't', 0x00, 0x00, 0x00][..]);
    assert!(s.handle_bytes(&mut buf, t0).is_err());
}

#[test]
fn a_packet_split_across_reads_is_decoded_once_complete() {
    let t0 = Instant::now();
    let mut s = online4(cfg(Protocol::V311), t0);
    let mut whole = BytesMut::new();
    inbound4(3, Q4::AtLeastOnce, false, "split payload")
        .write(&mut whole, MAX)
        .unwrap();
    b4::Packet::PingResp.write(&mut whole, MAX).unwrap();
    let tail = whole.split_off(5);
    let mut buf = whole;
    s.handle_bytes(&mut buf, t0).unwrap();
    assert!(events(&mut s).is_empty());
    assert_eq!(buf.len(), 5, "partial packet left in place");
    buf.extend_from_slice(&tail);
    s.handle_bytes(&mut buf, t0).unwrap();
    assert!(buf.is_empty());
    let msgs = messages(&events(&mut s));
    assert_eq!(msgs.len(), 1);
    assert_eq!(
        msgs[0].publish.payload,
        Bytes::from_static(b"split payload")
    );
}

#[test]
fn oversized_v311_publish_is_acked_skipped_and_the_stream_goes_on() {
    let t0 = Instant::now();
    let mut config = cfg(Protocol::V311);
    config.max_incoming_packet = 64;
    let big = "x".repeat(1000);
    let bytes = wire4(vec![
        inbound4(1, Q4::AtLeastOnce, false, &big),
        inbound4(2, Q4::AtLeastOnce, false, "CMD1"),
        inbound4(0, Q4::AtMostOnce, false, &big),
    ]);
    let frame = 2 + 2 + "cmd/u/1".len() + 2 + big.len() + 1; // two length bytes
    for chunk in [1, 7, 100, bytes.len()] {
        let mut s = online4(config.clone(), t0);
        feed_chunked(&mut s, &bytes, chunk, t0);
        let evs = events(&mut s);
        assert_eq!(evs.len(), 3, "chunk {chunk}: {evs:?}");
        let oversized = Event::Oversized {
            topic: "cmd/u/1".into(),
            size: frame,
        };
        assert_eq!(evs[0], oversized, "chunk {chunk}");
        assert!(
            matches!(&evs[1], Event::Message(m) if m.publish.payload == "CMD1"),
            "chunk {chunk}: {evs:?}"
        );
        assert!(matches!(&evs[2], Event::Oversized { .. }), "chunk {chunk}");
        // Acknowledged at once (it will never be answered); the small one waits for
        // the application as usual.
        assert_eq!(
            sent4(&mut s),
            vec![b4::Packet::PubAck(b4::PubAck::new(1))],
            "chunk {chunk}"
        );
    }
}

#[test]
fn oversized_v311_qos2_publish_completes_once_despite_redelivery() {
    let t0 = Instant::now();
    let mut config = cfg(Protocol::V311);
    config.max_incoming_packet = 64;
    let big = "y".repeat(500);
    let mut s = online4(config, t0);
    feed_chunked(
        &mut s,
        &wire4(vec![inbound4(7, Q4::ExactlyOnce, false, &big)]),
        33,
        t0,
    );
    assert!(matches!(
        events(&mut s).as_slice(),
        [Event::Oversized { .. }]
    ));
    assert_eq!(sent4(&mut s), vec![b4::Packet::PubRec(b4::PubRec::new(7))]);
    // The broker did not see our PUBREC yet and sends it again.
    feed_chunked(
        &mut s,
        &wire4(vec![inbound4(7, Q4::ExactlyOnce, true, &big)]),
        64,
        t0,
    );
    assert!(
        events(&mut s).is_empty(),
        "a redelivery is not surfaced again"
    );
    assert_eq!(sent4(&mut s), vec![b4::Packet::PubRec(b4::PubRec::new(7))]);
    feed4(&mut s, b4::Packet::PubRel(b4::PubRel::new(7)), t0).unwrap();
    assert_eq!(
        sent4(&mut s),
        vec![b4::Packet::PubComp(b4::PubComp::new(7))]
    );
}

#[test]
fn oversized_v311_publish_before_connack_is_an_error() {
    let t0 = Instant::now();
    let mut config = cfg(Protocol::V311);
    config.max_incoming_packet = 64;
    let mut s = Session::new(config, t0);
    s.handle_transport_up(t0);
    let mut buf =
        BytesMut::from(&wire4(vec![inbound4(1, Q4::AtLeastOnce, false, &"x".repeat(100))])[..]);
    let err = s.handle_bytes(&mut buf, t0).unwrap_err();
    assert!(matches!(err, SessionError::Protocol(_)), "{err}");
    assert!(
        sent4(&mut s)
            .iter()
            .all(|p| !matches!(p, b4::Packet::PubAck(_)))
    );
}

#[test]
fn oversized_v5_packet_is_an_error() {
    // MQTT 5 announced the limit in CONNECT: a larger packet is a protocol error.
    let t0 = Instant::now();
    let mut config = cfg(Protocol::V5);
    config.max_incoming_packet = 64;
    let mut s = online5(config, None, t0);
    let err = feed5(
        &mut s,
        inbound5(1, Q5::AtLeastOnce, false, &"x".repeat(100)),
        t0,
    )
    .unwrap_err();
    assert!(
        matches!(err, SessionError::Codec(CodecError::TooLarge { .. })),
        "{err}"
    );
}

#[test]
fn oversized_v311_packet_that_is_no_proper_publish_is_an_error() {
    let t0 = Instant::now();
    let mut config = cfg(Protocol::V311);
    config.max_incoming_packet = 64;
    let body = |first: u8, rest: &[u8]| {
        let mut b = vec![first, 0xC8, 0x01]; // remaining length 200
        b.extend_from_slice(rest);
        b
    };
    for (what, bytes) in [
        ("a SUBACK", body(0x90, &[0, 1, 0])),
        ("QoS 3", body(0x36, &[0, 1, b'a', 0, 1])),
        ("packet id 0", body(0x32, &[0, 1, b'a', 0, 0])),
        ("a topic past the packet", body(0x32, &[0xFF, 0xFF])),
        ("a non-UTF-8 topic", body(0x30, &[0, 1, 0xFF])),
    ] {
        let mut s = online4(config.clone(), t0);
        let mut buf = BytesMut::from(&bytes[..]);
        let err = s.handle_bytes(&mut buf, t0).unwrap_err();
        assert!(matches!(err, SessionError::Codec(_)), "{what}: {err}");
    }
}

// --- broker DISCONNECT ---

#[test]
fn v5_zero_length_disconnect_is_normal() {
    let t0 = Instant::now();
    let mut s = online5(cfg(Protocol::V5), None, t0);
    let mut buf = BytesMut::from(&[0xE0u8, 0x00][..]);
    s.handle_bytes(&mut buf, t0).unwrap();
    assert_eq!(
        events(&mut s),
        vec![Event::BrokerDisconnect {
            reason: 0,
            reason_string: None
        }]
    );
}

#[test]
fn v5_disconnect_with_reason_code_only() {
    let t0 = Instant::now();
    let mut s = online5(cfg(Protocol::V5), None, t0);
    // A reason code without properties, as mosquitto writes it: E0 01 8E. (rumqttc's
    // own encoder writes E0 01 8E 00, one byte past its remaining length.)
    let mut buf = BytesMut::from(&[0xE0u8, 0x01, 0x8E][..]);
    s.handle_bytes(&mut buf, t0).unwrap();
    assert!(buf.is_empty());
    assert_eq!(
        events(&mut s),
        vec![Event::BrokerDisconnect {
            reason: 0x8E,
            reason_string: None
        }]
    );
}

#[test]
fn v5_disconnect_with_reason_string() {
    let t0 = Instant::now();
    let mut s = online5(cfg(Protocol::V5), None, t0);
    let d = b5::Disconnect {
        reason_code: b5::DisconnectReasonCode::ServerShuttingDown,
        properties: Some(b5::DisconnectProperties {
            session_expiry_interval: None,
            reason_string: Some("maintenance".into()),
            user_properties: Vec::new(),
            server_reference: None,
        }),
    };
    feed5(&mut s, b5::Packet::Disconnect(d), t0).unwrap();
    assert_eq!(
        events(&mut s),
        vec![Event::BrokerDisconnect {
            reason: 0x8B,
            reason_string: Some("maintenance".into())
        }]
    );
}

#[test]
fn v311_broker_disconnect_is_surfaced() {
    let t0 = Instant::now();
    let mut s = online4(cfg(Protocol::V311), t0);
    feed4(&mut s, b4::Packet::Disconnect, t0).unwrap();
    assert_eq!(
        events(&mut s),
        vec![Event::BrokerDisconnect {
            reason: 0,
            reason_string: None
        }]
    );
}

#[test]
fn disconnect_writes_disconnect_and_closes() {
    let t0 = Instant::now();
    let mut s = online4(cfg(Protocol::V311), t0);
    s.disconnect(t0);
    assert_eq!(sent4(&mut s), vec![b4::Packet::Disconnect]);
    assert!(!s.is_connected());
    assert_eq!(s.poll_timeout(), None);
}

// --- SUBSCRIBE ---

#[test]
fn subscribe_correlates_suback_v311() {
    let t0 = Instant::now();
    let mut s = online4(cfg(Protocol::V311), t0);
    let pkid = s
        .subscribe(vec![("cmd/u/#".into(), QoS::ExactlyOnce)], t0)
        .expect("online");
    let sent = sent4(&mut s);
    let [b4::Packet::Subscribe(sub)] = sent.as_slice() else {
        panic!("{sent:?}");
    };
    assert_eq!(sub.pkid, pkid);
    assert_eq!(sub.filters[0].path, "cmd/u/#");
    assert_eq!(sub.filters[0].qos, Q4::ExactlyOnce);
    // A SUBACK for another id is ignored.
    feed4(&mut s, suback4(pkid.wrapping_add(100), Q4::AtLeastOnce), t0).unwrap();
    assert!(events(&mut s).is_empty());
    feed4(&mut s, suback4(pkid, Q4::AtLeastOnce), t0).unwrap();
    assert_eq!(
        events(&mut s),
        vec![Event::SubAck {
            pkid,
            filters: vec![("cmd/u/#".into(), Some(QoS::AtLeastOnce))]
        }]
    );
}

#[test]
fn suback_failure_is_none() {
    let t0 = Instant::now();
    let mut s = online4(cfg(Protocol::V311), t0);
    let pkid = s
        .subscribe(vec![("cmd/#".into(), QoS::ExactlyOnce)], t0)
        .unwrap();
    feed4(
        &mut s,
        b4::Packet::SubAck(b4::SubAck::new(
            pkid,
            vec![b4::SubscribeReasonCode::Failure],
        )),
        t0,
    )
    .unwrap();
    assert_eq!(
        events(&mut s),
        vec![Event::SubAck {
            pkid,
            filters: vec![("cmd/#".into(), None)]
        }]
    );

    let mut s = online5(cfg(Protocol::V5), None, t0);
    let pkid = s
        .subscribe(vec![("cmd/#".into(), QoS::ExactlyOnce)], t0)
        .unwrap();
    let _ = sent5(&mut s);
    feed5(
        &mut s,
        b5::Packet::SubAck(b5::SubAck {
            pkid,
            return_codes: vec![b5::SubscribeReasonCode::NotAuthorized],
            properties: None,
        }),
        t0,
    )
    .unwrap();
    assert_eq!(
        events(&mut s),
        vec![Event::SubAck {
            pkid,
            filters: vec![("cmd/#".into(), None)]
        }]
    );
}

/// The SUBACK names the SUBSCRIBE's filters with what was granted each, a filter without a
/// return code counting as refused. A subscription lost with its connection and made again
/// after the reconnect comes back named by the new SUBSCRIBE's SUBACK; a late SUBACK for
/// the old packet id is ignored.
#[test]
fn suback_names_the_filters_also_after_a_reconnect() {
    let t0 = Instant::now();
    let mut s = online4(cfg(Protocol::V311), t0);
    let filters = vec![
        ("login".to_owned(), QoS::ExactlyOnce),
        ("u/UUID".to_owned(), QoS::AtLeastOnce),
    ];
    let pkid = s.subscribe(filters, t0).unwrap();
    let _ = sent4(&mut s);
    feed4(&mut s, suback4(pkid, Q4::AtLeastOnce), t0).unwrap();
    assert_eq!(
        events(&mut s),
        vec![Event::SubAck {
            pkid,
            filters: vec![
                ("login".into(), Some(QoS::AtLeastOnce)),
                ("u/UUID".into(), None)
            ]
        }]
    );

    // A SUBSCRIBE whose SUBACK the lost connection never brought, made again after it.
    let lost = s
        .subscribe(vec![("cmd/#".into(), QoS::AtLeastOnce)], t0)
        .unwrap();
    let _ = reconnect4(&mut s, true, t0);
    let again = s
        .subscribe(vec![("cmd/#".into(), QoS::AtLeastOnce)], t0)
        .unwrap();
    assert_ne!(lost, again, "packet ids move on across reconnects");
    let _ = sent4(&mut s);
    for id in [lost, again] {
        feed4(&mut s, suback4(id, Q4::ExactlyOnce), t0).unwrap();
    }
    assert_eq!(
        events(&mut s),
        vec![Event::SubAck {
            pkid: again,
            filters: vec![("cmd/#".into(), Some(QoS::ExactlyOnce))]
        }]
    );
}

#[test]
fn subscribe_while_offline_is_none() {
    let t0 = Instant::now();
    let mut s = Session::new(cfg(Protocol::V311), t0);
    assert_eq!(s.subscribe(vec![("a".into(), QoS::AtLeastOnce)], t0), None);
    s.handle_transport_up(t0);
    assert_eq!(s.subscribe(vec![("a".into(), QoS::AtLeastOnce)], t0), None);
    let _ = sent4(&mut s);
    feed4(&mut s, connack4(b4::ConnectReturnCode::Success, false), t0).unwrap();
    assert!(
        s.subscribe(vec![("a".into(), QoS::AtLeastOnce)], t0)
            .is_some()
    );
    s.handle_transport_down();
    assert_eq!(s.subscribe(vec![("a".into(), QoS::AtLeastOnce)], t0), None);
}
