//! The one warning a valid configuration can draw: a password that other local users can
//! read, in the configuration file itself or in `broker.password_file`. Warnings are
//! returned to the caller, not logged here.

use std::path::Path;

/// How the configuration file is kept, as the .deb installs it: the service (a dynamic
/// user in the `mqtt-responder-config` group) must still read it, so not `chmod 600`.
pub const CONFIG_ADVICE: &str = "make it root:mqtt-responder-config, mode 0640 (chgrp \
     mqtt-responder-config, chmod 640), as the .deb installs it";

/// How a password file is kept: root's alone, handed to the service by systemd.
pub const PASSWORD_FILE_ADVICE: &str = "make it root:root, mode 0600, and hand it to the \
     service with LoadCredential=, as the shipped unit does";

/// Warnings for passwords that other local users can read: the configuration file when it
/// holds `broker.password` itself, and the `password_file`.
pub(super) fn permission_warnings(
    path: &Path,
    document: &toml::Table,
    password_file: Option<&Path>,
) -> Vec<String> {
    let mut warnings = Vec::new();
    let file_has_password = document
        .get("broker")
        .and_then(|b| b.get("password"))
        .and_then(toml::Value::as_str)
        .is_some_and(|p| !p.is_empty());
    if file_has_password {
        if let Some(mode) = readable_by_others(path) {
            warnings.push(format!(
                "{} holds broker.password and is readable by other users (mode {mode:04o}); \
                 {CONFIG_ADVICE}",
                path.display()
            ));
        }
    }
    if let Some(file) = password_file {
        if let Some(mode) = readable_by_others(file) {
            warnings.push(format!(
                "{} (broker.password_file) is readable by other users (mode {mode:04o}); \
                 {PASSWORD_FILE_ADVICE}",
                file.display()
            ));
        }
    }
    warnings
}

/// The permission bits of `path` when "others" may read it.
#[cfg(unix)]
fn readable_by_others(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o7777;
    (mode & 0o004 != 0).then_some(mode)
}

#[cfg(not(unix))]
fn readable_by_others(_path: &Path) -> Option<u32> {
    None
}

#[cfg(test)]
mod tests {
    use std::fs::Permissions;
    use std::os::unix::fs::PermissionsExt;

    use crate::config::load_with_env;
    use crate::config::testing::*;

    #[test]
    fn passwords_readable_by_others_draw_a_warning() {
        let content = format!("{USER_LOGIN}broker.password = \"{SECRET}\"\n");
        let (_dir, path) = file(&content);
        let (_, warnings) = load_with_env(&path, Vec::new()).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");

        std::fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
        let (_, warnings) = load_with_env(&path, Vec::new()).unwrap();
        assert_eq!(
            warnings,
            [format!(
                "{} holds broker.password and is readable by other users (mode 0644); \
                 {}",
                path.display(),
                super::CONFIG_ADVICE
            )]
        );
        assert!(!warnings[0].contains(SECRET));

        // Without a password in it, a readable config file is fine.
        let (_dir2, plain) = file(USER);
        std::fs::set_permissions(&plain, Permissions::from_mode(0o644)).unwrap();
        let (_, warnings) = load_with_env(&plain, Vec::new()).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");

        // The password file itself.
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("password");
        std::fs::write(&pw, SECRET).unwrap();
        std::fs::set_permissions(&pw, Permissions::from_mode(0o604)).unwrap();
        let (_dir3, path) = file(&format!("{USER_LOGIN}broker.password_file = {pw:?}\n"));
        let (_, warnings) = load_with_env(&path, Vec::new()).unwrap();
        assert_eq!(
            warnings,
            [format!(
                "{} (broker.password_file) is readable by other users (mode 0604); {}",
                pw.display(),
                super::PASSWORD_FILE_ADVICE
            )]
        );
    }
}
