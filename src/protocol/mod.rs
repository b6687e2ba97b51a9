//! The seed protocol (SPEC §2) as two pure state machines, mirror images of each other:
//! [`responder::Responder`] (the daemon's side) and [`examiner::Examiner`] (the peer that
//! hands out UUIDs, sends commands and checks replies; used by `examine`, `demo` and tests).
//!
//! Neither does I/O or reads a clock: events come in through `handle_*` methods, each taking
//! `now`; what to do comes out of `poll_action`, and the next deadline out of `poll_timeout`.

pub mod examiner;
mod replies;
mod report;
pub mod responder;

pub use replies::{ReplyTable, UnknownCommand};

/// Peer-controlled text in log lines is cut to this many characters.
const SHOWN_CHARS: usize = 64;

/// Peer-controlled bytes for a log line: lossy UTF-8, escaped, at most [`SHOWN_CHARS`]
/// characters.
pub(crate) struct Shown<'a>(&'a [u8]);

impl std::fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = String::from_utf8_lossy(self.0);
        let mut chars = text.chars();
        let head: String = chars.by_ref().take(SHOWN_CHARS).collect();
        write!(f, "{head:?}")?;
        if chars.next().is_some() {
            write!(f, "… ({} bytes)", self.0.len())?;
        }
        Ok(())
    }
}

/// Helpers shared by the tests of both machines.
#[cfg(test)]
pub(crate) mod testing {
    use std::time::Duration;

    use super::UnknownCommand;
    use super::responder::ResponderSettings;
    use crate::topic::{Template, Var};
    use crate::vocabulary::QoS;

    /// The responder's settings with SPEC §3's defaults.
    pub(crate) fn session() -> ResponderSettings {
        let all = [Var::UserId, Var::Uuid, Var::Command];
        let template = |s: &str, allowed: &[Var]| Template::parse(s, allowed).expect("template");
        ResponderSettings {
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
            max_pending: 1000,
            unknown_command: UnknownCommand::Ignore,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Shown;

    #[test]
    fn shown_escapes_and_truncates() {
        assert_eq!(Shown(b"a\0b").to_string(), r#""a\0b""#);
        let long = "y".repeat(100);
        let shown = Shown(long.as_bytes()).to_string();
        assert!(shown.starts_with(&format!("\"{}\"", "y".repeat(64))));
        assert!(shown.ends_with("(100 bytes)"));
        assert_eq!(Shown(b"\xff").to_string(), "\"\u{fffd}\"");
    }
}
