//! Every value in the file has its key's type. The `config` crate coerces: `qos = true`
//! would be 1, `qos = 1.6` 2 and `port = "1883"` 1883, each passing `check-config`; an
//! operator's slip must instead be an error naming the key. Environment values are text,
//! and the `config` crate parses them as the key's type: they are not checked here.

use super::ConfigError;
use super::error::Check;

/// What a key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Integer,
    Text,
    /// `session.user_id`: a number is a user ID too (SPEC §3).
    IntegerOrText,
}

use Kind::{Integer, IntegerOrText, Text};

/// The keys of each table and their kinds; keys not listed here are left to the schema
/// (an unknown key is an error there).
const TABLES: &[(&str, &[(&str, Kind)])] = &[
    (
        "broker",
        &[
            ("host", Text),
            ("port", Integer),
            ("protocol", Text),
            ("client_id", Text),
            ("username", Text),
            ("password", Text),
            ("password_file", Text),
            ("keep_alive_secs", Integer),
            ("connect_timeout_secs", Integer),
            ("max_inflight", Integer),
        ],
    ),
    (
        "broker.tls",
        &[
            ("ca_file", Text),
            ("client_cert_file", Text),
            ("client_key_file", Text),
        ],
    ),
    (
        "session",
        &[
            ("user_id", IntegerOrText),
            ("login_topic", Text),
            ("uuid_topic", Text),
            ("command_topic", Text),
            ("reply_topic", Text),
            ("completion_message", Text),
            ("qos", Integer),
            ("login_timeout_secs", Integer),
            ("drain_timeout_secs", Integer),
            ("max_payload_bytes", Integer),
            ("max_pending", Integer),
            ("unknown_command", Text),
            ("unknown_reply", Text),
            ("status_topic", Text),
            ("status_interval_secs", Integer),
            ("state_dir", Text),
        ],
    ),
    (
        "reconnect",
        &[
            ("initial_delay_ms", Integer),
            ("max_delay_secs", Integer),
            ("max_attempts", Integer),
        ],
    ),
    ("log", &[("level", Text), ("format", Text)]),
];

/// Checks that each value in `document` has its key's type.
pub(super) fn check_types(check: &Check<'_>, document: &toml::Table) -> Result<(), ConfigError> {
    for (table, keys) in TABLES {
        let mut value = Some(document);
        for part in table.split('.') {
            value = value
                .and_then(|t| t.get(part))
                .and_then(toml::Value::as_table);
        }
        // Not there, or not a table: the schema says so.
        let Some(values) = value else { continue };
        for (key, kind) in *keys {
            let name = format!("{table}.{key}");
            // What the environment sets replaces the file's value.
            let Some(value) = values
                .get(*key)
                .filter(|_| !check.origins.contains_key(&name))
            else {
                continue;
            };
            let fits = match kind {
                Integer => value.is_integer(),
                Text => value.is_str(),
                IntegerOrText => value.is_integer() || value.is_str(),
            };
            if !fits {
                let expected = match kind {
                    Integer => "an integer",
                    Text => "a string (in quotes)",
                    IntegerOrText => "a string or an integer",
                };
                let shown = if *key == "password" {
                    "<redacted>".to_owned()
                } else {
                    value.to_string()
                };
                return Err(check.invalid(
                    &name,
                    shown,
                    format_args!("{expected}, not {}", describe(value)),
                ));
            }
        }
    }
    Ok(())
}

/// The TOML type of `value`, for messages.
fn describe(value: &toml::Value) -> &'static str {
    match value {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a float",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a date-time",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testing::*;

    #[test]
    fn a_value_of_another_type_is_an_error_naming_the_key_not_a_coercion() {
        let cases = [
            (
                "session.qos = true",
                "session.qos = true, expected an integer, not a boolean",
            ),
            (
                "session.qos = 1.6",
                "session.qos = 1.6, expected an integer, not a float",
            ),
            (
                "broker.port = \"1883\"",
                "broker.port = \"1883\", expected an integer, not a string",
            ),
            (
                "broker.host = 10",
                "broker.host = 10, expected a string (in quotes), not an integer",
            ),
            (
                "reconnect.max_attempts = \"3\"",
                "reconnect.max_attempts = \"3\", expected an integer, not a string",
            ),
            (
                "log.level = [\"info\"]",
                "log.level = [\"info\"], expected a string (in quotes), not an array",
            ),
            (
                "broker.tls.ca_file = false",
                "broker.tls.ca_file = false, expected a string (in quotes), not a boolean",
            ),
            (
                "session.user_id = 2547841.0\nbroker.host = \"h\"",
                "session.user_id = 2547841.0, expected a string or an integer, not a float",
            ),
        ];
        for (line, expected) in cases {
            let content = if line.starts_with("session.user_id") {
                format!("{line}\n")
            } else {
                format!("{USER}{line}\n")
            };
            let message = err(&content);
            assert!(message.starts_with(expected), "{line}: {message}");
        }
        // The password's value never shows, also when it is of the wrong type.
        let message = err(&format!("{USER}broker.password = 12345\n"));
        assert!(
            message.starts_with("broker.password = <redacted>, expected a string"),
            "{message}"
        );
        assert!(!message.contains("12345"), "{message}");
    }

    #[test]
    fn an_integer_user_id_stays_accepted_and_the_environment_is_text() {
        let config = ok("session.user_id = 2547841\n");
        assert_eq!(config.session.responder.user_id, "2547841");
        let config = load_env(USER, &[("MQTT_RESPONDER__SESSION__QOS", "1")]).unwrap();
        assert_eq!(config.session.responder.qos.as_u8(), 1);
    }
}
