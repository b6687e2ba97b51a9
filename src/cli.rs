//! The command line (SPEC §4).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Headless MQTT command-responder daemon.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
pub struct Cli {
    /// Configuration file [default: $MQTT_RESPONDER_CONFIG or /etc/mqtt-responder/config.toml].
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// What to do (default: run).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (the default).
    Run,
    /// Validate the configuration and print it with secrets redacted; exit 0 or 78.
    CheckConfig,
}
