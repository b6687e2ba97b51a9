//! Logging setup, in one place so the output can be swapped (journald comes later).
//!
//! Logging starts before the configuration is read (at `info`, or `RUST_LOG`), so config
//! errors are logged too; [`Logging::set_level`] applies `log.level` afterwards.

use std::time::Instant;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt;
use tracing_subscriber::prelude::*;
use tracing_subscriber::reload;

/// `demo`: the daemon's phase lines, not the peer's (the transcript shows those) nor the
/// embedded broker's chatter (it also logs our readiness probes as errors).
pub const DEMO_FILTER: &str =
    "info,mqtt_responder::examine=warn,mqtt_responder::protocol::examiner=warn,rumqttd=off";

/// `examine`: only what went wrong.
pub const EXAMINE_FILTER: &str = "warn,rumqttd=error";

/// Handle to adjust the level after startup.
pub struct Logging {
    filter: reload::Handle<EnvFilter, tracing_subscriber::Registry>,
    env_override: bool,
}

/// Installs the global subscriber: readable lines on stderr.
pub fn init() -> Logging {
    let env = std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty());
    let filter = EnvFilter::try_new(env.as_deref().unwrap_or("info"))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt::layer().with_writer(std::io::stderr).with_target(false))
        .try_init();
    Logging {
        filter: handle,
        env_override: env.is_some(),
    }
}

/// Installs a subscriber for the interactive subcommands: short lines on stderr without
/// timestamps, `filter` unless `RUST_LOG` says otherwise.
pub fn init_console(filter: &str) {
    let env = std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty());
    let filter = EnvFilter::try_new(env.as_deref().unwrap_or(filter))
        .unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(
            fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(false)
                .without_time(),
        )
        .try_init();
}

/// Installs a subscriber for `demo` that prints the daemon's records as transcript lines on
/// stdout (`  0.123 s  daemon  connected …`), with times counted from `started`.
pub fn init_transcript(filter: &str, started: Instant) {
    let env = std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty());
    let filter = EnvFilter::try_new(env.as_deref().unwrap_or(filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(
            fmt::layer()
                .with_writer(std::io::stdout)
                .with_ansi(false)
                .event_format(TranscriptFormat { started }),
        )
        .try_init();
}

/// One transcript line per record: time, `daemon`, the level when it is not INFO, the
/// message and its fields.
struct TranscriptFormat {
    started: Instant,
}

impl<S, N> fmt::FormatEvent<S, N> for TranscriptFormat
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &fmt::FmtContext<'_, S, N>,
        mut writer: fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        write!(
            writer,
            "{:>8.3} s  {:<6} ",
            self.started.elapsed().as_secs_f64(),
            "daemon"
        )?;
        let level = *event.metadata().level();
        if level != tracing::Level::INFO {
            write!(writer, "{level}: ")?;
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

impl Logging {
    /// Applies `log.level` unless `RUST_LOG` was set (it overrides the file).
    pub fn set_level(&self, level: &str) {
        if self.env_override {
            return;
        }
        if let Ok(filter) = EnvFilter::try_new(level) {
            let _ = self.filter.reload(filter);
        }
    }
}
