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
