//! The validated configuration: the typed values the rest of the daemon uses, one struct per
//! section of SPEC §3. Nothing here parses or checks anything: a [`Config`] comes from
//! [`load`](super::load) or [`from_toml`](super::from_toml), which fill in the raw schema's
//! defaults and validate every key on the way in. The one default kept here is the seed
//! reply table, [`ReplyTable::seed`].

use std::path::PathBuf;
use std::time::Duration;

use crate::mqtt::session::SessionConfig;
use crate::protocol::examiner::ExaminerSettings;
use crate::protocol::responder::ResponderSettings;
pub use crate::protocol::{ReplyTable, UnknownCommand};
use crate::topic::Template;
use crate::vocabulary::{Protocol, Secret};

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
    /// What the responder needs: the user ID, the topics, the completion message, the QoS,
    /// the login and drain timeouts, the payload limit, what to do with unknown commands.
    pub responder: ResponderSettings,
    /// Retained presence topic (`{user_id}` allowed); `None` when `""`.
    pub status_topic: Option<Template>,
    /// Presence refresh interval.
    pub status_interval: Duration,
    /// Crash-resume state directory; `None`: no state kept.
    pub state_dir: Option<PathBuf>,
}

impl Broker {
    /// The session settings for logging in to this broker: its protocol, client id,
    /// credentials, keep-alive and in-flight cap, and a clean first start; the one mapping
    /// from broker settings to a session, for the daemon and the examiner alike. What else a
    /// session needs is the caller's to set (struct update syntax): as given here it is a
    /// plain client's, with acknowledgements on arrival, no Will, no broker-side session
    /// after a disconnect and packets of up to 1 MiB.
    pub fn session_config(&self) -> SessionConfig {
        SessionConfig {
            protocol: self.protocol,
            client_id: self.client_id.clone(),
            username: self.username.clone(),
            password: self.password.clone(),
            keep_alive: self.keep_alive,
            max_inflight: self.max_inflight,
            max_incoming_packet: 1 << 20,
            session_expiry: 0,
            will: None,
            manual_acks: false,
            clean_first: true,
            record_changes: false,
        }
    }
}

impl Config {
    /// Settings for an examiner that mirrors this responder (topics, completion message,
    /// QoS, reply table, user ID); the rest as the examiner's defaults.
    pub fn examiner_settings(&self) -> ExaminerSettings {
        ExaminerSettings::mirroring(&self.session.responder, &self.replies)
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
