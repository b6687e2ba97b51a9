//! When to connect again: the daemon's reconnect policy (SPEC §3), pure.
//!
//! Told how each connection attempt ended ([`ReconnectPolicy::on_end`]), it answers: connect
//! again at once, retry after a delay, or finish with an [`Outcome`]. It keeps the capped
//! backoff, the streak of failed attempts that `reconnect.max_attempts` bounds, the
//! suspicion that another client uses our client id, and whether a TLS failure is news. The
//! caller brings the randomness and says in the log what the verdicts mean.

use std::time::Duration;

use crate::daemon::backoff::Backoff;
use crate::driver::End;
use crate::mqtt::packet::ConnectCode;

/// A connection that stayed up this long resets the backoff and the attempt counter.
pub const STABLE_AFTER: Duration = Duration::from_secs(30);

/// MQTT 5 DISCONNECT reason: another connection with our client id took the session over.
pub const SESSION_TAKEN_OVER: u8 = 0x8E;

/// Connections closed by the broker before [`STABLE_AFTER`], in a row, after which another
/// client with the same id is the likely cause (3.1.1 brokers just close the socket).
const TAKEOVER_SUSPECT_STREAK: u32 = 3;

/// How a run ended (SPEC §4 exit codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The completion message arrived and the daemon disconnected cleanly.
    Completed,
    /// Stopped by SIGTERM/SIGINT.
    Stopped,
    /// The broker refused the credentials.
    CredentialsRefused,
    /// The broker stayed unreachable for `reconnect.max_attempts` attempts.
    Unreachable,
    /// Anything else.
    Failed,
}

impl Outcome {
    /// The process exit code for this outcome.
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Completed | Outcome::Stopped => 0,
            Outcome::CredentialsRefused => 77,
            Outcome::Unreachable => 69,
            Outcome::Failed => 1,
        }
    }
}

/// What the connection loop knows about an attempt besides how it [`End`]ed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Context {
    /// The stream was opened (TCP, and TLS if configured): an [`End::Lost`] without it is
    /// a failed open.
    pub opened: bool,
    /// The responder's work is done: a clean disconnect completes the run.
    pub finished: bool,
    /// SIGTERM/SIGINT arrived.
    pub stopping: bool,
    /// Presence changed the Last Will in answer to this end (presence.rs decides): the next
    /// CONNECT, at once, carries a Will the broker takes.
    pub will_changed: bool,
    /// The reason code of a DISCONNECT the broker sent on the connection.
    pub disconnect_reason: Option<u8>,
}

/// What to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Connect again at once: the 3.1.1 purge of an old session, or a Will adapted to
    /// the broker.
    ConnectNow,
    /// Wait `delay`, then make attempt number `attempt` of this streak.
    RetryAfter {
        /// The backoff's jittered wait.
        delay: Duration,
        /// The number of the next attempt (failed attempts in a row, plus one).
        attempt: u32,
    },
    /// The run is over.
    Finish(Outcome),
}

/// Whether a TLS failure is news.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsNews {
    /// The first of a streak, or another cause than the last: worth an ERROR.
    New,
    /// The same cause as the last failure: the retry line says it.
    Repeated,
}

/// The policy's answer to one end: what to do, and what is worth telling about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// What to do next.
    pub next: Next,
    /// Another client with our id keeps taking the session over: the streak's length
    /// (told once a streak), and whether the broker said so (MQTT 5, reason 0x8E).
    pub takeover: Option<(u32, bool)>,
    /// The attempt failed in TLS.
    pub tls: Option<TlsNews>,
    /// Failed attempts in a row so far.
    pub failures: u32,
}

impl Verdict {
    /// Whether the failure streak has reached a length an operator must see at WARN
    /// (SPEC §2): the 5th failed attempt in a row and every 10th after it (15th, 25th, …);
    /// the others stay INFO, so a long outage is visible without a WARN per attempt.
    pub fn streak_is_news(&self) -> bool {
        self.failures >= 5 && (self.failures - 5) % 10 == 0
    }
}

