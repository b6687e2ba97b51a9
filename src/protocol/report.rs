//! The outcome of an examination: per command of the table, what was sent and answered
//! (missing, duplicated, wrong payload, wrong QoS) and the round-trip latencies; the run's
//! other findings; and the verdict, printed as the table `examine` and `demo` show.

use std::fmt;
use std::time::Duration;

use crate::vocabulary::QoS;

/// The outcome of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The UUID handed out.
    pub uuid: String,
    /// The user served, once a login arrived.
    pub user_id: Option<String>,
    /// The QoS replies had to arrive at.
    pub expected_qos: QoS,
    /// One row per command of the table, in table order.
    pub commands: Vec<CommandReport>,
    /// Messages on subscribed topics that are not replies (or a login's topic).
    pub unexpected: u64,
    /// Replies that arrived after the run was over.
    pub late: u64,
    /// Request/response mode: responses whose Correlation Data is missing or matches no
    /// command sent.
    pub uncorrelated: u64,
    /// The run ended because no reply came within `reply_timeout`.
    pub timed_out: bool,
    /// The completion message was published.
    pub completion_sent: bool,
    /// Why the run was abandoned early (a refused subscription, an unusable topic).
    pub failure: Option<String>,
    /// Times the examiner's own connection was lost (it resumes its session each time).
    pub connection_losses: u64,
}

/// Results for one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandReport {
    /// The command.
    pub command: String,
    /// Times it was sent.
    pub sent: u64,
    /// Replies matched to a send (right or wrong).
    pub answered: u64,
    /// Replies with no send outstanding.
    pub duplicates: u64,
    /// Answered with a payload other than the table's.
    pub wrong: u64,
    /// Answered at a QoS other than the expected one.
    pub qos_mismatches: u64,
    /// Send-to-reply time of each answered send, in arrival order.
    pub latencies: Vec<Duration>,
}

impl CommandReport {
    pub(super) fn new(command: &str) -> CommandReport {
        CommandReport {
            command: command.to_owned(),
            sent: 0,
            answered: 0,
            duplicates: 0,
            wrong: 0,
            qos_mismatches: 0,
            latencies: Vec::new(),
        }
    }

    /// Sends without a reply.
    pub fn missing(&self) -> u64 {
        self.sent.saturating_sub(self.answered)
    }

    /// The latency below which a fraction `q` (0.0..=1.0) of replies arrived (nearest rank).
    pub fn percentile(&self, q: f64) -> Option<Duration> {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        let last = sorted.len().checked_sub(1)?;
        let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
        sorted.get(rank.saturating_sub(1).min(last)).copied()
    }

    /// Median latency.
    pub fn p50(&self) -> Option<Duration> {
        self.percentile(0.5)
    }

    /// 99th-percentile latency.
    pub fn p99(&self) -> Option<Duration> {
        self.percentile(0.99)
    }

    /// Adds `other`'s counts and latencies to this row.
    pub fn add(&mut self, other: &CommandReport) {
        self.sent += other.sent;
        self.answered += other.answered;
        self.duplicates += other.duplicates;
        self.wrong += other.wrong;
        self.qos_mismatches += other.qos_mismatches;
        self.latencies.extend_from_slice(&other.latencies);
    }
}

impl Report {
    /// All commands together, in a row named `total`.
    pub fn totals(&self) -> CommandReport {
        let mut total = CommandReport::new("total");
        for row in &self.commands {
            total.add(row);
        }
        total
    }

    /// Whether the responder did its job: every command answered once, correctly, at the
    /// expected QoS, and the completion message sent.
    pub fn passed(&self) -> bool {
        let total = self.totals();
        total.missing() == 0
            && total.duplicates == 0
            && total.wrong == 0
            && total.qos_mismatches == 0
            && self.uncorrelated == 0
            && self.completion_sent
            && self.failure.is_none()
    }

    /// What went wrong, one phrase per problem (empty when passed).
    pub fn problems(&self) -> Vec<String> {
        let total = self.totals();
        let mut problems = Vec::new();
        if let Some(failure) = &self.failure {
            problems.push(failure.clone());
        }
        for (count, what) in [
            (total.missing(), "missing"),
            (total.duplicates, "duplicate"),
            (total.wrong, "wrong"),
            (total.qos_mismatches, "at the wrong QoS"),
            (self.uncorrelated, "uncorrelated"),
        ] {
            if count > 0 {
                problems.push(format!("{count} {what}"));
            }
        }
        if self.timed_out {
            problems.push("timed out".to_owned());
        }
        if !self.completion_sent {
            problems.push("completion not sent".to_owned());
        }
        problems
    }
}

impl fmt::Display for Report {
    /// A table with one row per command and a total, then `PASS` or `FAIL: …`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self
            .commands
            .iter()
            .map(|c| c.command.chars().count())
            .max()
            .unwrap_or(0)
            .max("command".len());
        writeln!(
            f,
            "{:<width$} {:>7} {:>8} {:>7} {:>5} {:>5} {:>5} {:>10} {:>10}",
            "command", "sent", "answered", "missing", "dup", "wrong", "qos", "p50 ms", "p99 ms"
        )?;
        let total = self.totals();
        for row in self.commands.iter().chain(std::iter::once(&total)) {
            let ms = |d: Option<Duration>| {
                d.map_or_else(
                    || "-".to_owned(),
                    |d| format!("{:.3}", d.as_secs_f64() * 1e3),
                )
            };
            writeln!(
                f,
                "{:<width$} {:>7} {:>8} {:>7} {:>5} {:>5} {:>5} {:>10} {:>10}",
                row.command,
                row.sent,
                row.answered,
                row.missing(),
                row.duplicates,
                row.wrong,
                row.qos_mismatches,
                ms(row.p50()),
                ms(row.p99()),
            )?;
        }
        if self.unexpected > 0 || self.late > 0 {
            writeln!(
                f,
                "unexpected messages: {}, late replies: {}",
                self.unexpected, self.late
            )?;
        }
        if self.uncorrelated > 0 {
            writeln!(
                f,
                "responses with unknown or missing correlation data: {}",
                self.uncorrelated
            )?;
        }
        if self.connection_losses > 0 {
            writeln!(
                f,
                "examiner connection lost {} times (resumed)",
                self.connection_losses
            )?;
        }
        if self.passed() {
            write!(f, "PASS (uuid {}, qos {})", self.uuid, self.expected_qos)
        } else {
            write!(f, "FAIL: {}", self.problems().join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let mut row = CommandReport::new("x");
        assert_eq!(row.p50(), None);
        row.latencies = (1..=100).rev().map(Duration::from_millis).collect();
        assert_eq!(row.p50(), Some(Duration::from_millis(50)));
        assert_eq!(row.p99(), Some(Duration::from_millis(99)));
        assert_eq!(row.percentile(1.0), Some(Duration::from_millis(100)));
        assert_eq!(row.percentile(0.0), Some(Duration::from_millis(1)));
    }
}
