//! A protocol-neutral MQTT packet model, encoded and decoded with rumqttc's codec for
//! MQTT 3.1.1 and MQTT 5.

use crate::vocabulary::Secret;
use crate::vocabulary::{Protocol, QoS};
use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes as m4;
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes as m5;
use rumqttc::v5::mqttbytes::v5;

/// The largest packet MQTT allows (remaining length 268,435,455 plus the fixed header).
pub const MAX_PACKET_SIZE: u32 = 268_435_460;

/// A CONNECT as the session builds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// Client identifier.
    pub client_id: String,
    /// 3.1.1 clean session / 5 clean start.
    pub clean_start: bool,
    /// Keep-alive in seconds.
    pub keep_alive: u16,
    /// User name.
    pub username: Option<String>,
    /// Password (redacted in `Debug`).
    pub password: Option<Secret>,
    /// Last Will.
    pub will: Option<Will>,
    /// MQTT 5: session expiry interval in seconds.
    pub session_expiry: Option<u32>,
    /// MQTT 5: how many QoS 1/2 publishes we accept in flight.
    pub receive_maximum: Option<u16>,
    /// MQTT 5: the largest packet we accept.
    pub max_packet_size: Option<u32>,
}

/// A Last Will message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    /// Topic.
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// QoS.
    pub qos: QoS,
    /// Retained.
    pub retain: bool,
}

/// How [`ConnectCode::Permanent`] names MQTT 5's CONNACK 0x9A, a retained Will refused.
pub const WILL_RETAIN_REFUSED: &str = "retain not supported (Last Will)";
/// How [`ConnectCode::Permanent`] names MQTT 5's CONNACK 0x9B, the Will's QoS refused.
pub const WILL_QOS_REFUSED: &str = "QoS not supported (Last Will)";

/// How the broker answered a CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectCode {
    /// Connection accepted.
    Accepted,
    /// Bad user name or password.
    BadCredentials,
    /// Not authorised.
    NotAuthorized,
    /// A refusal that retrying cannot fix (client id, protocol version, banned, …).
    Permanent(&'static str),
    /// A refusal worth retrying later (server unavailable, busy, quota, …).
    Transient(&'static str),
}

/// What the broker allows, from the CONNACK (MQTT 5 properties; 3.1.1: the defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerCaps {
    /// Highest QoS the broker accepts.
    pub max_qos: QoS,
    /// How many QoS 1/2 publishes the broker accepts in flight from us.
    pub receive_maximum: u16,
    /// The largest packet the broker accepts.
    pub max_packet_size: Option<u32>,
    /// Whether retained messages are supported.
    pub retain_available: bool,
    /// Keep-alive the broker imposes.
    pub server_keep_alive: Option<u16>,
}

impl Default for BrokerCaps {
    fn default() -> Self {
        BrokerCaps {
            max_qos: QoS::ExactlyOnce,
            receive_maximum: u16::MAX,
            max_packet_size: None,
            retain_available: true,
            server_keep_alive: None,
        }
    }
}

/// A CONNACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    /// Whether the broker resumed a stored session.
    pub session_present: bool,
    /// The verdict.
    pub code: ConnectCode,
    /// What the broker allows.
    pub caps: BrokerCaps,
}

/// A PUBLISH in either direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// Redelivery flag.
    pub dup: bool,
    /// QoS.
    pub qos: QoS,
    /// Retain flag.
    pub retain: bool,
    /// Packet id (0 at QoS 0).
    pub pkid: u16,
    /// Topic name.
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// MQTT 5 Response Topic.
    pub response_topic: Option<String>,
    /// MQTT 5 Correlation Data.
    pub correlation_data: Option<Bytes>,
}

