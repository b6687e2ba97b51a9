//! Where the configuration comes from: which file ([`resolve_path`]), the environment sorted
//! into what the loader needs from it ([`Env`]), and the file's text read twice: once by us
//! ([`parse_toml`]), for error positions that never quote a password and for the order of
//! `[replies]`, and once by the `config` crate with the `MQTT_RESPONDER__SECTION__KEY`
//! overrides layered over it, into the raw schema ([`deserialize`]).

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::error::{Check, ConfigError};
use super::raw::RawConfig;

/// Where the configuration is read from when neither `--config` nor `MQTT_RESPONDER_CONFIG`
/// says otherwise.
pub const DEFAULT_PATH: &str = "/etc/mqtt-responder/config.toml";

/// Environment variable naming the configuration file when `--config` is not given.
const CONFIG_ENV: &str = "MQTT_RESPONDER_CONFIG";

/// Prefix of the per-key overrides `MQTT_RESPONDER__<SECTION>__<KEY>`, lower-cased: the
/// `config` crate matches it without regard to case, and so do we.
pub(super) const ENV_PREFIX: &str = "mqtt_responder__";

/// Prefix of `MQTT_RESPONDER__REPLIES__<COMMAND>`, handled here rather than by the `config`
/// crate, which would lower-case the command.
const REPLIES_ENV_PREFIX: &str = "mqtt_responder__replies__";

/// Which file to read: `--config`, else `MQTT_RESPONDER_CONFIG`, else [`DEFAULT_PATH`].
pub fn resolve_path(cli: Option<&Path>) -> PathBuf {
    resolve_path_from(cli, std::env::var_os(CONFIG_ENV))
}

fn resolve_path_from(cli: Option<&Path>, env: Option<OsString>) -> PathBuf {
    match (cli, env) {
        (Some(path), _) => path.to_path_buf(),
        // An empty variable is treated as unset, as systemd's `Environment=VAR=` suggests.
        (None, Some(path)) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from(DEFAULT_PATH),
    }
}

/// The environment, sorted into what the loader needs from it.
pub(super) struct Env {
    /// `MQTT_RESPONDER__…` overrides for the `config` crate, by variable name.
    pub(super) overrides: config::Map<String, String>,
    /// `MQTT_RESPONDER__REPLIES__<COMMAND>`: (command with its case kept, reply), by name.
    pub(super) replies: Vec<(String, String)>,
    /// Dotted key → the variable that set it, so an error can say where a value came from.
    pub(super) origins: HashMap<String, String>,
    /// systemd's `STATE_DIRECTORY`, the fallback for `session.state_dir`.
    pub(super) state_directory: Option<String>,
}

