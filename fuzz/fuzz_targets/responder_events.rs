//! Arbitrary event sequences into the pure responder (`protocol::responder`).
//!
//! Invariants checked after every event:
//! - it never panics;
//! - every `Subscribe` is a valid topic (no `+`, `#`, NUL) and is either the UUID topic or
//!   the command topic rendered from the UUID it accepted;
//! - every `Publish` goes to a valid topic;
//! - each delivery of a message gets exactly one `Ack` or `Publish` reply, except a
//!   redelivery of a message whose reply is still in flight, and any message after
//!   SIGTERM (left for the broker to keep), which get nothing;
//! - a message id the session handed out once (ids are unique per message) is never
//!   answered twice; a redelivered id is answered at most once while its reply is in flight;
//! - `Disconnect` at most once, and after it nothing but `Ack`s.
#![no_main]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mqtt_responder::protocol::responder::{
    Action, OutgoingKind, Responder, ResponderSettings, ResponseTo,
};
use mqtt_responder::protocol::{ReplyTable, UnknownCommand};
use mqtt_responder::topic::{Template, Var, Vars, validate_level, validate_topic};
use mqtt_responder::vocabulary::{MessageId, QoS};

const USER_ID: &str = "2547841";
const COMPLETION: &str = "Well done my IoT!";
/// UUIDs a hostile peer might send: wildcards, separators, NUL, empty, long, not UTF-8.
const HOSTILE: &[&[u8]] = &[
    b"6533a9a8-5b52-4ccb-95c1-4b75383d5c38",
    b"#",
    b"+",
    b"a/+",
    b"a/#",
    b"x/y",
    b"",
    b"\0",
    b"a\0b",
    b"\xff\xfe",
    b" ",
    b"uuid+",
    b"$SYS",
    b"{uuid}",
    b"{command}",
];
const COMMAND_TEMPLATES: &[&str] = &["{uuid}", "{user_id}/{uuid}/cmd", "cmd/{uuid}"];
const REPLY_TEMPLATES: &[&str] = &[
    "{uuid}/{command}",
    "{user_id}/{uuid}/{command}/r",
    "r/{command}",
];
const COMMANDS: &[&str] = &["Hello", "Ping", "Status", "a b", "x/y", "+", COMPLETION];

#[derive(Debug, Arbitrary)]
struct Input {
    qos: u8,
    command_template: u8,
    reply_template: u8,
    max_payload: u8,
    unknown_reply: bool,
    login_cap_secs: Option<u8>,
    restore: Option<Restore>,
    events: Vec<Event>,
}

/// A crash-resumed run: the UUID and replies in flight (ids 1..=n, before any new message).
#[derive(Debug, Arbitrary)]
struct Restore {
    uuid: Uuid,
    in_flight: Vec<Cmd>,
    draining: bool,
    qos: u8,
}

#[derive(Debug, Arbitrary)]
enum Uuid {
    Hostile(u8),
    Raw(Vec<u8>),
}

#[derive(Debug, Arbitrary)]
enum Cmd {
    Known(u8),
    Raw(Vec<u8>),
    Long(u16),
}

#[derive(Debug, Arbitrary)]
enum Event {
    Connected {
        session_present: bool,
        max_qos: u8,
    },
    Disconnected,
    /// A SUBACK for a topic the responder asked for (`which` picks among them).
    SubscribedAsked {
        which: u8,
        granted: Option<u8>,
    },
    SubscribedRandom {
        topic: String,
        granted: Option<u8>,
    },
    UuidMessage(Uuid),
    /// On the accepted command topic (on the UUID topic while there is none).
    Command {
        cmd: Cmd,
        response_topic: Option<String>,
        correlation: Option<Vec<u8>>,
    },
    RandomMessage {
        topic: String,
        payload: Vec<u8>,
    },
    /// The same message again, with its id (a redelivery the session did not suppress).
    Redeliver(u8),
    /// A message too large to read (the session acknowledged and skipped it), on the command
    /// topic when `on_commands` (the UUID topic while there is none), else on `topic`.
    Oversized {
        on_commands: bool,
        topic: String,
        size: u32,
    },
    /// Delivered/failed for a reply it published (`which`) or a random id.
    Delivered(u8),
    Failed(u8),
    DeliveredRandom(u64),
    Advance(u16),
    TimeoutNow,
    ReplaceReplies(Vec<(u8, String)>),
    /// SIGTERM/SIGINT.
    Shutdown,
}

