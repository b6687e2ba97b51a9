//! Arbitrary bytes as TOML text into `config::from_toml`.
//!
//! Invariants: it never panics; when the text sets `password` to the marker below (the seed
//! corpus plants it; mutations keep it in a fraction of inputs), neither the error message
//! nor the `Debug` or redacted form of a loaded configuration contains it.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use mqtt_responder::config;

const MARKER: &str = "pw7marker";

/// Whether a string anywhere in the document names a device or kernel file: a
/// `password_file = "/dev/zero"` would be read until memory runs out, which is the
/// operator's doing and not what this target looks for.
fn names_special_file(value: &toml::Value) -> bool {
    let special = |s: &str| ["/dev", "/proc", "/sys"].iter().any(|p| s.contains(p));
    match value {
        toml::Value::String(s) => special(s),
        toml::Value::Array(a) => a.iter().any(names_special_file),
        toml::Value::Table(t) => t.iter().any(|(k, v)| special(k) || names_special_file(v)),
        _ => false,
    }
}

/// The marker appears once, as the value of a `password` key on its own line.
fn planted(text: &str) -> bool {
    text.matches(MARKER).count() == 1
        && text.lines().any(|line| {
            let line = line.trim_start();
            line.starts_with("password")
                && (line.contains(&format!("\"{MARKER}\""))
                    || line.contains(&format!("'{MARKER}'")))
        })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(table) = text.parse::<toml::Table>()
        && names_special_file(&toml::Value::Table(table))
    {
        return;
    }
    let check = planted(text);
    match config::from_toml(Path::new("fuzz.toml"), text) {
        Ok(config) => {
            if check {
                assert!(!format!("{config:?}").contains(MARKER), "password in Debug");
                assert!(
                    !config.to_redacted_toml().contains(MARKER),
                    "password in redacted TOML"
                );
            }
        }
        Err(e) => {
            let message = e.to_string();
            if check {
                assert!(
                    !message.contains(MARKER),
                    "password in the error: {message}"
                );
            }
        }
    }
});