/// The reconnect policy of one run.
#[derive(Debug)]
pub struct ReconnectPolicy {
    backoff: Backoff,
    max_attempts: Option<u32>,
    /// Failed attempts in a row (SPEC §3): refused or unreachable, and also connections
    /// lost before they stayed up for [`STABLE_AFTER`].
    failures: u32,
    reconnects: u32,
    was_connected: bool,
    takeovers: TakeoverWatch,
    tls: TlsAlarm,
}

impl ReconnectPolicy {
    /// A policy with the backoff's `initial` and `max` waits; `max_attempts` failed
    /// attempts in a row end the run (`None`: never).
    pub fn new(initial: Duration, max: Duration, max_attempts: Option<u32>) -> ReconnectPolicy {
        ReconnectPolicy {
            backoff: Backoff::new(initial, max),
            max_attempts,
            failures: 0,
            reconnects: 0,
            was_connected: false,
            takeovers: TakeoverWatch::default(),
            tls: TlsAlarm::default(),
        }
    }

    /// The number of the attempt about to be made in this streak (from 1).
    pub fn attempt(&self) -> u32 {
        self.failures + 1
    }

    /// A stream was opened: counts a reconnect when the run was connected before.
    pub fn opened(&mut self) {
        if self.was_connected {
            self.reconnects += 1;
        }
    }

    /// Times the run connected again after having been connected.
    pub fn reconnects(&self) -> u32 {
        self.reconnects
    }

    /// How an attempt ended; `random` is a uniformly random number for the jitter.
    pub fn on_end(&mut self, end: &End, cx: &Context, random: u64) -> Verdict {
        let mut tls_failure = None;
        let mut takeover = None;
        let finish = |outcome| Some(Next::Finish(outcome));
        let decided = match end {
            End::Disconnected => finish(if cx.finished {
                Outcome::Completed
            } else {
                Outcome::Stopped
            }),
            End::Purged => Some(Next::ConnectNow),
            End::Refused(ConnectCode::BadCredentials | ConnectCode::NotAuthorized) => {
                finish(Outcome::CredentialsRefused)
            }
            End::Refused(ConnectCode::Permanent(_)) if cx.will_changed => Some(Next::ConnectNow),
            End::Refused(ConnectCode::Permanent(_)) => finish(Outcome::Failed),
            End::Refused(_) => {
                self.failures += 1;
                None
            }
            End::Lost { tls, .. } if !cx.opened => {
                self.failures += 1;
                tls_failure = Some(*tls);
                None
            }
            End::Lost { .. } if cx.stopping => finish(Outcome::Stopped),
            End::Lost { .. } if cx.will_changed => Some(Next::ConnectNow),
            End::Lost {
                up_for,
                closed_by_broker,
                tls,
                ..
            } => {
                match up_for {
                    Some(up) if *up >= STABLE_AFTER => {
                        self.was_connected = true;
                        self.backoff.reset();
                        self.failures = 0;
                    }
                    // Connected, but not for long: some failures connect fine and die at
                    // once, so this attempt counts as failed.
                    Some(_) => {
                        self.was_connected = true;
                        self.failures += 1;
                    }
                    None => self.failures += 1,
                }
                takeover = self
                    .takeovers
                    .lost(*up_for, *closed_by_broker, cx.disconnect_reason);
                // A TLS 1.3 broker refuses a client certificate (or its absence) only after
                // the handshake: that is still a TLS failure.
                tls_failure = Some(*tls && up_for.is_none());
                None
            }
        };
        let tls = match (tls_failure, end) {
            (Some(true), End::Lost { error, .. }) => Some(if self.tls.failed(error) {
                TlsNews::New
            } else {
                TlsNews::Repeated
            }),
            _ => {
                if cx.opened {
                    self.tls.passed();
                }
                None
            }
        };
        let next = decided.unwrap_or_else(|| match self.max_attempts {
            Some(max) if self.failures >= max => Next::Finish(Outcome::Unreachable),
            _ => Next::RetryAfter {
                delay: self.backoff.next_delay(random),
                attempt: self.failures + 1,
            },
        });
        Verdict {
            next,
            takeover,
            tls,
            failures: self.failures,
        }
    }
}

