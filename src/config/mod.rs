//! Configuration: the TOML file of SPEC §3 with `MQTT_RESPONDER__SECTION__KEY` environment
//! overrides, validated into the types the rest of the daemon uses, and written back out,
//! redacted, by `check-config`.
//!
//! How a configuration is read: [`load`] takes the process environment, [`load_with_env`] is
//! handed one, and both read the file ([`resolve_path`] says which); [`from_toml`] starts
//! from text, with no environment. Then, in `load_text`:
//! 1. the environment is sorted into per-key overrides, per-command reply overrides and
//!    `STATE_DIRECTORY` (`source.rs`);
//! 2. the text is parsed as TOML by us, for syntax errors that give a position but never
//!    quote the line (it may hold the password), and for the order of `[replies]`
//!    (`source.rs`);
//! 3. the `config` crate layers the overrides over the text and deserializes the result into
//!    the raw serde schema, whose defaults are SPEC §3's (`source.rs`, `raw.rs`);
//! 4. validation turns the raw schema and the reply table into a [`Config`] (`validate.rs`);
//!    every failure is a [`ConfigError`] naming the file, the key and, where one set it, the
//!    environment variable (`error.rs`);
//! 5. a password that other users can read draws a warning, returned beside the
//!    configuration (`permissions.rs`).
//!
//! The validated types are in `schema.rs`; [`Config::to_redacted_toml`] and
//! [`Config::restart_needed`] in `render.rs`. The submodules are private: what the rest of
//! the program may use is re-exported here, and the raw schema is not.

use std::path::Path;

mod error;
mod permissions;
mod raw;
mod render;
mod schema;
mod source;
mod types;
mod validate;

use error::Check;
pub use error::ConfigError;
use permissions::permission_warnings;
pub use schema::{
    Broker, ClientAuth, Config, Log, LogFormat, Reconnect, ReplyTable, Session, Tls, UnknownCommand,
};
pub use source::{DEFAULT_PATH, resolve_path};
use source::{ENV_PREFIX, Env, deserialize, parse_toml, read_config_file};
pub use validate::strip_one_newline;
use validate::{reply_table, validate};

/// Loads `path` plus `MQTT_RESPONDER__SECTION__KEY` environment overrides and validates it.
/// Warnings (a password in a file others can read) are returned, not logged, so the caller
/// decides where they go.
pub fn load(path: &Path) -> Result<(Config, Vec<String>), ConfigError> {
    let mut env = Vec::new();
    for (name, value) in std::env::vars_os() {
        // Our variables have ASCII names; a name that is not Unicode is someone else's.
        let Ok(name) = name.into_string() else {
            continue;
        };
        match value.into_string() {
            Ok(value) => env.push((name, value)),
            Err(_) if name.to_ascii_lowercase().starts_with(ENV_PREFIX) => {
                return Err(ConfigError {
                    file: path.to_path_buf(),
                    message: format!("environment variable {name} is not valid UTF-8"),
                });
            }
            Err(_) => {}
        }
    }
    load_with_env(path, env)
}

/// [`load`] with the environment passed in instead of read from the process, so tests (and
/// a reload that must see the environment the daemon started with) control it. Besides the
/// overrides, only `STATE_DIRECTORY` is read from it.
pub fn load_with_env(
    path: &Path,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(Config, Vec<String>), ConfigError> {
    let text = read_config_file(path)?;
    load_text(path, &text, env)
}

/// A configuration from TOML text rather than a file (the `demo` builds its own); `name`
/// stands for the file in messages. No environment overrides apply.
pub fn from_toml(name: &Path, text: &str) -> Result<Config, ConfigError> {
    load_text(name, text, std::iter::empty()).map(|(config, _)| config)
}

fn load_text(
    path: &Path,
    text: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(Config, Vec<String>), ConfigError> {
    let env = Env::split(path, env)?;
    let check = Check {
        file: path,
        origins: &env.origins,
    };
    let document = parse_toml(path, text)?;
    types::check_types(&check, &document)?;
    let raw = deserialize(&check, text, env.overrides.clone())?;
    let replies = reply_table(&check, document.get("replies"), &env.replies)?;
    let (config, password_file) = validate(&check, raw, replies, env.state_directory.as_deref())?;
    let warnings = permission_warnings(path, &document, password_file.as_deref());
    Ok((config, warnings))
}

#[cfg(test)]
pub(crate) mod testing;

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn the_password_never_shows() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("password");
        std::fs::write(&pw, format!("{SECRET}\n")).unwrap();
        let from_file = format!("{USER_LOGIN}broker.password = \"{SECRET}\"\n");
        let from_password_file = format!("{USER_LOGIN}broker.password_file = {pw:?}\n");
        for (content, vars) in [
            (from_file.as_str(), vec![]),
            (from_password_file.as_str(), vec![]),
            (
                USER_LOGIN,
                vec![("MQTT_RESPONDER__BROKER__PASSWORD", SECRET)],
            ),
        ] {
            let config = load_env(content, &vars).unwrap();
            assert_eq!(config.broker.password.as_ref().unwrap().expose(), SECRET);
            let shown = config.to_redacted_toml();
            assert!(!shown.contains(SECRET), "{shown}");
            assert!(shown.contains("password = \"<redacted>\""), "{shown}");
            assert!(!format!("{config:?}").contains(SECRET));
        }

        // Errors: a bad value elsewhere, a wrong type for the password itself, a syntax
        // error on the password's line.
        let errors = [
            err(&format!("{from_file}session.qos = 9\n")),
            err_env(
                USER,
                &[
                    ("MQTT_RESPONDER__BROKER__PASSWORD", SECRET),
                    ("MQTT_RESPONDER__SESSION__QOS", "9"),
                ],
            ),
            err(&format!("{USER}broker.password = [\"{SECRET}\"]\n")),
            err(&format!("{USER}broker.password = {{ p = \"{SECRET}\" }}\n")),
            err(&format!("{USER}broker.password = \"{SECRET}\n")),
            err(&format!("{USER}broker.password = {SECRET}\n")),
            err(&format!(
                "{USER}broker.password = \"{SECRET}\"\nbroker.password_file = {pw:?}\n"
            )),
        ];
        for message in &errors {
            assert!(!message.contains(SECRET), "{message}");
        }
        assert!(
            errors[2].starts_with("broker.password = <redacted>, expected a string"),
            "{}",
            errors[2]
        );
    }

    #[test]
    fn the_shipped_example_loads_with_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/mqtt-responder/config.toml");
        let (example, warnings) = load_with_env(&path, Vec::new()).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(example.to_redacted_toml(), ok(USER).to_redacted_toml());
        assert_eq!(example.source, path);
    }
}