/// An MQTT packet, independent of the protocol version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// CONNECT (client → broker).
    Connect(Box<Connect>),
    /// CONNACK (broker → client).
    ConnAck(ConnAck),
    /// PUBLISH.
    Publish(Publish),
    /// PUBACK; `failure` names an MQTT 5 failure reason code.
    PubAck {
        /// Packet id.
        pkid: u16,
        /// Failure reason, if any.
        failure: Option<String>,
    },
    /// PUBREC; `failure` names an MQTT 5 failure reason (then no PUBREL follows).
    PubRec {
        /// Packet id.
        pkid: u16,
        /// Failure reason, if any.
        failure: Option<String>,
    },
    /// PUBREL.
    PubRel(u16),
    /// PUBCOMP.
    PubComp(u16),
    /// SUBSCRIBE with (filter, QoS) pairs.
    Subscribe {
        /// Packet id.
        pkid: u16,
        /// Filters.
        filters: Vec<(String, QoS)>,
    },
    /// SUBACK: the granted QoS per filter, `None` where refused.
    SubAck {
        /// Packet id.
        pkid: u16,
        /// Granted QoS per filter.
        granted: Vec<Option<QoS>>,
    },
    /// UNSUBACK.
    UnsubAck(u16),
    /// PINGREQ.
    PingReq,
    /// PINGRESP.
    PingResp,
    /// DISCONNECT; from an MQTT 5 broker with its reason code and reason string.
    Disconnect {
        /// Reason code (MQTT 5; 0 for 3.1.1).
        reason: u8,
        /// Reason string (MQTT 5).
        reason_string: Option<String>,
    },
    /// AUTH (MQTT 5): not supported, reported as a protocol error.
    Auth,
}

/// What an oversized PUBLISH says before its payload: enough to acknowledge it and to
/// skip the rest without holding it in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishHead {
    /// The whole frame, fixed header included.
    pub frame_len: usize,
    /// Topic name.
    pub topic: String,
    /// QoS.
    pub qos: QoS,
    /// Packet id (0 at QoS 0).
    pub pkid: u16,
    /// Redelivery flag.
    pub dup: bool,
}

impl PublishHead {
    /// Reads the head of the MQTT 3.1.1 PUBLISH at the start of `buf` without consuming
    /// anything: `Ok(None)` until the topic and packet id have arrived, `Ok(Some(head))`
    /// then; an error when `buf` does not start with a well-formed PUBLISH head.
    pub fn read_v311(buf: &[u8]) -> Result<Option<PublishHead>, CodecError> {
        let malformed = |why: &str| Err(CodecError::Malformed(format!("PUBLISH {why}")));
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        if first >> 4 != 3 {
            return malformed("expected");
        }
        let qos = match (first >> 1) & 0b11 {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            2 => QoS::ExactlyOnce,
            _ => return malformed("with QoS 3"),
        };
        // Remaining length: at most four bytes of seven bits each.
        let mut remaining = 0usize;
        let mut header_len = 1;
        loop {
            let Some(&byte) = buf.get(header_len) else {
                return Ok(None);
            };
            remaining |= usize::from(byte & 0x7f) << (7 * (header_len - 1));
            header_len += 1;
            if byte & 0x80 == 0 {
                break;
            }
            if header_len > 4 {
                return malformed("with a remaining length over four bytes");
            }
        }
        let body = &buf[header_len..];
        let Some(topic_len) = body
            .get(..2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
        else {
            return Ok(None);
        };
        let pkid_len = if qos == QoS::AtMostOnce { 0 } else { 2 };
        if 2 + topic_len + pkid_len > remaining {
            return malformed("shorter than its topic");
        }
        let Some(topic) = body.get(2..2 + topic_len) else {
            return Ok(None);
        };
        let pkid = match qos {
            QoS::AtMostOnce => 0,
            _ => match body.get(2 + topic_len..4 + topic_len) {
                Some(b) => u16::from_be_bytes([b[0], b[1]]),
                None => return Ok(None),
            },
        };
        if qos != QoS::AtMostOnce && pkid == 0 {
            return malformed("with packet id 0");
        }
        let Ok(topic) = std::str::from_utf8(topic) else {
            return malformed("topic is not UTF-8");
        };
        Ok(Some(PublishHead {
            frame_len: header_len + remaining,
            topic: topic.to_owned(),
            qos,
            pkid,
            dup: first & 0b1000 != 0,
        }))
    }
}

/// Why bytes could not be decoded or a packet not encoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// More bytes are needed.
    #[error("incomplete packet")]
    Incomplete,
    /// The packet exceeds the size limit.
    #[error("packet of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Malformed or not understood.
    #[error("malformed packet: {0}")]
    Malformed(String),
}

impl Packet {
    /// Encodes the packet for `protocol` onto `out`.
    pub fn write(&self, protocol: Protocol, out: &mut BytesMut) -> Result<(), CodecError> {
        match protocol {
            Protocol::V311 => to_v4(self)
                .write(out, MAX_PACKET_SIZE as usize)
                .map(drop)
                .map_err(|e| CodecError::Malformed(e.to_string())),
            Protocol::V5 => to_v5(self)
                .write(out, None)
                .map(drop)
                .map_err(|e| CodecError::Malformed(e.to_string())),
        }
    }

