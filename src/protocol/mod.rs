//! The seed protocol (SPEC §2) as two pure state machines, mirror images of each other:
//! [`responder::Responder`] (the daemon's side) and [`examiner::Examiner`] (the peer that
//! hands out UUIDs, sends commands and checks replies; used by `examine`, `demo` and tests).
//!
//! Neither does I/O or reads a clock: events come in through `handle_*` methods, each taking
//! `now`; what to do comes out of `poll_action`, and the next deadline out of `poll_timeout`.

pub mod examiner;
pub mod responder;

/// Opaque handle of an inbound message, assigned by the MQTT session and echoed back by the
/// protocol in its actions so the session can acknowledge the right message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub u64);

/// Helpers shared by the tests of both machines.
#[cfg(test)]
pub(crate) mod testing {
    use std::time::Duration;

    use crate::config::{Session, UnknownCommand};
    use crate::mqtt::QoS;
    use crate::topic::{Template, Var};

    /// `[session]` with SPEC §3's defaults.
    pub(crate) fn session() -> Session {
        let all = [Var::UserId, Var::Uuid, Var::Command];
        let template = |s: &str, allowed: &[Var]| Template::parse(s, allowed).expect("template");
        Session {
            user_id: "2547841".to_owned(),
            login_topic: template("login", &all[..1]),
            uuid_topic: template("{user_id}/UUID", &all[..1]),
            command_topic: template("{uuid}", &all[..2]),
            reply_topic: template("{uuid}/{command}", &all),
            completion_message: "Well done my IoT!".to_owned(),
            qos: QoS::ExactlyOnce,
            login_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(5),
            max_payload_bytes: 65536,
            unknown_command: UnknownCommand::Ignore,
            status_topic: Some(template("{user_id}/status", &all[..1])),
            status_interval: Duration::from_secs(60),
            state_dir: None,
        }
    }
}
