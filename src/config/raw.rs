//! The raw schema: what serde reads from file + environment, before validation. Numbers are
//! `i64` so that a negative or oversized value gets our message naming the key and the
//! range, not a conversion error; defaults are SPEC §3's.

use serde::Deserialize;
use serde::de::IgnoredAny;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) broker: RawBroker,
    #[serde(default)]
    pub(super) session: RawSession,
    /// Read from the file directly (`reply_table`): the `config` crate forgets the order.
    #[serde(default, rename = "replies")]
    pub(super) _replies: Option<IgnoredAny>,
    #[serde(default)]
    pub(super) reconnect: RawReconnect,
    #[serde(default)]
    pub(super) log: RawLog,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawBroker {
    #[serde(default = "default_host")]
    pub(super) host: String,
    /// `None`: 1883, or 8883 with TLS.
    #[serde(default)]
    pub(super) port: Option<i64>,
    #[serde(default = "default_protocol")]
    pub(super) protocol: String,
    #[serde(default)]
    pub(super) client_id: String,
    #[serde(default)]
    pub(super) username: String,
    #[serde(default)]
    pub(super) password: String,
    #[serde(default)]
    pub(super) password_file: String,
    #[serde(default = "default_keep_alive_secs")]
    pub(super) keep_alive_secs: i64,
    #[serde(default = "default_connect_timeout_secs")]
    pub(super) connect_timeout_secs: i64,
    #[serde(default = "default_max_inflight")]
    pub(super) max_inflight: i64,
    #[serde(default)]
    pub(super) tls: Option<RawTls>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawTls {
    #[serde(default)]
    pub(super) ca_file: String,
    #[serde(default)]
    pub(super) client_cert_file: String,
    #[serde(default)]
    pub(super) client_key_file: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawSession {
    /// Required; `None` is reported by `validate`, with an example.
    #[serde(default)]
    pub(super) user_id: Option<String>,
    #[serde(default = "default_login_topic")]
    pub(super) login_topic: String,
    #[serde(default = "default_uuid_topic")]
    pub(super) uuid_topic: String,
    #[serde(default = "default_command_topic")]
    pub(super) command_topic: String,
    #[serde(default = "default_reply_topic")]
    pub(super) reply_topic: String,
    #[serde(default = "default_completion_message")]
    pub(super) completion_message: String,
    #[serde(default = "default_qos")]
    pub(super) qos: i64,
    #[serde(default = "default_login_timeout_secs")]
    pub(super) login_timeout_secs: i64,
    #[serde(default = "default_drain_timeout_secs")]
    pub(super) drain_timeout_secs: i64,
    #[serde(default = "default_max_payload_bytes")]
    pub(super) max_payload_bytes: i64,
    #[serde(default = "default_max_pending")]
    pub(super) max_pending: i64,
    #[serde(default = "default_unknown_command")]
    pub(super) unknown_command: String,
    #[serde(default = "default_unknown_reply")]
    pub(super) unknown_reply: String,
    #[serde(default = "default_status_topic")]
    pub(super) status_topic: String,
    #[serde(default = "default_status_interval_secs")]
    pub(super) status_interval_secs: i64,
    #[serde(default)]
    pub(super) state_dir: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawReconnect {
    #[serde(default = "default_initial_delay_ms")]
    pub(super) initial_delay_ms: i64,
    #[serde(default = "default_max_delay_secs")]
    pub(super) max_delay_secs: i64,
    #[serde(default)]
    pub(super) max_attempts: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawLog {
    #[serde(default = "default_log_level")]
    pub(super) level: String,
    #[serde(default = "default_log_format")]
    pub(super) format: String,
}

// A missing section means all its defaults: `Default` goes through the same named defaults.

impl Default for RawBroker {
    fn default() -> Self {
        RawBroker {
            host: default_host(),
            port: None,
            protocol: default_protocol(),
            client_id: String::new(),
            username: String::new(),
            password: String::new(),
            password_file: String::new(),
            keep_alive_secs: default_keep_alive_secs(),
            connect_timeout_secs: default_connect_timeout_secs(),
            max_inflight: default_max_inflight(),
            tls: None,
        }
    }
}

impl Default for RawSession {
    fn default() -> Self {
        RawSession {
            user_id: None,
            login_topic: default_login_topic(),
            uuid_topic: default_uuid_topic(),
            command_topic: default_command_topic(),
            reply_topic: default_reply_topic(),
            completion_message: default_completion_message(),
            qos: default_qos(),
            login_timeout_secs: default_login_timeout_secs(),
            drain_timeout_secs: default_drain_timeout_secs(),
            max_payload_bytes: default_max_payload_bytes(),
            max_pending: default_max_pending(),
            unknown_command: default_unknown_command(),
            unknown_reply: default_unknown_reply(),
            status_topic: default_status_topic(),
            status_interval_secs: default_status_interval_secs(),
            state_dir: String::new(),
        }
    }
}

impl Default for RawReconnect {
    fn default() -> Self {
        RawReconnect {
            initial_delay_ms: default_initial_delay_ms(),
            max_delay_secs: default_max_delay_secs(),
            max_attempts: 0,
        }
    }
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            level: default_log_level(),
            format: default_log_format(),
        }
    }
}

fn default_host() -> String {
    "localhost".to_owned()
}
fn default_protocol() -> String {
    "3.1.1".to_owned()
}
fn default_keep_alive_secs() -> i64 {
    30
}
fn default_connect_timeout_secs() -> i64 {
    10
}
/// mosquitto's default `max_inflight_messages`.
fn default_max_inflight() -> i64 {
    20
}
fn default_login_topic() -> String {
    "login".to_owned()
}
fn default_uuid_topic() -> String {
    "{user_id}/UUID".to_owned()
}
fn default_command_topic() -> String {
    "{uuid}".to_owned()
}
fn default_reply_topic() -> String {
    "{uuid}/{command}".to_owned()
}
fn default_completion_message() -> String {
    "Well done my IoT!".to_owned()
}
fn default_qos() -> i64 {
    2
}
fn default_login_timeout_secs() -> i64 {
    30
}
fn default_drain_timeout_secs() -> i64 {
    5
}
fn default_max_payload_bytes() -> i64 {
    65536
}
fn default_max_pending() -> i64 {
    1000
}
fn default_unknown_command() -> String {
    "ignore".to_owned()
}
fn default_unknown_reply() -> String {
    "UNKNOWN".to_owned()
}
fn default_status_topic() -> String {
    "{user_id}/status".to_owned()
}
fn default_status_interval_secs() -> i64 {
    60
}
fn default_initial_delay_ms() -> i64 {
    500
}
fn default_max_delay_secs() -> i64 {
    60
}
fn default_log_level() -> String {
    "info".to_owned()
}
fn default_log_format() -> String {
    "auto".to_owned()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::testing::*;
    use crate::config::{Log, LogFormat, Reconnect, ReplyTable, UnknownCommand};
    use crate::topic::Template;
    use crate::vocabulary::{Protocol, QoS};

    #[test]
    fn defaults_are_those_of_the_spec() {
        let c = ok(USER);
        let b = &c.broker;
        assert_eq!(b.host, "localhost");
        assert_eq!(b.port, 1883);
        assert_eq!(b.protocol, Protocol::V311);
        assert_eq!(b.client_id, "mqtt-responder-2547841");
        assert_eq!(b.username, None);
        assert_eq!(b.password, None);
        assert_eq!(b.keep_alive, Duration::from_secs(30));
        assert_eq!(b.connect_timeout, Duration::from_secs(10));
        assert_eq!(b.max_inflight, 20);
        assert_eq!(b.tls, None);
        let s = &c.session;
        assert_eq!(s.responder.user_id, "2547841");
        assert_eq!(s.responder.login_topic.as_str(), "login");
        assert_eq!(s.responder.uuid_topic.as_str(), "{user_id}/UUID");
        assert_eq!(s.responder.command_topic.as_str(), "{uuid}");
        assert_eq!(s.responder.reply_topic.as_str(), "{uuid}/{command}");
        assert_eq!(s.responder.completion_message, "Well done my IoT!");
        assert_eq!(s.responder.qos, QoS::ExactlyOnce);
        assert_eq!(s.responder.login_timeout, Duration::from_secs(30));
        assert_eq!(s.responder.drain_timeout, Duration::from_secs(5));
        assert_eq!(s.responder.max_payload_bytes, 65536);
        assert_eq!(s.responder.max_pending, 1000);
        assert_eq!(s.responder.unknown_command, UnknownCommand::Ignore);
        assert_eq!(
            s.status_topic.as_ref().map(Template::as_str),
            Some("{user_id}/status")
        );
        assert_eq!(s.status_interval, Duration::from_secs(60));
        assert_eq!(s.state_dir, None);
        assert_eq!(c.replies, ReplyTable::seed());
        assert_eq!(
            c.reconnect,
            Reconnect {
                initial_delay: Duration::from_millis(500),
                max_delay: Duration::from_secs(60),
                max_attempts: None,
            }
        );
        assert_eq!(
            c.log,
            Log {
                level: "info".into(),
                format: LogFormat::Auto,
            }
        );
    }
}