    /// Decodes one packet from the front of `buf`, consuming it; `Incomplete` leaves `buf`
    /// untouched.
    pub fn read(protocol: Protocol, buf: &mut BytesMut, max: usize) -> Result<Packet, CodecError> {
        // rumqttc's v5 reader rejects a DISCONNECT without a body, and one with only a
        // reason code (no property length), both of which MQTT 5 allows (§3.14.2.2.1).
        if protocol == Protocol::V5 && buf.len() >= 2 && buf[0] == 0xE0 && buf[1] <= 1 {
            let reason = match buf[1] {
                0 => 0,
                _ => *buf.get(2).ok_or(CodecError::Incomplete)?,
            };
            let _ = buf.split_to(2 + usize::from(buf[1]));
            return Ok(Packet::Disconnect {
                reason,
                reason_string: None,
            });
        }
        let before = buf.len();
        // rumqttc reports a frame whose contents end early (a property length running past
        // the packet) as `InsufficientBytes` too, after consuming it: that is malformed, not
        // incomplete, or the packet would vanish without a trace.
        let incomplete = |buf: &BytesMut| {
            if buf.len() == before {
                CodecError::Incomplete
            } else {
                CodecError::Malformed("packet ends before its contents do".into())
            }
        };
        match protocol {
            Protocol::V311 => match v4::Packet::read(buf, max) {
                Ok(p) => from_v4(p),
                Err(m4::Error::InsufficientBytes(_)) => Err(incomplete(buf)),
                Err(m4::Error::PayloadSizeLimitExceeded(size)) => {
                    Err(CodecError::TooLarge { size, max })
                }
                Err(e) => Err(CodecError::Malformed(e.to_string())),
            },
            Protocol::V5 => match v5::Packet::read(buf, Some(max as u32)) {
                Ok(p) => from_v5(p),
                Err(m5::Error::InsufficientBytes(_)) => Err(incomplete(buf)),
                Err(m5::Error::PayloadSizeLimitExceeded { pkt_size, .. }) => {
                    Err(CodecError::TooLarge {
                        size: pkt_size,
                        max,
                    })
                }
                Err(e) => Err(CodecError::Malformed(e.to_string())),
            },
        }
    }

    /// The encoded size for `protocol`, to check against the broker's limit.
    pub fn size(&self, protocol: Protocol) -> usize {
        match protocol {
            Protocol::V311 => to_v4(self).size(),
            Protocol::V5 => to_v5(self).size(),
        }
    }
}

fn password(c: &Connect) -> String {
    c.password
        .as_ref()
        .map(|p| p.expose().to_owned())
        .unwrap_or_default()
}

fn q4(qos: QoS) -> m4::QoS {
    match qos {
        QoS::AtMostOnce => m4::QoS::AtMostOnce,
        QoS::AtLeastOnce => m4::QoS::AtLeastOnce,
        QoS::ExactlyOnce => m4::QoS::ExactlyOnce,
    }
}

fn q5(qos: QoS) -> m5::QoS {
    match qos {
        QoS::AtMostOnce => m5::QoS::AtMostOnce,
        QoS::AtLeastOnce => m5::QoS::AtLeastOnce,
        QoS::ExactlyOnce => m5::QoS::ExactlyOnce,
    }
}