/// Notices another client taking our session over: connections lost shortly after
/// CONNACK because the broker closed them, several times in a row. Reports once per streak.
#[derive(Debug, Default)]
struct TakeoverWatch {
    /// Suspicious losses in a row.
    streak: u32,
    /// One of them carried MQTT 5's "session taken over".
    certain: bool,
    reported: bool,
}

impl TakeoverWatch {
    /// A connection was lost; returns the streak length, and whether the broker said so,
    /// when it is time to report.
    fn lost(
        &mut self,
        up_for: Option<Duration>,
        closed_by_broker: bool,
        reason: Option<u8>,
    ) -> Option<(u32, bool)> {
        let taken_over = reason == Some(SESSION_TAKEN_OVER);
        // Closed before CONNACK counts too: when the broker resets the socket right after a
        // takeover, the CONNACK it had sent can be discarded unread.
        let suspicious =
            up_for.is_none_or(|up| up < STABLE_AFTER) && (closed_by_broker || taken_over);
        if !suspicious {
            // A connection that stayed up, or a different failure, ends the streak.
            *self = TakeoverWatch::default();
            return None;
        }
        self.streak += 1;
        self.certain |= taken_over;
        let threshold = if self.certain {
            2
        } else {
            TAKEOVER_SUSPECT_STREAK
        };
        if self.streak >= threshold && !self.reported {
            self.reported = true;
            return Some((self.streak, taken_over));
        }
        None
    }
}

/// Keeps TLS failures loud without an ERROR per attempt: the first of a streak, and one
/// whose cause differs from the last, deserve an ERROR; a repeat does not. Other failures
/// in between (a broker restarting refuses TCP) do not end the streak; a connection whose
/// TLS held does.
#[derive(Debug, Default)]
struct TlsAlarm {
    /// The cause of the last TLS failure in this streak.
    last: Option<String>,
}

impl TlsAlarm {
    /// A TLS failure: whether it deserves its own ERROR.
    fn failed(&mut self, cause: &str) -> bool {
        if self.last.as_deref() == Some(cause) {
            return false;
        }
        self.last = Some(cause.to_owned());
        true
    }

