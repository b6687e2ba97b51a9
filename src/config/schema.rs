//! The validated configuration: the typed values the rest of the daemon uses, one struct per
//! section of SPEC §3. Nothing here parses or checks anything: a [`Config`] comes from
//! [`load`](super::load) or [`from_toml`](super::from_toml), which fill in the raw schema's
//! defaults and validate every key on the way in. The one default kept here is the seed
//! reply table, [`ReplyTable::seed`].

use std::path::PathBuf;
use std::time::Duration;

use crate::protocol::examiner::ExaminerSettings;
use crate::protocol::responder::ResponderSettings;
pub use crate::protocol::{ReplyTable, UnknownCommand};
use crate::topic::Template;
use crate::vocabulary::{Protocol, QoS, Secret};

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from (named in every error and warning).
    pub source: PathBuf,
    /// `[broker]`.
    pub broker: Broker,
    /// `[session]`.
    pub session: Session,
    /// `[replies]`: command → reply, in file order.
    pub replies: ReplyTable,
    /// `[reconnect]`.
    pub reconnect: Reconnect,
    /// `[log]`.
    pub log: Log,
}

/// `[broker]`, validated.
#[derive(Debug, Clone)]
pub struct Broker {
    /// Host name or address.
    pub host: String,
    /// TCP port (1883, or 8883 with TLS, unless set).
    pub port: u16,
    /// MQTT version.
    pub protocol: Protocol,
    /// Client identifier, `mqtt-responder-{user_id}` when the file leaves it empty.
    pub client_id: String,
    /// User name, if any.
    pub username: Option<String>,
    /// Password from `password` or `password_file`, if any.
    pub password: Option<Secret>,
    /// MQTT keep-alive interval.
    pub keep_alive: Duration,
    /// Bound on TCP connect + TLS handshake + CONNACK.
    pub connect_timeout: Duration,
    /// At most this many QoS 1/2 replies unacknowledged at once (1..=65535).
    pub max_inflight: u16,
    /// `[broker.tls]`: present means connect over TLS.
    pub tls: Option<Tls>,
}

/// `[broker.tls]`, validated (files exist and are readable at load time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    /// CA bundle (PEM); `None`: the system trust store.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub client_auth: Option<ClientAuth>,
}

/// A client certificate chain and its private key, both PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAuth {
    /// Certificate chain file.
    pub cert_file: PathBuf,
    /// Private key file.
    pub key_file: PathBuf,
}

/// `[session]`, validated.
#[derive(Debug, Clone)]
pub struct Session {
    /// The user ID the daemon logs in with (a valid single topic level).
    pub user_id: String,
    /// Where the login is published (`{user_id}` allowed).
    pub login_topic: Template,
    /// Where the UUID arrives (`{user_id}` allowed).
    pub uuid_topic: Template,
    /// Where commands arrive (`{user_id}`, `{uuid}` allowed).
    pub command_topic: Template,
    /// Where replies go (`{user_id}`, `{uuid}`, `{command}` allowed).
    pub reply_topic: Template,
    /// The payload that ends the run.
    pub completion_message: String,
    /// Requested QoS for subscriptions and replies.
    pub qos: QoS,
    /// No UUID within this long after the login → log in again.
    pub login_timeout: Duration,
    /// Bound on waiting for in-flight acknowledgements before DISCONNECT.
    pub drain_timeout: Duration,
    /// Payloads longer than this are dropped (exactly this long is accepted).
    pub max_payload_bytes: usize,
    /// What to do with a command that is not in the reply table.
    pub unknown_command: UnknownCommand,
    /// Retained presence topic (`{user_id}` allowed); `None` when `""`.
    pub status_topic: Option<Template>,
    /// Presence refresh interval.
    pub status_interval: Duration,
    /// Crash-resume state directory; `None`: no state kept.
    pub state_dir: Option<PathBuf>,
}

impl Session {
    /// What the responder needs of `[session]`.
    pub fn responder_settings(&self) -> ResponderSettings {
        ResponderSettings {
            user_id: self.user_id.clone(),
            login_topic: self.login_topic.clone(),
            uuid_topic: self.uuid_topic.clone(),
            command_topic: self.command_topic.clone(),
            reply_topic: self.reply_topic.clone(),
            completion_message: self.completion_message.clone(),
            qos: self.qos,
            login_timeout: self.login_timeout,
            drain_timeout: self.drain_timeout,
            max_payload_bytes: self.max_payload_bytes,
            unknown_command: self.unknown_command.clone(),
        }
    }
}

impl Config {
    /// Settings for an examiner that mirrors this responder (topics, completion message,
    /// QoS, reply table, user ID); the rest as the examiner's defaults.
    pub fn examiner_settings(&self) -> ExaminerSettings {
        ExaminerSettings::mirroring(&self.session.responder_settings(), &self.replies)
    }
}

/// `[reconnect]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reconnect {
    /// First backoff ceiling.
    pub initial_delay: Duration,
    /// Largest backoff ceiling.
    pub max_delay: Duration,
    /// Failed attempts in a row before giving up (exit 69); `None`: forever.
    pub max_attempts: Option<u32>,
}

/// `[log]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Log {
    /// A tracing filter directive such as `info` (RUST_LOG overrides it).
    pub level: String,
    /// Output format.
    pub format: LogFormat,
}

/// `log.format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// journald when stderr is the journal, text otherwise.
    Auto,
    /// Native journald records.
    Journald,
    /// Human-readable lines on stderr.
    Text,
    /// One JSON object per line on stderr.
    Json,
}

impl LogFormat {
    /// The value as written in `log.format`.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Auto => "auto",
            LogFormat::Journald => "journald",
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}