fn from_q4(qos: m4::QoS) -> QoS {
    match qos {
        m4::QoS::AtMostOnce => QoS::AtMostOnce,
        m4::QoS::AtLeastOnce => QoS::AtLeastOnce,
        m4::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

fn from_q5(qos: m5::QoS) -> QoS {
    match qos {
        m5::QoS::AtMostOnce => QoS::AtMostOnce,
        m5::QoS::AtLeastOnce => QoS::AtLeastOnce,
        m5::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

fn unexpected(name: &str) -> Result<Packet, CodecError> {
    Err(CodecError::Malformed(format!(
        "unexpected {name} from the broker"
    )))
}

fn to_v4(packet: &Packet) -> v4::Packet {
    match packet {
        Packet::Connect(c) => {
            let mut connect = v4::Connect::new(c.client_id.clone());
            connect.keep_alive = c.keep_alive;
            connect.clean_session = c.clean_start;
            if let Some(user) = &c.username {
                connect.set_login(user.clone(), password(c));
            }
            connect.last_will = c.will.as_ref().map(|w| {
                v4::LastWill::new(w.topic.clone(), w.payload.to_vec(), q4(w.qos), w.retain)
            });
            v4::Packet::Connect(connect)
        }
        Packet::Publish(p) => v4::Packet::Publish(v4::Publish {
            dup: p.dup,
            qos: q4(p.qos),
            retain: p.retain,
            topic: p.topic.clone(),
            pkid: p.pkid,
            payload: p.payload.clone(),
        }),
        Packet::PubAck { pkid, .. } => v4::Packet::PubAck(v4::PubAck::new(*pkid)),
        Packet::PubRec { pkid, .. } => v4::Packet::PubRec(v4::PubRec::new(*pkid)),
        Packet::PubRel(pkid) => v4::Packet::PubRel(v4::PubRel::new(*pkid)),
        Packet::PubComp(pkid) => v4::Packet::PubComp(v4::PubComp::new(*pkid)),
        Packet::Subscribe { pkid, filters } => {
            let mut sub = v4::Subscribe::new_many(
                filters
                    .iter()
                    .map(|(f, q)| v4::SubscribeFilter::new(f.clone(), q4(*q))),
            );
            sub.pkid = *pkid;
            v4::Packet::Subscribe(sub)
        }
        Packet::PingReq => v4::Packet::PingReq,
        Packet::Disconnect { .. } => v4::Packet::Disconnect,
        Packet::PingResp => v4::Packet::PingResp,
        // Broker-to-client packets are never encoded by a client.
        Packet::ConnAck(_) | Packet::SubAck { .. } | Packet::UnsubAck(_) | Packet::Auth => {
            v4::Packet::PingReq
        }
    }
}

fn to_v5(packet: &Packet) -> v5::Packet {
    match packet {
        Packet::Connect(c) => {
            let properties = v5::ConnectProperties {
                session_expiry_interval: c.session_expiry,
                receive_maximum: c.receive_maximum,
                max_packet_size: c.max_packet_size,
                ..v5::ConnectProperties::new()
            };
            let connect = v5::Connect {
                keep_alive: c.keep_alive,
                client_id: c.client_id.clone(),
                clean_start: c.clean_start,
                properties: Some(properties),
            };
            let will = c.will.as_ref().map(|w| {
                v5::LastWill::new(
                    w.topic.clone(),
                    w.payload.to_vec(),
                    q5(w.qos),
                    w.retain,
                    None,
                )
            });
            // MQTT 5 (§3.1.2.9) also sends a password without a user name.
            let login = (c.username.is_some() || c.password.is_some())
                .then(|| v5::Login::new(c.username.clone().unwrap_or_default(), password(c)));
            v5::Packet::Connect(connect, will, login)
        }
        Packet::Publish(p) => {
            let properties =
                (p.response_topic.is_some() || p.correlation_data.is_some()).then(|| {
                    v5::PublishProperties {
                        response_topic: p.response_topic.clone(),
                        correlation_data: p.correlation_data.clone(),
                        ..Default::default()
                    }
                });
            v5::Packet::Publish(v5::Publish {
                dup: p.dup,
                qos: q5(p.qos),
                retain: p.retain,
                topic: Bytes::copy_from_slice(p.topic.as_bytes()),
                pkid: p.pkid,
                payload: p.payload.clone(),
                properties,
            })
        }
        Packet::PubAck { pkid, .. } => v5::Packet::PubAck(v5::PubAck::new(*pkid, None)),
        Packet::PubRec { pkid, .. } => v5::Packet::PubRec(v5::PubRec::new(*pkid, None)),
        Packet::PubRel(pkid) => v5::Packet::PubRel(v5::PubRel::new(*pkid, None)),
        Packet::PubComp(pkid) => v5::Packet::PubComp(v5::PubComp::new(*pkid, None)),
        Packet::Subscribe { pkid, filters } => {
            let mut sub = v5::Subscribe::new_many(
                filters
                    .iter()
                    .map(|(f, q)| v5::Filter::new(f.clone(), q5(*q))),
                None,
            );
            sub.pkid = *pkid;
            v5::Packet::Subscribe(sub)
        }
        Packet::PingReq => v5::Packet::PingReq(v5::PingReq),
        Packet::PingResp => v5::Packet::PingResp(v5::PingResp),
        Packet::Disconnect { .. } => v5::Packet::Disconnect(v5::Disconnect::new(
            v5::DisconnectReasonCode::NormalDisconnection,
        )),
        Packet::ConnAck(_) | Packet::SubAck { .. } | Packet::UnsubAck(_) | Packet::Auth => {
            v5::Packet::PingReq(v5::PingReq)
        }
    }
}

fn from_v4(packet: v4::Packet) -> Result<Packet, CodecError> {
    Ok(match packet {
        v4::Packet::ConnAck(ack) => Packet::ConnAck(ConnAck {
            session_present: ack.session_present,
            code: match ack.code {
                v4::ConnectReturnCode::Success => ConnectCode::Accepted,
                v4::ConnectReturnCode::BadUserNamePassword => ConnectCode::BadCredentials,
                v4::ConnectReturnCode::NotAuthorized => ConnectCode::NotAuthorized,
                v4::ConnectReturnCode::RefusedProtocolVersion => {
                    ConnectCode::Permanent("unacceptable protocol version")
                }
                v4::ConnectReturnCode::BadClientId => {
                    ConnectCode::Permanent("client identifier rejected")
                }
                v4::ConnectReturnCode::ServiceUnavailable => {
                    ConnectCode::Transient("server unavailable")
                }
            },
            caps: BrokerCaps::default(),
        }),
        v4::Packet::Publish(p) => Packet::Publish(Publish {
            dup: p.dup,
            qos: from_q4(p.qos),
            retain: p.retain,
            pkid: p.pkid,
            topic: p.topic,
            payload: p.payload,
            response_topic: None,
            correlation_data: None,
        }),
        v4::Packet::PubAck(a) => Packet::PubAck {
            pkid: a.pkid,
            failure: None,
        },
        v4::Packet::PubRec(a) => Packet::PubRec {
            pkid: a.pkid,
            failure: None,
        },
        v4::Packet::PubRel(a) => Packet::PubRel(a.pkid),
        v4::Packet::PubComp(a) => Packet::PubComp(a.pkid),
        v4::Packet::SubAck(a) => Packet::SubAck {
            pkid: a.pkid,
            granted: a
                .return_codes
                .into_iter()
                .map(|c| match c {
                    v4::SubscribeReasonCode::Success(q) => Some(from_q4(q)),
                    v4::SubscribeReasonCode::Failure => None,
                })
                .collect(),
        },
        v4::Packet::UnsubAck(a) => Packet::UnsubAck(a.pkid),
        v4::Packet::PingResp => Packet::PingResp,
        v4::Packet::Disconnect => Packet::Disconnect {
            reason: 0,
            reason_string: None,
        },
        v4::Packet::Connect(_) => return unexpected("CONNECT"),
        v4::Packet::Subscribe(_) => return unexpected("SUBSCRIBE"),
        v4::Packet::Unsubscribe(_) => return unexpected("UNSUBSCRIBE"),
        v4::Packet::PingReq => return unexpected("PINGREQ"),
    })
}

fn connect_code_v5(code: v5::ConnectReturnCode) -> ConnectCode {
    use v5::ConnectReturnCode as C;
    match code {
        C::Success => ConnectCode::Accepted,
        C::BadUserNamePassword => ConnectCode::BadCredentials,
        C::NotAuthorized => ConnectCode::NotAuthorized,
        C::Banned => ConnectCode::Permanent("banned"),
        C::BadClientId | C::ClientIdentifierNotValid => {
            ConnectCode::Permanent("client identifier rejected")
        }
        C::BadAuthenticationMethod => ConnectCode::Permanent("bad authentication method"),
        C::RefusedProtocolVersion | C::UnsupportedProtocolVersion => {
            ConnectCode::Permanent("unsupported protocol version")
        }
        C::ServiceUnavailable | C::ServerUnavailable => {
            ConnectCode::Transient("server unavailable")
        }
        C::ServerBusy => ConnectCode::Transient("server busy"),
        C::QuotaExceeded => ConnectCode::Transient("quota exceeded"),
        C::ConnectionRateExceeded => ConnectCode::Transient("connection rate exceeded"),
        C::UseAnotherServer | C::ServerMoved => ConnectCode::Transient("server moved"),
        C::PacketTooLarge => ConnectCode::Permanent("CONNECT packet too large"),
        C::UnspecifiedError => ConnectCode::Transient("unspecified error"),
        C::MalformedPacket | C::ProtocolError => ConnectCode::Permanent("protocol error"),
        C::ImplementationSpecificError => ConnectCode::Transient("implementation specific error"),
        C::TopicNameInvalid => ConnectCode::Permanent("topic name invalid (Last Will)"),
        C::PayloadFormatInvalid => ConnectCode::Permanent("payload format invalid"),
        C::RetainNotSupported => ConnectCode::Permanent(WILL_RETAIN_REFUSED),
        C::QoSNotSupported => ConnectCode::Permanent(WILL_QOS_REFUSED),
    }
}

fn from_v5(packet: v5::Packet) -> Result<Packet, CodecError> {
    Ok(match packet {
        v5::Packet::ConnAck(ack) => {
            let mut caps = BrokerCaps::default();
            if let Some(p) = ack.properties {
                if let Some(q) = p.max_qos.and_then(|q| QoS::try_from(q).ok()) {
                    caps.max_qos = q;
                }
                if let Some(r) = p.receive_max.filter(|r| *r > 0) {
                    caps.receive_maximum = r;
                }
                caps.max_packet_size = p.max_packet_size;
                caps.retain_available = p.retain_available != Some(0);
                caps.server_keep_alive = p.server_keep_alive;
            }
            Packet::ConnAck(ConnAck {
                session_present: ack.session_present,
                code: connect_code_v5(ack.code),
                caps,
            })
        }
        v5::Packet::Publish(p) => {
            let topic = String::from_utf8(p.topic.to_vec())
                .map_err(|_| CodecError::Malformed("topic is not UTF-8".into()))?;
            let (response_topic, correlation_data) = match p.properties {
                Some(props) => (props.response_topic, props.correlation_data),
                None => (None, None),
            };
            Packet::Publish(Publish {
                dup: p.dup,
                qos: from_q5(p.qos),
                retain: p.retain,
                pkid: p.pkid,
                topic,
                payload: p.payload,
                response_topic,
                correlation_data,
            })
        }
        v5::Packet::PubAck(a) => Packet::PubAck {
            pkid: a.pkid,
            failure: (!matches!(
                a.reason,
                v5::PubAckReason::Success | v5::PubAckReason::NoMatchingSubscribers
            ))
            .then(|| format!("{:?}", a.reason)),
        },
        v5::Packet::PubRec(a) => Packet::PubRec {
            pkid: a.pkid,
            failure: (!matches!(
                a.reason,
                v5::PubRecReason::Success | v5::PubRecReason::NoMatchingSubscribers
            ))
            .then(|| format!("{:?}", a.reason)),
        },
        v5::Packet::PubRel(a) => Packet::PubRel(a.pkid),
        v5::Packet::PubComp(a) => Packet::PubComp(a.pkid),
        v5::Packet::SubAck(a) => Packet::SubAck {
            pkid: a.pkid,
            granted: a
                .return_codes
                .into_iter()
                .map(|c| match c {
                    v5::SubscribeReasonCode::Success(q) => Some(from_q5(q)),
                    _ => None,
                })
                .collect(),
        },
        v5::Packet::UnsubAck(a) => Packet::UnsubAck(a.pkid),
        v5::Packet::PingResp(_) => Packet::PingResp,
        v5::Packet::Disconnect(d) => Packet::Disconnect {
            reason: d.reason_code as u8,
            reason_string: d.properties.and_then(|p| p.reason_string),
        },
        v5::Packet::Auth(_) => Packet::Auth,
        v5::Packet::Connect(..) => return unexpected("CONNECT"),
        v5::Packet::Subscribe(_) => return unexpected("SUBSCRIBE"),
        v5::Packet::Unsubscribe(_) => return unexpected("UNSUBSCRIBE"),
        v5::Packet::PingReq(_) => return unexpected("PINGREQ"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::broker_side::{connack_props5, connack5};

    const MAX: usize = 1 << 20;

    fn publish(qos: QoS, pkid: u16) -> Publish {
        Publish {
            dup: qos != QoS::AtMostOnce,
            qos,
            retain: true,
            pkid,
            topic: "reply/u/1".into(),
            payload: Bytes::from_static(b"payload"),
            response_topic: None,
            correlation_data: None,
        }
    }

    #[test]
    fn an_mqtt5_connect_carries_a_password_without_a_user_name() {
        let connect = |username: Option<&str>, password: Option<&str>| {
            let mut buf = BytesMut::new();
            Packet::Connect(Box::new(Connect {
                client_id: "c".into(),
                clean_start: true,
                keep_alive: 30,
                username: username.map(str::to_owned),
                password: password.map(|p| Secret::new(p.to_owned())),
                will: None,
                session_expiry: None,
                receive_maximum: None,
                max_packet_size: None,
            }))
            .write(Protocol::V5, &mut buf)
            .unwrap();
            let v5::Packet::Connect(_, _, login) = v5::Packet::read(&mut buf, None).unwrap() else {
                panic!("not a CONNECT");
            };
            login.map(|l| (l.username, l.password))
        };
        assert_eq!(
            connect(None, Some("pw")),
            Some((String::new(), "pw".into()))
        );
        assert_eq!(
            connect(Some("pi"), Some("pw")),
            Some(("pi".into(), "pw".into()))
        );
        assert_eq!(
            connect(Some("pi"), None),
            Some(("pi".into(), String::new()))
        );
        assert_eq!(connect(None, None), None);
    }

    #[test]
    fn client_packets_decode_as_rumqttc_v4() {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let pkid = if qos == QoS::AtMostOnce { 0 } else { 513 };
            let mut buf = BytesMut::new();
            Packet::Publish(publish(qos, pkid))
                .write(Protocol::V311, &mut buf)
                .unwrap();
            let v4::Packet::Publish(p) = v4::Packet::read(&mut buf, MAX).unwrap() else {
                panic!("not a publish");
            };
            assert_eq!(
                (p.qos as u8, p.pkid, p.dup, p.retain),
                (qos.as_u8(), pkid, pkid != 0, true)
            );
            assert_eq!(
                (p.topic.as_str(), &p.payload[..]),
                ("reply/u/1", &b"payload"[..])
            );
            assert_eq!(
                Packet::Publish(publish(qos, pkid)).size(Protocol::V311),
                9 + 11 + usize::from(pkid != 0) * 2
            );
        }
        let mut buf = BytesMut::new();
        for p in [
            Packet::PubAck {
                pkid: 1,
                failure: None,
            },
            Packet::PubRec {
                pkid: 2,
                failure: None,
            },
            Packet::PubRel(3),
            Packet::PubComp(4),
            Packet::PingReq,
            Packet::Disconnect {
                reason: 0,
                reason_string: None,
            },
        ] {
            p.write(Protocol::V311, &mut buf).unwrap();
        }
        let decoded: Vec<_> = (0..6)
            .map(|_| v4::Packet::read(&mut buf, MAX).unwrap())
            .collect();
        assert_eq!(
            decoded,
            vec![
                v4::Packet::PubAck(v4::PubAck::new(1)),
                v4::Packet::PubRec(v4::PubRec::new(2)),
                v4::Packet::PubRel(v4::PubRel::new(3)),
                v4::Packet::PubComp(v4::PubComp::new(4)),
                v4::Packet::PingReq,
                v4::Packet::Disconnect,
            ]
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn client_packets_decode_as_rumqttc_v5() {
        let mut p = publish(QoS::ExactlyOnce, 77);
        p.response_topic = Some("back".into());
        p.correlation_data = Some(Bytes::from_static(b"corr"));
        let mut buf = BytesMut::new();
        Packet::Publish(p.clone())
            .write(Protocol::V5, &mut buf)
            .unwrap();
        assert_eq!(buf.len(), Packet::Publish(p).size(Protocol::V5));
        let v5::Packet::Publish(d) = v5::Packet::read(&mut buf, None).unwrap() else {
            panic!("not a publish");
        };
        assert_eq!((d.pkid, d.dup, d.qos), (77, true, m5::QoS::ExactlyOnce));
        let props = d.properties.expect("properties");
        assert_eq!(props.response_topic.as_deref(), Some("back"));
        assert_eq!(props.correlation_data, Some(Bytes::from_static(b"corr")));

        let mut buf = BytesMut::new();
        Packet::Subscribe {
            pkid: 9,
            filters: vec![("cmd/#".into(), QoS::ExactlyOnce)],
        }
        .write(Protocol::V5, &mut buf)
        .unwrap();
        let v5::Packet::Subscribe(s) = v5::Packet::read(&mut buf, None).unwrap() else {
            panic!("not a subscribe");
        };
        assert_eq!((s.pkid, s.filters[0].path.as_str()), (9, "cmd/#"));
        assert_eq!(s.filters[0].qos, m5::QoS::ExactlyOnce);
    }

    #[test]
    fn broker_packets_round_trip_v4() {
        let mut buf = BytesMut::new();
        v4::Packet::ConnAck(v4::ConnAck::new(v4::ConnectReturnCode::Success, true))
            .write(&mut buf, MAX)
            .unwrap();
        let mut p = v4::Publish::new("cmd/1", m4::QoS::ExactlyOnce, b"x".to_vec());
        p.pkid = 65535;
        p.dup = true;
        v4::Packet::Publish(p).write(&mut buf, MAX).unwrap();
        v4::Packet::UnsubAck(v4::UnsubAck::new(5))
            .write(&mut buf, MAX)
            .unwrap();
        let ack = Packet::read(Protocol::V311, &mut buf, MAX).unwrap();
        assert_eq!(
            ack,
            Packet::ConnAck(ConnAck {
                session_present: true,
                code: ConnectCode::Accepted,
                caps: BrokerCaps::default(),
            })
        );
        let Packet::Publish(p) = Packet::read(Protocol::V311, &mut buf, MAX).unwrap() else {
            panic!("not a publish");
        };
        assert_eq!(
            (p.pkid, p.dup, p.qos, p.topic.as_str()),
            (65535, true, QoS::ExactlyOnce, "cmd/1")
        );
        assert_eq!(
            Packet::read(Protocol::V311, &mut buf, MAX).unwrap(),
            Packet::UnsubAck(5)
        );
        assert!(matches!(
            Packet::read(Protocol::V311, &mut buf, MAX),
            Err(CodecError::Incomplete)
        ));
    }

    #[test]
    fn broker_connack_caps_v5() {
        let mut buf = BytesMut::new();
        let props = v5::ConnAckProperties {
            receive_max: Some(5),
            max_qos: Some(1),
            retain_available: Some(0),
            max_packet_size: Some(1000),
            server_keep_alive: Some(12),
            ..connack_props5()
        };
        connack5(false, Some(props)).write(&mut buf, None).unwrap();
        let Packet::ConnAck(ack) = Packet::read(Protocol::V5, &mut buf, MAX).unwrap() else {
            panic!("not a connack");
        };
        assert_eq!(
            ack.caps,
            BrokerCaps {
                max_qos: QoS::AtLeastOnce,
                receive_maximum: 5,
                max_packet_size: Some(1000),
                retain_available: false,
                server_keep_alive: Some(12),
            }
        );
    }

    #[test]
    fn v5_disconnect_forms() {
        for (bytes, reason) in [(&[0xE0u8, 0x00][..], 0u8), (&[0xE0, 0x01, 0x8E][..], 0x8E)] {
            let mut buf = BytesMut::from(bytes);
            assert_eq!(
                Packet::read(Protocol::V5, &mut buf, MAX).unwrap(),
                Packet::Disconnect {
                    reason,
                    reason_string: None
                }
            );
            assert!(buf.is_empty());
        }
        // Reason code still to come.
        let mut buf = BytesMut::from(&[0xE0u8, 0x01][..]);
        assert!(matches!(
            Packet::read(Protocol::V5, &mut buf, MAX),
            Err(CodecError::Incomplete)
        ));
        assert_eq!(buf.len(), 2);
    }

    #[test]
    fn a_frame_whose_contents_run_short_is_malformed_not_incomplete() {
        // A complete v5 PUBACK frame (remaining length 4) whose property length is an
        // unfinished variable byte integer: rumqttc says "insufficient bytes" after
        // consuming the frame.
        let mut buf = BytesMut::from(&[0x40u8, 0x04, 0x00, 0x01, 0x00, 0x80][..]);
        let r = Packet::read(Protocol::V5, &mut buf, MAX);
        assert!(matches!(r, Err(CodecError::Malformed(_))), "{r:?}");
    }

    #[test]
    fn client_packets_from_the_broker_are_rejected() {
        let mut buf = BytesMut::new();
        v4::Packet::PingReq.write(&mut buf, MAX).unwrap();
        assert!(matches!(
            Packet::read(Protocol::V311, &mut buf, MAX),
            Err(CodecError::Malformed(_))
        ));
    }

    /// Arbitrary bytes never panic the decoder, and a decode never claims `Incomplete`
    /// after consuming input.
    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20_000 {
            let len = (next() % 24) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if let Some(first) = bytes.first_mut() {
                // Mostly broker-to-client packet types, with valid-looking lengths.
                *first = ((next() % 15) as u8) << 4 | (*first & 0x0F);
            }
            if bytes.len() > 1 {
                bytes[1] = (bytes.len() - 2) as u8 & 0x7F;
            }
            for protocol in [Protocol::V311, Protocol::V5] {
                let mut buf = BytesMut::from(&bytes[..]);
                let mut rounds = 0;
                loop {
                    let before = buf.len();
                    match Packet::read(protocol, &mut buf, MAX) {
                        Ok(_) => {}
                        Err(CodecError::Incomplete) => {
                            assert_eq!(buf.len(), before, "{bytes:02x?}");
                            break;
                        }
                        Err(_) => break,
                    }
                    rounds += 1;
                    assert!(rounds <= 24);
                }
            }
        }
    }
}
