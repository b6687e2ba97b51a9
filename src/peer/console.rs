//! What `demo` and `examine` show a person: the conversation as it happens, a live status
//! line, the per-command table, and the same as JSON.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use crate::peer::runner::Outcome;
use crate::protocol::examiner::{CommandReport, Note, Report};

/// Prints each note as one line of the conversation (for `demo`).
pub struct Transcript {
    started: Instant,
}

impl Transcript {
    /// A transcript whose times count from now.
    pub fn new() -> Transcript {
        Transcript::starting_at(Instant::now())
    }

    /// A transcript whose times count from `started`.
    pub fn starting_at(started: Instant) -> Transcript {
        Transcript { started }
    }

    /// Prints `line` with the time since the start.
    pub fn line(&self, who: &str, line: &str) {
        println!(
            "{:>8.3} s  {who:<6} {line}",
            self.started.elapsed().as_secs_f64()
        );
    }

    /// Prints a note from the peer's side.
    pub fn note(&self, note: &Note) {
        let line = match note {
            Note::Login { user_id } => format!("login from {user_id}"),
            Note::Uuid { uuid, topic } => format!("hands out UUID {uuid} on {topic}"),
            Note::Command { command } => format!("sends {command}"),
            Note::Reply {
                command,
                payload,
                latency,
                correct,
            } => format!(
                "{command} answered {payload:?} in {}{}",
                millis(*latency),
                if *correct { "" } else { "  WRONG" }
            ),
            Note::Duplicate { command } => format!("{command} answered AGAIN (duplicate)"),
            Note::Completion => "sends the completion message".to_owned(),
            Note::GaveUp { reason } => format!("gives up: {reason}"),
        };
        self.line("peer", &line);
    }
}

impl Default for Transcript {
    fn default() -> Self {
        Transcript::new()
    }
}

/// A live status line on a terminal; occasional plain lines otherwise (for `examine`).
pub struct Progress {
    terminal: bool,
    devices: usize,
    commands_per_device: usize,
    logins: usize,
    sent: usize,
    answered: usize,
    problems: usize,
    last_draw: Option<Instant>,
    last_milestone: usize,
}

impl Progress {
    /// Progress for `devices` devices with `commands` commands each, on stderr.
    pub fn new(devices: usize, commands: usize) -> Progress {
        Progress {
            terminal: std::io::stderr().is_terminal(),
            devices,
            commands_per_device: commands,
            logins: 0,
            sent: 0,
            answered: 0,
            problems: 0,
            last_draw: None,
            last_milestone: 0,
        }
    }

    /// Takes a note into account and redraws when due.
    pub fn note(&mut self, device: usize, note: &Note) {
        match note {
            Note::Login { user_id } => {
                self.logins += 1;
                self.plain(&format!("device {} logged in as {user_id}", device + 1));
            }
            Note::Command { .. } => self.sent += 1,
            Note::Reply { correct, .. } => {
                self.answered += 1;
                if !correct {
                    self.problems += 1;
                }
            }
            Note::Duplicate { .. } => self.problems += 1,
            Note::GaveUp { reason } => self.plain(&format!("device {}: {reason}", device + 1)),
            Note::Uuid { .. } | Note::Completion => {}
        }
        self.draw();
    }

    /// Clears the status line.
    pub fn finish(&mut self) {
        if self.terminal && self.last_draw.is_some() {
            eprint!("\r\x1b[2K");
            let _ = std::io::stderr().flush();
        }
    }

    fn total(&self) -> usize {
        self.devices * self.commands_per_device
    }

    fn status(&self) -> String {
        format!(
            "logins {}/{}  sent {}/{}  answered {}  problems {}",
            self.logins,
            self.devices,
            self.sent,
            self.total(),
            self.answered,
            self.problems
        )
    }

    fn plain(&mut self, line: &str) {
        if self.terminal {
            eprint!("\r\x1b[2K");
        }
        eprintln!("{line}");
        self.last_draw = None;
    }

    fn draw(&mut self) {
        if self.terminal {
            let due = self
                .last_draw
                .is_none_or(|t| t.elapsed() >= Duration::from_millis(100));
            if due {
                eprint!("\r\x1b[2K{}", self.status());
                let _ = std::io::stderr().flush();
                self.last_draw = Some(Instant::now());
            }
        } else {
            // Plain lines at every tenth of the way, for logs and pipes.
            let total = self.total().max(1);
            let milestone = self.answered * 10 / total;
            if milestone > self.last_milestone {
                self.last_milestone = milestone;
                eprintln!("{}", self.status());
            }
        }
    }
}

/// The per-command table over all devices, then one verdict line per device and overall.
pub fn summary(outcome: &Outcome) -> String {
    let mut out = match merge(&outcome.reports) {
        Some(merged) => format!("{merged}\n"),
        None => String::new(),
    };
    if outcome.reports.len() > 1 {
        for report in &outcome.reports {
            let verdict = if report.passed() { "PASS" } else { "FAIL" };
            out.push_str(&format!(
                "{verdict} {}\n",
                report.user_id.as_deref().unwrap_or("?")
            ));
        }
    }
    if outcome.passed() {
        out.push_str(&format!("PASS: {} device(s)\n", outcome.reports.len()));
    } else {
        out.push_str(&format!("FAIL: {}\n", outcome.problems().join("; ")));
    }
    out
}

/// The outcome as one JSON document.
pub fn json(outcome: &Outcome) -> String {
    let command = |c: &CommandReport| {
        serde_json::json!({
            "command": c.command,
            "sent": c.sent,
            "answered": c.answered,
            "missing": c.missing(),
            "duplicates": c.duplicates,
            "wrong": c.wrong,
            "qos_mismatches": c.qos_mismatches,
            "p50_us": c.p50().map(|d| d.as_micros() as u64),
            "p99_us": c.p99().map(|d| d.as_micros() as u64),
        })
    };
    let devices: Vec<_> = outcome
        .reports
        .iter()
        .map(|r| {
            serde_json::json!({
                "user_id": r.user_id,
                "uuid": r.uuid,
                "qos": r.expected_qos.as_u8(),
                "passed": r.passed(),
                "problems": r.problems(),
                "commands": r.commands.iter().map(command).collect::<Vec<_>>(),
                "total": command(&r.totals()),
            })
        })
        .collect();
    let doc = serde_json::json!({
        "passed": outcome.passed(),
        "problems": outcome.problems(),
        "missing_logins": outcome.missing_logins,
        "timed_out": outcome.timed_out,
        "reconnects": outcome.reconnects,
        "devices": devices,
        "total": merge(&outcome.reports).map(|m| command(&m.totals())),
    });
    format!("{doc:#}")
}

/// All devices' rows folded into one report (per command), for the table.
fn merge(reports: &[Report]) -> Option<Report> {
    let mut merged = reports.first()?.clone();
    for report in &reports[1..] {
        for (row, other) in merged.commands.iter_mut().zip(&report.commands) {
            row.add(other);
        }
        merged.unexpected += report.unexpected;
        merged.late += report.late;
        merged.uncorrelated += report.uncorrelated;
        merged.timed_out |= report.timed_out;
        merged.completion_sent &= report.completion_sent;
        if merged.failure.is_none() {
            merged.failure.clone_from(&report.failure);
        }
    }
    Some(merged)
}

fn millis(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}
