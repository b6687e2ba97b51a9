//! How a configuration problem is reported: [`ConfigError`] names the file, and [`Check`]
//! words each message around the dotted key (`key = value, expected …`), adds the
//! environment variable that set the key, and keeps secrets out. Errors of the `config`
//! crate are translated into the same shape here.

use std::collections::HashMap;
use std::fmt::Display;
use std::path::{Path, PathBuf};

/// A configuration problem, always naming the file and, where there is one, the key.
#[derive(Debug, thiserror::Error)]
#[error("config error in {}: {message}", file.display())]
pub struct ConfigError {
    /// The configuration file.
    pub file: PathBuf,
    /// `key = value, expected …` or what else went wrong.
    pub message: String,
}

/// Keys whose values never appear in an error message or in `check-config` output.
const SECRET_KEYS: &[&str] = &["broker.password"];

/// Builds error messages that name the file, the dotted key and, when an environment
/// variable set the key, that variable.
pub(super) struct Check<'a> {
    pub(super) file: &'a Path,
    pub(super) origins: &'a HashMap<String, String>,
}

impl Check<'_> {
    fn error(&self, key: &str, message: String) -> ConfigError {
        let from = match self.origins.get(key) {
            Some(name) => format!(" (from environment variable {name})"),
            None => String::new(),
        };
        ConfigError {
            file: self.file.to_path_buf(),
            message: format!("{message}{from}"),
        }
    }

    /// `key = value, expected …`.
    pub(super) fn invalid(
        &self,
        key: &str,
        value: impl Display,
        expected: impl Display,
    ) -> ConfigError {
        self.error(key, format!("{key} = {value}, expected {expected}"))
    }

    /// `key = value: why` — for a value that is the right kind but still unusable.
    pub(super) fn rejected(
        &self,
        key: &str,
        value: impl Display,
        why: impl Display,
    ) -> ConfigError {
        self.error(key, format!("{key} = {value}: {why}"))
    }

    /// `key: what is wrong` — when the value is a secret, too long to show, or beside the
    /// point.
    pub(super) fn problem(&self, key: &str, what: impl Display) -> ConfigError {
        self.error(key, format!("{key}: {what}"))
    }

    /// Turns an error of the `config` crate into ours, with the dotted key it concerns.
    pub(super) fn config_crate_error(&self, error: config::ConfigError) -> ConfigError {
        let (key, what) = describe(error, "");
        if key.is_empty() {
            self.error("", what)
        } else {
            self.problem(&key, what)
        }
    }
}

/// A string as it is shown in messages: quoted, control characters escaped, and cut short
/// when long (a 64 KiB topic would drown the message).
pub(super) fn quoted(value: &str) -> String {
    const SHOWN: usize = 64;
    if value.chars().count() <= SHOWN {
        format!("{value:?}")
    } else {
        let head: String = value.chars().take(SHOWN).collect();
        format!("{head:?}… ({} bytes)", value.len())
    }
}

/// Splits an error of the `config` crate into the dotted key it concerns and what is wrong.
/// The crate reports unknown keys only through serde's message text, so that is parsed; a
/// secret's value is never included.
fn describe(error: config::ConfigError, parent: &str) -> (String, String) {
    match error {
        config::ConfigError::Type {
            unexpected,
            expected,
            key,
            ..
        } => {
            let key = join(parent, key.as_deref().unwrap_or(""));
            let expected = if expected.contains("integer") {
                "an integer"
            } else {
                expected
            };
            if SECRET_KEYS.contains(&key.as_str()) {
                (key, format!("wrong type, expected {expected}"))
            } else {
                (key, format!("found {unexpected}, expected {expected}"))
            }
        }
        config::ConfigError::At { error, key, .. } => {
            describe(*error, &join(parent, key.as_deref().unwrap_or("")))
        }
        config::ConfigError::Message(message) => {
            let unknown = message
                .strip_prefix("unknown field `")
                .and_then(|rest| rest.split_once('`'));
            if let Some((field, hint)) = unknown {
                let hint = hint.trim_start_matches(", ");
                let what = if hint.is_empty() {
                    "unknown key".to_owned()
                } else {
                    format!("unknown key ({hint})")
                };
                (join(parent, field), what)
            } else if SECRET_KEYS.contains(&parent) {
                (parent.to_owned(), "invalid value".to_owned())
            } else if let Some(rest) = message.strip_prefix("invalid type: ") {
                // serde's wording, made to match ours ("found …, expected …").
                (parent.to_owned(), format!("found {rest}"))
            } else {
                (parent.to_owned(), message)
            }
        }
        config::ConfigError::NotFound(key) => (join(parent, &key), "missing".to_owned()),
        other => (parent.to_owned(), other.to_string()),
    }
}

fn join(parent: &str, key: &str) -> String {
    match (parent.is_empty(), key.is_empty()) {
        (true, _) => key.to_owned(),
        (false, true) => parent.to_owned(),
        (false, false) => format!("{parent}.{key}"),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::load_with_env;
    use crate::config::testing::*;

    #[test]
    fn the_example_message_of_the_spec() {
        let (_dir, path) = file(&format!("{USER}session.qos = 3\n"));
        let e = load_with_env(&path, Vec::new()).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "config error in {}: session.qos = 3, expected 0, 1 or 2",
                path.display()
            )
        );
    }

    #[test]
    fn unknown_keys_are_named_in_every_section() {
        let cases = [
            ("broker.hots = \"x\"", "broker.hots: unknown key"),
            ("broker.tls.ca = \"x\"", "broker.tls.ca: unknown key"),
            ("session.qso = 1", "session.qso: unknown key"),
            ("reconnect.retries = 1", "reconnect.retries: unknown key"),
            ("log.colour = \"x\"", "log.colour: unknown key"),
            ("verbose = true", "verbose: unknown key"),
            ("[brokers]\nhost = \"x\"", "brokers: unknown key"),
        ];
        for (snippet, expected) in cases {
            let message = err(&format!("{USER}{snippet}\n"));
            assert!(message.starts_with(expected), "{snippet}: {message}");
        }
        // The list of valid keys helps with the typo.
        let message = err(&format!("{USER}broker.hots = \"x\"\n"));
        assert!(message.contains("`host`"), "{message}");
    }

    #[test]
    fn wrong_types_name_the_key() {
        let cases = [
            (
                "session.qos = \"two\"",
                "session.qos = \"two\", expected an integer, not a string",
            ),
            (
                "broker.port = \"eighty\"",
                "broker.port = \"eighty\", expected an integer, not a string",
            ),
            (
                "reconnect.max_attempts = [1]",
                "reconnect.max_attempts = [1], expected an integer, not an array",
            ),
            (
                "broker.host = { a = 1 }",
                "broker.host = { a = 1 }, expected a string (in quotes), not a table",
            ),
            ("broker = 5", "broker: found integer `5`, expected a table"),
            (
                "broker.tls = \"yes\"",
                "broker.tls: found string \"yes\", expected a table",
            ),
        ];
        for (snippet, expected) in cases {
            let message = err(&format!("{USER}{snippet}\n"));
            assert!(message.starts_with(expected), "{snippet}: {message}");
        }
    }
}