fn qos(n: u8) -> QoS {
    match n % 3 {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

fn uuid_bytes(u: &Uuid) -> Vec<u8> {
    match u {
        Uuid::Hostile(i) => HOSTILE[usize::from(*i) % HOSTILE.len()].to_vec(),
        Uuid::Raw(b) => b.clone(),
    }
}

fn cmd_bytes(c: &Cmd) -> Vec<u8> {
    match c {
        Cmd::Known(i) => COMMANDS[usize::from(*i) % COMMANDS.len()]
            .as_bytes()
            .to_vec(),
        Cmd::Raw(b) => b.clone(),
        Cmd::Long(n) => vec![b'a'; usize::from(*n)],
    }
}

fn session(input: &Input) -> ResponderSettings {
    let all = [Var::UserId, Var::Uuid, Var::Command];
    let t = |s: &str, allowed: &[Var]| Template::parse(s, allowed).expect("template");
    let pick = |list: &[&'static str], i: u8| list[usize::from(i) % list.len()];
    ResponderSettings {
        user_id: USER_ID.to_owned(),
        login_topic: t("login", &all[..1]),
        uuid_topic: t("{user_id}/UUID", &all[..1]),
        command_topic: t(pick(COMMAND_TEMPLATES, input.command_template), &all[..2]),
        reply_topic: t(pick(REPLY_TEMPLATES, input.reply_template), &all),
        completion_message: COMPLETION.to_owned(),
        qos: qos(input.qos),
        login_timeout: Duration::from_secs(30),
        drain_timeout: Duration::from_secs(5),
        max_payload_bytes: usize::from(input.max_payload).max(1),
        max_pending: 1,
        unknown_command: if input.unknown_reply {
            UnknownCommand::Reply("unknown".to_owned())
        } else {
            UnknownCommand::Ignore
        },
    }
}

/// One delivered message, to redeliver it.
#[derive(Clone)]
struct Sent {
    id: MessageId,
    topic: String,
    payload: Vec<u8>,
    response: ResponseTo,
}

/// What the checker knows about one message id.
#[derive(Default)]
struct Seen {
    deliveries: u32,
    acks: u32,
    replies: u32,
    reply_in_flight: bool,
}

struct Model {
    uuid_topic: String,
    command_template: Template,
    ids: HashMap<MessageId, Seen>,
    /// Replies published, in order (for `Delivered(which)`).
    replied: Vec<MessageId>,
    disconnected: bool,
}

impl Model {
    /// Checks the actions of one event; `uuid` is the one accepted after it, `delivered` the
    /// id the event delivered, if any, with whether its reply was in flight before.
    fn check(
        &mut self,
        actions: Vec<Action>,
        uuid: Option<&str>,
        delivered: Option<(MessageId, bool)>,
    ) {
        let mut answered = 0;
        for action in actions {
            if self.disconnected {
                assert!(
                    matches!(action, Action::Ack(_)),
                    "{action:?} after Disconnect"
                );
            }
            match action {
                Action::Subscribe { topic, .. } => {
                    assert_eq!(validate_topic(&topic), Ok(()), "subscribed to {topic:?}");
                    let command_topic = uuid.map(|uuid| {
                        assert_eq!(validate_level(uuid), Ok(()), "accepted UUID {uuid:?}");
                        self.command_template.render(&Vars {
                            user_id: USER_ID,
                            uuid,
                            command: "",
                        })
                    });
                    assert!(
                        topic == self.uuid_topic || Some(&topic) == command_topic.as_ref(),
                        "subscribed to {topic:?}, neither the UUID topic nor the command topic"
                    );
                }
                Action::Publish(out) => {
                    assert_eq!(
                        validate_topic(&out.topic),
                        Ok(()),
                        "published to {:?}",
                        out.topic
                    );
                    if let OutgoingKind::Reply { in_reply_to, .. } = out.kind {
                        let seen = self.ids.entry(in_reply_to).or_default();
                        assert!(
                            !seen.reply_in_flight,
                            "second reply in flight for {in_reply_to:?}"
                        );
                        seen.replies += 1;
                        seen.reply_in_flight = true;
                        assert!(
                            seen.replies + seen.acks <= seen.deliveries,
                            "{in_reply_to:?}: {} replies + {} acks for {} deliveries",
                            seen.replies,
                            seen.acks,
                            seen.deliveries
                        );
                        self.replied.push(in_reply_to);
                        if Some(in_reply_to) == delivered.map(|d| d.0) {
                            answered += 1;
                        }
                    }
                }
                Action::Ack(id) => {
                    let seen = self.ids.entry(id).or_default();
                    seen.acks += 1;
                    assert!(
                        seen.replies + seen.acks <= seen.deliveries,
                        "{id:?}: {} replies + {} acks for {} deliveries",
                        seen.replies,
                        seen.acks,
                        seen.deliveries
                    );
                    if Some(id) == delivered.map(|d| d.0) {
                        answered += 1;
                    }
                }
                Action::Disconnect => {
                    assert!(!self.disconnected, "second Disconnect");
                    self.disconnected = true;
                }
            }
        }
        if let Some((id, left_unanswered)) = delivered {
            let expected = if left_unanswered { 0 } else { 1 };
            assert_eq!(answered, expected, "{id:?} got {answered} acks/replies");
        }
    }
}

fuzz_target!(|input: Input| {
    let session = session(&input);
    let table = ReplyTable::seed();
    let mut r = Responder::new(&session, &table);
    if let Some(cap) = input.login_cap_secs {
        r.set_login_backoff_cap(Duration::from_secs(u64::from(cap)));
    }
    let mut model = Model {
        uuid_topic: format!("{USER_ID}/UUID"),
        command_template: session.command_topic.clone(),
        ids: HashMap::new(),
        replied: Vec::new(),
        disconnected: false,
    };
    let mut next_id = 0u64;
    if let Some(restore) = &input.restore {
        let uuid = String::from_utf8_lossy(&uuid_bytes(&restore.uuid)).into_owned();
        let in_flight: Vec<(MessageId, String)> = restore
            .in_flight
            .iter()
            .map(|c| {
                next_id += 1;
                (
                    MessageId(next_id),
                    String::from_utf8_lossy(&cmd_bytes(c)).into_owned(),
                )
            })
            .collect();
        if r.restore(&uuid, &in_flight, restore.draining, qos(restore.qos))
            .is_ok()
        {
            for (id, _) in &in_flight {
                let seen = model.ids.entry(*id).or_default();
                seen.deliveries = 1;
                seen.replies = 1;
                seen.reply_in_flight = true;
                model.replied.push(*id);
            }
        }
    }
    let start = Instant::now();
    let mut now = start;
    let mut asked: Vec<String> = Vec::new();
    let mut sent: Vec<Sent> = Vec::new();
    for event in input.events.iter().take(256) {
        let mut delivered = None;
        match event {
            Event::Connected {
                session_present,
                max_qos,
            } => r.handle_connected(*session_present, qos(*max_qos), now),
            Event::Disconnected => r.handle_disconnected(now),
            Event::SubscribedAsked { which, granted } => {
                if !asked.is_empty() {
                    let topic = asked[usize::from(*which) % asked.len()].clone();
                    r.handle_subscribed(&topic, granted.map(qos), now);
                }
            }
            Event::SubscribedRandom { topic, granted } => {
                r.handle_subscribed(topic, granted.map(qos), now)
            }
            Event::UuidMessage(_) | Event::Command { .. } | Event::RandomMessage { .. } => {
                next_id += 1;
                let message = match event {
                    Event::UuidMessage(u) => Sent {
                        id: MessageId(next_id),
                        topic: model.uuid_topic.clone(),
                        payload: uuid_bytes(u),
                        response: ResponseTo::default(),
                    },
                    Event::Command {
                        cmd,
                        response_topic,
                        correlation,
                    } => Sent {
                        id: MessageId(next_id),
                        topic: r
                            .uuid()
                            .map(|uuid| {
                                model.command_template.render(&Vars {
                                    user_id: USER_ID,
                                    uuid,
                                    command: "",
                                })
                            })
                            .unwrap_or_else(|| model.uuid_topic.clone()),
                        payload: cmd_bytes(cmd),
                        response: ResponseTo {
                            topic: response_topic.clone(),
                            correlation_data: correlation.clone().map(Into::into),
                        },
                    },
                    Event::RandomMessage { topic, payload } => Sent {
                        id: MessageId(next_id),
                        topic: topic.clone(),
                        payload: payload.clone(),
                        response: ResponseTo::default(),
                    },
                    _ => unreachable!(),
                };
                model.ids.entry(message.id).or_default().deliveries += 1;
                delivered = Some((message.id, r.is_stopping()));
                r.handle_request(
                    message.id,
                    &message.topic,
                    &message.payload,
                    // QoS 1/2: never dropped by max_pending, so the model's "every command
                    // is answered once" holds (the responder's unit tests cover QoS 0 floods).
                    QoS::AtLeastOnce,
                    &message.response,
                    now,
                );
                sent.push(message);
            }
            Event::Oversized {
                on_commands,
                topic,
                size,
            } => {
                let topic = match (on_commands, r.uuid()) {
                    (true, Some(uuid)) => model.command_template.render(&Vars {
                        user_id: USER_ID,
                        uuid,
                        command: "",
                    }),
                    (true, None) => model.uuid_topic.clone(),
                    (false, _) => topic.clone(),
                };
                r.handle_oversized(&topic, *size as usize);
            }
            Event::Redeliver(which) => {
                if !sent.is_empty() {
                    let message = sent[usize::from(*which) % sent.len()].clone();
                    let seen = model.ids.entry(message.id).or_default();
                    seen.deliveries += 1;
                    delivered = Some((message.id, seen.reply_in_flight || r.is_stopping()));
                    r.handle_request(
                        message.id,
                        &message.topic,
                        &message.payload,
                        QoS::AtLeastOnce,
                        &message.response,
                        now,
                    );
                }
            }
            Event::Delivered(which) | Event::Failed(which) => {
                if !model.replied.is_empty() {
                    let id = model.replied[usize::from(*which) % model.replied.len()];
                    if let Some(seen) = model.ids.get_mut(&id) {
                        seen.reply_in_flight = false;
                    }
                    if matches!(event, Event::Delivered(_)) {
                        r.handle_delivered(id, now);
                    } else {
                        r.handle_failed(id, now);
                    }
                }
            }
            Event::DeliveredRandom(id) => {
                let id = MessageId(*id);
                if let Some(seen) = model.ids.get_mut(&id) {
                    seen.reply_in_flight = false;
                }
                r.handle_delivered(id, now);
            }
            Event::Advance(ms) => {
                now += Duration::from_millis(u64::from(*ms) * 16);
                if r.poll_timeout().is_some_and(|t| t <= now) {
                    r.handle_timeout(now);
                }
            }
            Event::TimeoutNow => r.handle_timeout(now),
            Event::Shutdown => r.handle_shutdown(now),
            Event::ReplaceReplies(entries) => {
                let table = ReplyTable(
                    entries
                        .iter()
                        .map(|(c, reply)| {
                            (
                                COMMANDS[usize::from(*c) % COMMANDS.len()].to_owned(),
                                reply.clone(),
                            )
                        })
                        .filter(|(c, _)| validate_level(c).is_ok() && c != COMPLETION)
                        .collect(),
                );
                let _ = r.replace_replies(&table);
            }
        }
        // Remember what it subscribed to, for SUBACKs; check the actions.
        let mut actions = Vec::new();
        while let Some(action) = r.poll_action() {
            if let Action::Subscribe { topic, .. } = &action {
                asked.push(topic.clone());
            }
            actions.push(action);
        }
        model.check(actions, r.uuid(), delivered);
        if let Some(deadline) = r.poll_timeout() {
            assert!(deadline >= start, "deadline in the past");
        }
    }
});
