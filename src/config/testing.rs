//! Helpers shared by the configuration's unit tests: a config file in a fresh directory, an
//! environment given as pairs, and loading that must succeed or must fail naming the file;
//! and, for the tests of other modules, `[session]` with SPEC §3's defaults.

use std::fs::Permissions;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use super::{Config, ConfigError, Session, from_toml, load_with_env};

pub(super) const USER: &str = "session.user_id = \"2547841\"\n";
pub(super) const SECRET: &str = "s3cr3t-Pa55w0rd";
/// `session.user_id` and a broker user name: a password needs one over MQTT 3.1.1.
pub(super) const USER_LOGIN: &str = "session.user_id = \"2547841\"\nbroker.username = \"pi\"\n";

/// A config file with `content` in a fresh directory, mode 0600.
pub(super) fn file(content: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, content).unwrap();
    std::fs::set_permissions(&path, Permissions::from_mode(0o600)).unwrap();
    (dir, path)
}

pub(super) fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub(super) fn load_env(content: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let (_dir, path) = file(content);
    load_with_env(&path, env(vars)).map(|(config, _)| config)
}

pub(super) fn ok(content: &str) -> Config {
    match load_env(content, &[]) {
        Ok(config) => config,
        Err(e) => panic!("{e}"),
    }
}

/// The error for `content` + `vars`, checked to name the file, without its prefix.
pub(super) fn err_env(content: &str, vars: &[(&str, &str)]) -> String {
    let (_dir, path) = file(content);
    let e = match load_with_env(&path, env(vars)) {
        Ok(_) => panic!("loaded, expected an error:\n{content}"),
        Err(e) => e,
    };
    assert_eq!(e.file, path);
    let shown = e.to_string();
    let prefix = format!("config error in {}: ", path.display());
    assert!(shown.starts_with(&prefix), "{shown}");
    assert_eq!(shown[prefix.len()..], e.message);
    e.message
}

pub(super) fn err(content: &str) -> String {
    err_env(content, &[])
}

/// `[session]` with SPEC §3's defaults (user ID 2547841), for other modules' tests.
pub(crate) fn session() -> Session {
    from_toml(std::path::Path::new("test.toml"), USER)
        .expect("the defaults are valid")
        .session
}
