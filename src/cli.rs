//! The command line (SPEC §4).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::vocabulary::{Protocol, QoS};

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
    /// The whole exchange on this machine: embedded broker, peer and daemon.
    Demo(DemoArgs),
    /// The peer side of the protocol against any broker, to test a deployed device.
    Examine(Box<ExamineArgs>),
}

/// MQTT version on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProtocolArg {
    /// MQTT 3.1.1.
    #[value(name = "3.1.1")]
    V311,
    /// MQTT 5.
    #[value(name = "5")]
    V5,
}

impl From<ProtocolArg> for Protocol {
    fn from(arg: ProtocolArg) -> Protocol {
        match arg {
            ProtocolArg::V311 => Protocol::V311,
            ProtocolArg::V5 => Protocol::V5,
        }
    }
}

/// `demo` options.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Commands the peer sends.
    #[arg(long, default_value_t = 12)]
    pub commands: usize,
    /// QoS on both sides (0, 1 or 2).
    #[arg(long, default_value_t = QoS::ExactlyOnce, value_parser = parse_qos)]
    pub qos: QoS,
    /// Pause between handing out the UUID and the first command, in ms.
    #[arg(long, default_value_t = 500)]
    pub delay_ms: u64,
    /// MQTT version.
    #[arg(long, value_enum, default_value = "3.1.1")]
    pub protocol: ProtocolArg,
}

/// `examine` options.
#[derive(Debug, Args)]
pub struct ExamineArgs {
    /// Broker host.
    #[arg(long, default_value = "localhost")]
    pub host: String,
    /// Broker port [default: 1883, 8883 with --tls].
    #[arg(long)]
    pub port: Option<u16>,
    /// User name.
    #[arg(long)]
    pub username: Option<String>,
    /// File holding the password (one trailing newline is stripped).
    #[arg(long, value_name = "PATH", conflicts_with = "password")]
    pub password_file: Option<PathBuf>,
    /// The password itself. Visible to other users in `ps`: prefer --password-file.
    #[arg(long)]
    pub password: Option<String>,
    /// Connect over TLS (system trust store unless --ca-file).
    #[arg(long)]
    pub tls: bool,
    /// CA bundle (PEM) to trust; implies --tls.
    #[arg(long, value_name = "PATH")]
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM) for mutual TLS, with --key-file; implies --tls.
    #[arg(long, value_name = "PATH", requires = "key_file")]
    pub cert_file: Option<PathBuf>,
    /// Private key (PEM) of --cert-file.
    #[arg(long, value_name = "PATH", requires = "cert_file")]
    pub key_file: Option<PathBuf>,
    /// MQTT version.
    #[arg(long, value_enum, default_value = "3.1.1")]
    pub protocol: ProtocolArg,
    /// QoS of subscriptions and commands; replies must arrive at it (0, 1 or 2).
    #[arg(long, default_value_t = QoS::ExactlyOnce, value_parser = parse_qos)]
    pub qos: QoS,
    /// Commands to send to each device.
    #[arg(long, default_value_t = 20)]
    pub commands: usize,
    /// Pause between handing out the UUID and the first command, in ms.
    #[arg(long, default_value_t = 3000)]
    pub delay_ms: u64,
    /// Give up after this many seconds, reporting what is missing.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// Devices to examine: wait for this many logins (each gets its own UUID).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub logins: u64,
    /// Only serve this user ID (default: whoever logs in).
    #[arg(long)]
    pub user_id: Option<String>,
    /// Commands without a reply at once, per device.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=65_535))]
    pub window: u64,
    /// Login topic (`{user_id}` needs --user-id).
    #[arg(long, default_value = "login")]
    pub login_topic: String,
    /// Where the UUID is published.
    #[arg(long, default_value = "{user_id}/UUID")]
    pub uuid_topic: String,
    /// Where commands go.
    #[arg(long, default_value = "{uuid}")]
    pub command_topic: String,
    /// Where replies are expected.
    #[arg(long, default_value = "{uuid}/{command}")]
    pub reply_topic: String,
    /// The message that ends a device's run.
    #[arg(long, default_value = "Well done my IoT!")]
    pub completion_message: String,
    /// MQTT 5 request/response: send each command with this Response Topic (`{user_id}`,
    /// `{uuid}` allowed) and its own Correlation Data, and expect the responses there.
    #[arg(long, value_name = "TEMPLATE")]
    pub response_topic: Option<String>,
    /// Expected reply table entry COMMAND=REPLY (repeat; replaces the default table).
    #[arg(long = "reply", value_name = "COMMAND=REPLY")]
    pub replies: Vec<String>,
    /// Seed for the random commands and UUIDs [default: random].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Client identifier [default: mqtt-responder-examiner-RANDOM].
    #[arg(long)]
    pub client_id: Option<String>,
    /// Print the result as one JSON document on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `--qos`: 0, 1 or 2.
fn parse_qos(text: &str) -> Result<QoS, String> {
    text.parse::<u8>()
        .ok()
        .and_then(|n| QoS::try_from(n).ok())
        .ok_or_else(|| format!("{text:?} is not a QoS: expected 0, 1 or 2"))
}
