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
    /// When a throttled status line that had to wait is due (the caller renders it then).
    refresh_due: Option<Instant>,
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
            refresh_due: None,
        }
    }

    /// READY=1, once: the daemon is connected, subscribed and logged in, or its first
    /// connection attempt failed (a broker down at boot must not fail the unit's start).
    pub fn ready(&mut self) {
        if !self.ready {
            self.ready = true;
            self.send(&[NotifyState::Ready]);
        }
    }

    /// STATUS=… now (a phase change), unless it is the line sent last.
    pub fn status(&mut self, line: &str, now: Instant) {
        self.refresh_due = None;
        if self.enabled && line != self.last_status {
            self.last_status = line.to_owned();
            self.last_status_at = Some(now);
            self.send(&[NotifyState::Status(line)]);
        }
    }

    /// STATUS=… for a counter that changes often: sent at most every [`STATUS_REFRESH`].
    /// `line` is only rendered when it will be sent (not on every command); when it has to
    /// wait, [`Notifier::poll_timeout`] includes the moment, and the caller asks again then.
    pub fn status_throttled(&mut self, now: Instant, line: impl FnOnce() -> String) {
        if !self.enabled {
            return;
        }
        match self.last_status_at {
            Some(at) if now < at + STATUS_REFRESH => self.refresh_due = Some(at + STATUS_REFRESH),
            _ => self.status(&line(), now),
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
        self.refresh_due = None;
        self.last_status = line.to_owned();
        self.send(&[NotifyState::Stopping, NotifyState::Status(line)]);
    }

    /// The next WATCHDOG=1 or throttled status line, whichever is due first.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.next_ping, self.refresh_due]
            .into_iter()
            .flatten()
            .min()
    }

    /// Sends WATCHDOG=1 if it is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let (Some(due), Some(interval)) = (self.next_ping, self.watchdog)
            && now >= due
        {
            self.send(&[NotifyState::Watchdog]);
            self.next_ping = Some(now + interval);
        }
        // A waiting status line is rendered by the caller, who asks again after this.
        if self.refresh_due.is_some_and(|due| now >= due) {
            self.refresh_due = None;
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
