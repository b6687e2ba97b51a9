//! Logging setup, all of it in this one module: text lines on stderr, one JSON object per
//! line on stderr, or native journald records.
//!
//! Logging starts before the configuration is read (text at `info`, or `RUST_LOG`), so
//! config errors are logged too; [`Logging::configure`] then applies `log.format` and
//! `log.level`, and [`Logging::set_level`] changes the level again on reload.
//!
//! Field names are chosen for the journal: tracing-journald upper-cases them and we give it no
//! prefix, so `command = …` shows as `COMMAND=…` and `journalctl COMMAND=CMD4` works. The
//! fields the daemon uses are `mqtt_topic`, `command`, `session_uuid`, `qos`, `latency_us`,
//! `reconnect_attempt` and `broker`. No record carries a secret: the password only ever
//! lives in `config::Secret`, whose `Debug` is redacted, and no log call names it.

use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

use std::time::Instant;

use tracing_subscriber::fmt;
use tracing_subscriber::prelude::*;
use tracing_subscriber::reload;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::LogFormat;

type Filtered = tracing_subscriber::layer::Layered<reload::Layer<EnvFilter, Registry>, Registry>;
type Output = Box<dyn Layer<Filtered> + Send + Sync>;

/// `demo`: the daemon's phase lines, not the peer's (the transcript shows those) nor the
/// embedded broker's chatter (it also logs our readiness probes as errors).
pub const DEMO_FILTER: &str =
    "info,mqtt_responder::peer::runner=warn,mqtt_responder::protocol::examiner=warn,rumqttd=off";

/// `examine`: only what went wrong.
pub const EXAMINE_FILTER: &str = "warn,rumqttd=error";

/// Handle to adjust the level and the output after startup.
#[derive(Clone)]
pub struct Logging {
    filter: reload::Handle<EnvFilter, Registry>,
    output: reload::Handle<Output, Filtered>,
    env_override: bool,
}

/// What [`Logging::configure`] ended up writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Active {
    /// Text lines on stderr.
    Text,
    /// JSON lines on stderr.
    Json,
    /// Native journald records.
    Journald,
}

/// Installs the global subscriber: readable lines on stderr until [`Logging::configure`].
pub fn init() -> Logging {
    let (filter, env_override) = filter_or_env("info");
    let (filter, filter_handle) = reload::Layer::new(filter);
    let (output, output_handle) = reload::Layer::new(text());
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(output)
        .try_init();
    Logging {
        filter: filter_handle,
        output: output_handle,
        env_override,
    }
}

/// `RUST_LOG` when set (and valid), else `default`; and whether `RUST_LOG` was set.
fn filter_or_env(default: &str) -> (EnvFilter, bool) {
    let env = std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty());
    let filter = EnvFilter::try_new(env.as_deref().unwrap_or(default))
        .or_else(|_| EnvFilter::try_new(default))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    (filter, env.is_some())
}

/// Installs a subscriber for the interactive subcommands: short lines on stderr without
/// timestamps, `filter` unless `RUST_LOG` says otherwise.
pub fn init_console(filter: &str) {
    let (filter, _) = filter_or_env(filter);
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
    let (filter, _) = filter_or_env(filter);
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
    /// Applies `log.format` (once, after the configuration is loaded) and `log.level`.
    /// `auto` means journald when stderr is the journal (`JOURNAL_STREAM` names stderr's
    /// device and inode, as systemd sets it for `StandardError=journal`), text otherwise.
    /// When the journal cannot be reached, text on stderr it is, with a warning.
    pub fn configure(&self, format: LogFormat, level: &str) -> Active {
        let wanted = match format {
            LogFormat::Auto if stderr_is_journal() => Active::Journald,
            LogFormat::Auto | LogFormat::Text => Active::Text,
            LogFormat::Json => Active::Json,
            LogFormat::Journald => Active::Journald,
        };
        let (layer, active, problem) = match wanted {
            Active::Text => (text(), Active::Text, None),
            Active::Json => (json(), Active::Json, None),
            Active::Journald => match journald() {
                Ok(layer) => (layer, Active::Journald, None),
                Err(e) => (text(), Active::Text, Some(e)),
            },
        };
        let _ = self.output.reload(layer);
        self.set_level(level);
        if let Some(e) = problem {
            tracing::warn!("cannot write to the journal ({e}); logging text to stderr instead");
        }
        active
    }

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

fn text() -> Output {
    fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .boxed()
}

fn json() -> Output {
    // Flattened: `{"timestamp":…,"level":"INFO","message":…,"command":"CMD4",…}`.
    fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_writer(std::io::stderr)
        .with_target(false)
        .boxed()
}

fn journald() -> std::io::Result<Output> {
    use tracing_journald::{Priority, PriorityMappings};
    // tracing-journald maps INFO to 5 (notice) by default. Our INFO lines are the normal
    // phase changes an operator expects under `journalctl -p info`, and notice would put
    // them on a par with the unusual; so INFO is 6 (info) and DEBUG/TRACE 7 (debug).
    let mappings = PriorityMappings {
        error: Priority::Error,
        warn: Priority::Warning,
        info: Priority::Informational,
        debug: Priority::Debug,
        trace: Priority::Debug,
    };
    Ok(tracing_journald::layer()?
        .with_field_prefix(None)
        .with_priority_mappings(mappings)
        .with_syslog_identifier("mqtt-responder".to_owned())
        .boxed())
}

/// Whether stderr is the stream systemd connected to the journal: `JOURNAL_STREAM` is
/// `DEVICE:INODE` of that stream, and a redirected stderr (a pipe in a shell under the unit)
/// has another one.
fn stderr_is_journal() -> bool {
    let Some(expected) = std::env::var("JOURNAL_STREAM").ok() else {
        return false;
    };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    let Ok(meta) = std::fs::File::from(fd).metadata() else {
        return false;
    };
    journal_stream_matches(&expected, meta.dev(), meta.ino())
}

fn journal_stream_matches(value: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = value.trim().split_once(':') else {
        return false;
    };
    d.parse::<u64>() == Ok(dev) && i.parse::<u64>() == Ok(ino)
}

#[cfg(test)]
mod tests {
    use super::journal_stream_matches;

    #[test]
    fn journal_stream_is_device_colon_inode() {
        assert!(journal_stream_matches("8:12345", 8, 12345));
        assert!(!journal_stream_matches("8:12345", 8, 12346));
        assert!(!journal_stream_matches("9:12345", 8, 12345));
        assert!(!journal_stream_matches("", 8, 12345));
        assert!(!journal_stream_matches("8-12345", 8, 12345));
    }
}