impl Env {
    pub(super) fn split(
        file: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Env, ConfigError> {
        let mut out = Env {
            overrides: config::Map::new(),
            replies: Vec::new(),
            origins: HashMap::new(),
            state_directory: None,
        };
        for (name, value) in env {
            let lower = name.to_ascii_lowercase();
            if name == "STATE_DIRECTORY" {
                out.state_directory = Some(value);
            } else if lower.starts_with(REPLIES_ENV_PREFIX) {
                let command = name[REPLIES_ENV_PREFIX.len()..].to_owned();
                out.origins.insert(format!("replies.{command}"), name);
                out.replies.push((command, value));
            } else if lower == "mqtt_responder__replies" {
                return Err(ConfigError {
                    file: file.to_path_buf(),
                    message: format!(
                        "replies: cannot be set as a whole by environment variable {name}; \
                         set one reply with MQTT_RESPONDER__REPLIES__<COMMAND>"
                    ),
                });
            } else if let Some(rest) = lower.strip_prefix(ENV_PREFIX) {
                // The same mapping the `config` crate applies.
                out.origins.insert(rest.replace("__", "."), name.clone());
                out.overrides.insert(name, value);
            }
        }
        // The process environment has no order; make the result independent of it.
        out.replies.sort();
        Ok(out)
    }
}

pub(super) fn read_config_file(path: &Path) -> Result<String, ConfigError> {
    let fail = |message: String| ConfigError {
        file: path.to_path_buf(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|e| fail(format!("cannot read the file: {e}")))?;
    String::from_utf8(bytes).map_err(|_| fail("the file is not valid UTF-8".to_owned()))
}

/// Parses the file ourselves before the `config` crate does: its parse errors quote the
/// offending line, which may hold the password, and it forgets the order of `[replies]`.
pub(super) fn parse_toml(path: &Path, text: &str) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>().map_err(|e| {
        let at = match e.span() {
            Some(span) => {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
                format!(" at line {line}, column {column}")
            }
            None => String::new(),
        };
        ConfigError {
            file: path.to_path_buf(),
            message: format!("invalid TOML{at}: {}", e.message().trim_end()),
        }
    })
}

/// The file with the environment layered over it, into the raw schema.
pub(super) fn deserialize(
    check: &Check<'_>,
    text: &str,
    overrides: config::Map<String, String>,
) -> Result<RawConfig, ConfigError> {
    let env = config::Environment::with_prefix("MQTT_RESPONDER")
        .separator("__")
        .source(Some(overrides));
    config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .add_source(env)
        .build()
        .and_then(config::Config::try_deserialize::<RawConfig>)
        .map_err(|e| check.config_crate_error(e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::*;
    use crate::config::{ReplyTable, load_with_env};
    use crate::vocabulary::QoS;
    use crate::vocabulary::Secret;

    #[test]
    fn a_missing_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.toml");
        let e = load_with_env(&path, Vec::new()).unwrap_err();
        assert_eq!(e.file, path);
        assert!(
            e.to_string().starts_with(&format!(
                "config error in {}: cannot read the file: No such file",
                path.display()
            )),
            "{e}"
        );
    }

    #[test]
    fn a_toml_syntax_error_gives_the_position() {
        let message = err(&format!("{USER}[broker\nhost = 1\n"));
        assert!(
            message.starts_with("invalid TOML at line 2, column"),
            "{message}"
        );
    }

    #[test]
    fn environment_overrides_numbers_strings_and_the_password() {
        let (_dir, path) = file(USER_LOGIN);
        let vars = env(&[
            ("MQTT_RESPONDER__SESSION__QOS", "1"),
            ("MQTT_RESPONDER__BROKER__HOST", "broker.example.org"),
            ("MQTT_RESPONDER__BROKER__PASSWORD", SECRET),
            ("MQTT_RESPONDER__BROKER__CLIENT_ID", "pi-7"),
            ("MQTT_RESPONDER__RECONNECT__MAX_ATTEMPTS", "3"),
            // Not ours: ignored.
            ("MQTT_RESPONDER_CONFIG", "/elsewhere.toml"),
            ("PATH", "/usr/bin"),
        ]);
        let (config, warnings) = load_with_env(&path, vars).unwrap();
        assert_eq!(config.session.responder.qos, QoS::AtLeastOnce);
        assert_eq!(config.broker.host, "broker.example.org");
        assert_eq!(config.broker.client_id, "pi-7");
        assert_eq!(config.reconnect.max_attempts, Some(3));
        assert_eq!(config.broker.password, Some(Secret::new(SECRET.into())));
        // The password is in the environment, not in the file: nothing to warn about.
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn the_environment_wins_over_the_file() {
        let content = format!("{USER}session.qos = 0\nbroker.port = 1000\n");
        let config = load_env(&content, &[("MQTT_RESPONDER__SESSION__QOS", "2")]).unwrap();
        assert_eq!(config.session.responder.qos, QoS::ExactlyOnce);
        assert_eq!(config.broker.port, 1000);
        // user_id from the environment alone is enough.
        let config = load_env("", &[("MQTT_RESPONDER__SESSION__USER_ID", "42")]).unwrap();
        assert_eq!(config.session.responder.user_id, "42");
        assert_eq!(config.broker.client_id, "mqtt-responder-42");
    }

    #[test]
    fn environment_can_switch_on_tls() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not checked here").unwrap();
        let ca_str = ca.to_str().unwrap();
        let config = load_env(USER, &[("MQTT_RESPONDER__BROKER__TLS__CA_FILE", ca_str)]).unwrap();
        let tls = config.broker.tls.expect("tls switched on");
        assert_eq!(tls.ca_file.as_deref(), Some(ca.as_path()));
        assert_eq!(config.broker.port, 8883);
    }

    #[test]
    fn errors_in_environment_values_name_the_variable() {
        let message = err_env(USER, &[("MQTT_RESPONDER__SESSION__QOS", "7")]);
        assert_eq!(
            message,
            "session.qos = 7, expected 0, 1 or 2 (from environment variable \
             MQTT_RESPONDER__SESSION__QOS)"
        );
        let message = err_env(USER, &[("MQTT_RESPONDER__SESSION__QOS", "high")]);
        assert!(
            message.starts_with("session.qos: found string \"high\""),
            "{message}"
        );
        assert!(message.ends_with("(from environment variable MQTT_RESPONDER__SESSION__QOS)"));
        let message = err_env(USER, &[("MQTT_RESPONDER__BROKER__HOTS", "x")]);
        assert!(message.starts_with("broker.hots: unknown key"), "{message}");
        assert!(message.ends_with("(from environment variable MQTT_RESPONDER__BROKER__HOTS)"));
        let message = err_env(USER, &[("MQTT_RESPONDER__REPLIES", "x")]);
        assert!(
            message.starts_with("replies: cannot be set as a whole"),
            "{message}"
        );
    }

    #[test]
    fn environment_overrides_replies_keeping_the_case() {
        let vars = [
            ("MQTT_RESPONDER__REPLIES__CMD2", "Mouse"),
            ("MQTT_RESPONDER__REPLIES__Cmd8", "Pen"),
        ];
        let config = load_env(USER, &vars).unwrap();
        let mut expected = ReplyTable::seed().0;
        expected[1].1 = "Mouse".into();
        expected.push(("Cmd8".into(), "Pen".into()));
        assert_eq!(config.replies.0, expected);
        let message = err_env(USER, &[("MQTT_RESPONDER__REPLIES__CMD1", "")]);
        assert_eq!(
            message,
            "replies.CMD1 = \"\", expected a non-empty reply (from environment variable \
             MQTT_RESPONDER__REPLIES__CMD1)"
        );
    }

    #[test]
    fn path_resolution() {
        let cli = Path::new("/cli.toml");
        let env = || Some(OsString::from("/env.toml"));
        assert_eq!(resolve_path_from(Some(cli), env()), cli);
        assert_eq!(resolve_path_from(None, env()), Path::new("/env.toml"));
        assert_eq!(
            resolve_path_from(None, Some(OsString::new())),
            Path::new(DEFAULT_PATH)
        );
        assert_eq!(resolve_path_from(None, None), Path::new(DEFAULT_PATH));
    }
}
