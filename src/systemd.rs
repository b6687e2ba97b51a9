//! systemd's notification protocol (`sd_notify`): readiness, status lines, reload, stop and
//! the watchdog. Every call is a no-op without `NOTIFY_SOCKET`, so the daemon behaves the
//! same outside systemd (ntpd-rs `ntpd/src/notify.rs` does the same).
//!
//! The watchdog is not pinged from a timer task of its own: the daemon's event loop asks
//! [`Notifier::poll_timeout`] for a deadline and sleeps on it in the same `select!` as the
//! socket, so a loop that is stuck stops pinging and systemd restarts the unit.

use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// Status lines are refreshed at most this often while answering (not once per command).
pub const STATUS_REFRESH: Duration = Duration::from_secs(5);

/// Sends notifications to the service manager.
#[derive(Debug)]
pub struct Notifier {
    enabled: bool,
    ready: bool,
    /// Ping interval: half of `WATCHDOG_USEC`, as sd_watchdog_enabled(3) recommends.
    watchdog: Option<Duration>,
    next_ping: Option<Instant>,
    last_status: String,
    last_status_at: Option<Instant>,
    /// A throttled status line waiting for its turn.
    pending: Option<(String, Instant)>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` and `WATCHDOG_USEC`/`WATCHDOG_PID` from the environment.
    pub fn from_env(now: Instant) -> Notifier {
        let enabled = std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty());
        let watchdog = sd_notify::watchdog_enabled()
            .filter(|d| !d.is_zero() && enabled)
            .map(|d| d / 2);
        Notifier {
            enabled,
            ready: false,
            watchdog,
            next_ping: watchdog.map(|d| now + d),
            last_status: String::new(),
            last_status_at: None,
            pending: None,
        }
    }

    /// READY=1, once: the daemon is connected, subscribed and logged in.
    pub fn ready(&mut self) {
        if !self.ready {
            self.ready = true;
            self.send(&[NotifyState::Ready]);
        }
    }

    /// STATUS=… now (a phase change), unless it is the line sent last.
    pub fn status(&mut self, line: &str, now: Instant) {
        self.pending = None;
        if line != self.last_status {
            self.last_status = line.to_owned();
            self.last_status_at = Some(now);
            self.send(&[NotifyState::Status(line)]);
        }
    }

    /// STATUS=… for a counter that changes often: sent at most every [`STATUS_REFRESH`];
    /// a newer line replaces one still waiting.
    pub fn status_throttled(&mut self, line: &str, now: Instant) {
        if line == self.last_status {
            self.pending = None;
            return;
        }
        match self.last_status_at {
            Some(at) if now < at + STATUS_REFRESH => {
                self.pending = Some((line.to_owned(), at + STATUS_REFRESH));
            }
            _ => self.status(line, now),
        }
    }

    /// RELOADING=1 with MONOTONIC_USEC (what systemd ≥ 253 expects for a reload).
    pub fn reloading(&mut self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now]),
            Err(_) => self.send(&[NotifyState::Reloading]),
        }
    }

    /// READY=1 after a reload (only when it was ready before).
    pub fn reloaded(&mut self) {
        if self.ready {
            self.send(&[NotifyState::Ready]);
        }
    }

    /// STOPPING=1 with a status line.
    pub fn stopping(&mut self, line: &str) {
        self.pending = None;
        self.last_status = line.to_owned();
        self.send(&[NotifyState::Stopping, NotifyState::Status(line)]);
    }

    /// The next WATCHDOG=1 or throttled status line, whichever is due first.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.next_ping, self.pending.as_ref().map(|(_, due)| *due)]
            .into_iter()
            .flatten()
            .min()
    }

    /// Sends WATCHDOG=1 and the waiting status line if they are due.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let (Some(due), Some(interval)) = (self.next_ping, self.watchdog)
            && now >= due
        {
            self.send(&[NotifyState::Watchdog]);
            self.next_ping = Some(now + interval);
        }
        if let Some((line, due)) = self.pending.take() {
            if now >= due {
                self.status(&line, now);
            } else {
                self.pending = Some((line, due));
            }
        }
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if !self.enabled {
            return;
        }
        if let Err(e) = sd_notify::notify(states) {
            // Not fatal: the unit may fail for it (the watchdog), but the daemon goes on.
            tracing::debug!("sd_notify failed: {e}");
        }
    }
}
