//! Logging setup, in one place so the output can be swapped (journald comes later).
//!
//! Logging starts before the configuration is read (at `info`, or `RUST_LOG`), so config
//! errors are logged too; [`Logging::set_level`] applies `log.level` afterwards.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt;
use tracing_subscriber::prelude::*;
use tracing_subscriber::reload;

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