    /// TLS held on a connection: the next failure is news again.
    fn passed(&mut self) {
        self.last = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHORT: Option<Duration> = Some(Duration::from_millis(300));
    const INITIAL: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(2);

    fn policy(max_attempts: Option<u32>) -> ReconnectPolicy {
        ReconnectPolicy::new(INITIAL, MAX, max_attempts)
    }

    fn lost(up_for: Option<Duration>, closed_by_broker: bool, tls: bool) -> End {
        End::Lost {
            error: if tls { "UnknownIssuer" } else { "reset" }.to_owned(),
            up_for,
            closed_by_broker,
            tls,
        }
    }

    fn unopened(error: &str, tls: bool) -> End {
        End::Lost {
            error: error.to_owned(),
            up_for: None,
            closed_by_broker: false,
            tls,
        }
    }

    const OPENED: Context = Context {
        opened: true,
        finished: false,
        stopping: false,
        will_changed: false,
        disconnect_reason: None,
    };
    const NOT_OPENED: Context = Context {
        opened: false,
        ..OPENED
    };

    fn retry(v: Verdict) -> (Duration, u32) {
        match v.next {
            Next::RetryAfter { delay, attempt } => (delay, attempt),
            other => panic!("expected a retry, got {other:?}"),
        }
    }

    #[test]
    fn failed_attempts_count_up_and_max_attempts_gives_up() {
        let mut p = policy(Some(3));
        assert_eq!(p.attempt(), 1);
        let (_, attempt) = retry(p.on_end(&unopened("refused", false), &NOT_OPENED, 0));
        assert_eq!(attempt, 2);
        let refused = End::Refused(ConnectCode::Transient("server unavailable"));
        let (_, attempt) = retry(p.on_end(&refused, &OPENED, 0));
        assert_eq!(attempt, 3);
        assert_eq!(p.attempt(), 3);
        let v = p.on_end(&unopened("refused", false), &NOT_OPENED, 0);
        assert_eq!(v.next, Next::Finish(Outcome::Unreachable));
        assert_eq!(v.failures, 3);
    }

    #[test]
    fn without_max_attempts_it_never_gives_up_and_the_wait_stays_under_the_ceiling() {
        let mut p = policy(None);
        let mut ceiling = INITIAL;
        for n in 1..=200 {
            let (delay, attempt) =
                retry(p.on_end(&unopened("refused", false), &NOT_OPENED, u64::MAX));
            assert_eq!(attempt, n + 1);
            assert!(delay <= ceiling, "attempt {n}: {delay:?} above {ceiling:?}");
            ceiling = (ceiling * 2).min(MAX);
        }
    }

    #[test]
    fn a_connection_that_stayed_up_starts_a_new_streak_and_a_short_one_does_not() {
        let mut p = policy(Some(3));
        for _ in 0..2 {
            p.on_end(&unopened("refused", false), &NOT_OPENED, 0);
        }
        // Up for long: the streak and the backoff start over.
        let (delay, attempt) =
            retry(p.on_end(&lost(Some(STABLE_AFTER), false, false), &OPENED, u64::MAX));
        assert_eq!(attempt, 1, "the next attempt is the first of a new streak");
        assert!(delay <= INITIAL, "{delay:?}: the backoff started over");
        // Up, but not for long: counted as a failed attempt.
        let (_, attempt) = retry(p.on_end(&lost(SHORT, false, false), &OPENED, 0));
        assert_eq!(attempt, 2);
        p.on_end(&lost(SHORT, false, false), &OPENED, 0);
        let v = p.on_end(&lost(SHORT, false, false), &OPENED, 0);
        assert_eq!(v.next, Next::Finish(Outcome::Unreachable));
    }

    #[test]
    fn ends_that_finish_the_run() {
        let mut p = policy(None);
        let finished = Context {
            finished: true,
            ..OPENED
        };
        assert_eq!(
            p.on_end(&End::Disconnected, &finished, 0).next,
            Next::Finish(Outcome::Completed)
        );
        assert_eq!(
            p.on_end(&End::Disconnected, &OPENED, 0).next,
            Next::Finish(Outcome::Stopped)
        );
        for code in [ConnectCode::BadCredentials, ConnectCode::NotAuthorized] {
            let v = p.on_end(&End::Refused(code), &OPENED, 0);
            assert_eq!(v.next, Next::Finish(Outcome::CredentialsRefused));
        }
        let banned = End::Refused(ConnectCode::Permanent("banned"));
        assert_eq!(
            p.on_end(&banned, &OPENED, 0).next,
            Next::Finish(Outcome::Failed)
        );
        let stopping = Context {
            stopping: true,
            ..OPENED
        };
        assert_eq!(
            p.on_end(&lost(SHORT, true, false), &stopping, 0).next,
            Next::Finish(Outcome::Stopped)
        );
        assert_eq!(p.attempt(), 1, "none of these is a failed attempt");
    }

    #[test]
    fn a_purge_and_an_adapted_will_connect_at_once_without_counting() {
        let mut p = policy(Some(1));
        assert_eq!(p.on_end(&End::Purged, &OPENED, 0).next, Next::ConnectNow);
        let will = Context {
            will_changed: true,
            ..OPENED
        };
        let refused_will = End::Refused(ConnectCode::Permanent("QoS not supported"));
        assert_eq!(p.on_end(&refused_will, &will, 0).next, Next::ConnectNow);
        assert_eq!(
            p.on_end(&lost(None, true, false), &will, 0).next,
            Next::ConnectNow
        );
        assert_eq!(p.attempt(), 1);
        // A failed open is never about the Will.
        let v = p.on_end(
            &unopened("refused", false),
            &Context {
                will_changed: true,
                ..NOT_OPENED
            },
            0,
        );
        assert_eq!(v.next, Next::Finish(Outcome::Unreachable));
    }

    #[test]
    fn reconnects_count_connections_after_the_first() {
        let mut p = policy(None);
        p.opened();
        assert_eq!(p.reconnects(), 0);
        p.on_end(&lost(Some(STABLE_AFTER), false, false), &OPENED, 0);
        p.opened();
        p.opened();
        assert_eq!(p.reconnects(), 2);
    }

    #[test]
    fn takeover_reported_once_after_three_broker_closes_in_a_row() {
        let mut p = policy(None);
        let mut told = Vec::new();
        for _ in 0..4 {
            told.push(p.on_end(&lost(SHORT, true, false), &OPENED, 0).takeover);
        }
        assert_eq!(
            told,
            [None, None, Some((3, false)), None],
            "once per streak"
        );
        // A connection that stayed up ends the streak; a new one is reported again.
        p.on_end(&lost(Some(STABLE_AFTER), true, false), &OPENED, 0);
        for _ in 0..2 {
            assert_eq!(
                p.on_end(&lost(SHORT, true, false), &OPENED, 0).takeover,
                None
            );
        }
        assert_eq!(
            p.on_end(&lost(SHORT, true, false), &OPENED, 0).takeover,
            Some((3, false))
        );
    }

    #[test]
    fn session_taken_over_reason_is_reported_sooner() {
        let mut w = TakeoverWatch::default();
        assert_eq!(w.lost(SHORT, false, Some(SESSION_TAKEN_OVER)), None);
        assert_eq!(
            w.lost(SHORT, true, Some(SESSION_TAKEN_OVER)),
            Some((2, true))
        );
    }

    #[test]
    fn a_takeover_before_the_connack_was_read_counts() {
        let mut w = TakeoverWatch::default();
        assert_eq!(w.lost(SHORT, true, None), None);
        assert_eq!(
            w.lost(None, true, None),
            None,
            "reset before CONNACK was read"
        );
        assert_eq!(w.lost(SHORT, true, None), Some((3, false)));
    }

    #[test]
    fn the_5th_failure_in_a_row_and_every_10th_after_it_are_news() {
        let verdict = |failures| Verdict {
            next: Next::ConnectNow,
            takeover: None,
            tls: None,
            failures,
        };
        let news: Vec<u32> = (0..50).filter(|n| verdict(*n).streak_is_news()).collect();
        assert_eq!(news, [5, 15, 25, 35, 45]);
    }

    #[test]
    fn other_failures_are_not_takeovers() {
        let mut w = TakeoverWatch::default();
        for _ in 0..10 {
            // Resets, keep-alive timeouts and refused connections.
            assert_eq!(w.lost(SHORT, false, None), None);
            assert_eq!(w.lost(None, false, None), None);
        }
        assert_eq!(w.lost(SHORT, true, None), None);
        assert_eq!(w.lost(SHORT, true, None), None);
        assert_eq!(
            w.lost(SHORT, false, Some(0x81)),
            None,
            "a different failure"
        );
        assert_eq!(w.lost(SHORT, true, None), None);
    }

    #[test]
    fn tls_failure_is_news_once_per_streak_and_cause() {
        let mut p = policy(None);
        let tls = |p: &mut ReconnectPolicy, cause: &str| {
            p.on_end(&unopened(cause, true), &NOT_OPENED, 0).tls
        };
        assert_eq!(
            tls(&mut p, "UnknownIssuer"),
            Some(TlsNews::New),
            "the first of a streak"
        );
        assert_eq!(tls(&mut p, "UnknownIssuer"), Some(TlsNews::Repeated));
        // A broker restarting refuses TCP in between: still the same streak.
        assert_eq!(
            p.on_end(&unopened("refused", false), &NOT_OPENED, 0).tls,
            None
        );
        assert_eq!(tls(&mut p, "UnknownIssuer"), Some(TlsNews::Repeated));
        assert_eq!(
            tls(&mut p, "NotValidForName"),
            Some(TlsNews::New),
            "a new cause"
        );
        assert_eq!(tls(&mut p, "UnknownIssuer"), Some(TlsNews::New), "and back");
        // After the handshake, before CONNACK (TLS 1.3 refusing a client certificate).
        let after_handshake = p.on_end(&lost(None, true, true), &OPENED, 0).tls;
        assert_eq!(after_handshake, Some(TlsNews::Repeated), "the same cause");
        // TLS held on a connection: the next failure is news again.
        p.on_end(&lost(SHORT, false, false), &OPENED, 0);
        assert_eq!(tls(&mut p, "UnknownIssuer"), Some(TlsNews::New));
    }
}
