//! The binary's contract at its edges: exit codes and messages for configuration errors,
//! `check-config` redaction, and refused credentials against a real mosquitto.

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::write_config;

const BIN: &str = env!("CARGO_BIN_EXE_mqtt-responder");

fn run(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("RUST_LOG")
        .env_remove("MQTT_RESPONDER_CONFIG")
        .stdin(Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("run mqtt-responder")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `connect_timeout_secs` in [`minimal`].
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Room for the processes to be scheduled on a busy machine, beyond what the
/// configuration allows.
const SLACK: Duration = Duration::from_secs(2);

fn minimal(port: u16) -> String {
    format!(
        "[broker]\nhost = \"127.0.0.1\"\nport = {port}\nconnect_timeout_secs = {}\n\n\
         [session]\nuser_id = \"2547841\"\n\
         \n[reconnect]\ninitial_delay_ms = 50\nmax_delay_secs = 1\nmax_attempts = 3\n",
        CONNECT_TIMEOUT.as_secs()
    )
}

#[test]
fn config_errors_exit_78_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[session]\nuser_id = \"1\"\nqos = 3\n", "session.qos = 3"),
        ("[session]\nuser_id = \"a/b\"\n", "session.user_id"),
        (
            "[session]\nuser_id = \"1\"\nuuid_topic = \"{nope}\"\n",
            "session.uuid_topic",
        ),
        (
            "[broker]\nhots = \"x\"\n[session]\nuser_id = \"1\"\n",
            "broker.hots",
        ),
        (
            "[broker]\nport = \"many\"\n[session]\nuser_id = \"1\"\n",
            "broker.port",
        ),
        ("[broker]\n", "session.user_id"),
        (
            "[session]\nuser_id = \"1\"\n[replies]\n\"A+\" = \"x\"\n",
            "replies",
        ),
        (
            "[session]\nuser_id = \"1\"\n[log]\nformat = \"xml\"\n",
            "log.format",
        ),
    ];
    for (toml, key) in cases {
        let path = write_config(dir.path(), toml);
        for sub in ["run", "check-config"] {
            let out = run(&[sub, "--config", path.to_str().unwrap()], &[]);
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(78), "{sub} {toml:?}: {err}");
            assert!(err.contains(key), "{sub} {toml:?} should name {key}: {err}");
            assert!(
                err.contains(&path.display().to_string()),
                "{toml:?} should name the file: {err}"
            );
        }
    }
}

/// What `run` checks before it connects, `check-config` checks too: a CA file that holds no
/// certificate, a password that MQTT 3.1.1 cannot send.
#[test]
fn check_config_refuses_what_run_would() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "not a certificate\n").unwrap();
    let cases = [
        (
            format!(
                "[broker]\nhost = \"127.0.0.1\"\n[broker.tls]\nca_file = \"{}\"\n\
                 [session]\nuser_id = \"1\"\n",
                ca.display()
            ),
            "broker.tls.ca_file",
        ),
        (
            "[broker]\npassword = \"pw\"\n[session]\nuser_id = \"1\"\n".to_owned(),
            "broker.password: a password without broker.username",
        ),
    ];
    for (toml, key) in cases {
        let path = write_config(dir.path(), &toml);
        for sub in ["run", "check-config"] {
            let out = run(&[sub, "--config", path.to_str().unwrap()], &[]);
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(78), "{sub} {toml:?}: {err}");
            assert!(err.contains(key), "{sub} should name {key}: {err}");
            assert!(err.contains(&path.display().to_string()), "{err}");
        }
    }
}

#[test]
fn missing_config_file_exits_78() {
    let out = run(&["--config", "/nonexistent/mqtt-responder.toml"], &[]);
    assert_eq!(out.status.code(), Some(78));
    assert!(stderr(&out).contains("/nonexistent/mqtt-responder.toml"));
    let out = run(
        &["check-config"],
        &[("MQTT_RESPONDER_CONFIG", "/nonexistent/other.toml")],
    );
    assert_eq!(out.status.code(), Some(78));
    assert!(stderr(&out).contains("/nonexistent/other.toml"));
}

#[test]
fn check_config_prints_effective_config_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "s3cr3t-Pa55word";
    let toml = format!(
        "[broker]\nusername = \"alice\"\npassword = \"{secret}\"\n[session]\nuser_id = \"42\"\n"
    );
    let path = write_config(dir.path(), &toml);
    let out = run(&["check-config", "--config", path.to_str().unwrap()], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout.contains("client_id = \"mqtt-responder-42\""),
        "{stdout}"
    );
    assert!(stdout.contains("<redacted>"), "{stdout}");
    assert!(!stdout.contains(secret) && !stderr(&out).contains(secret));

    // The same from the environment, and through a password file.
    let env_secret = "env-Secret-123";
    let path = write_config(
        dir.path(),
        "[broker]\nusername = \"alice\"\n[session]\nuser_id = \"42\"\n",
    );
    let out = run(
        &["check-config", "--config", path.to_str().unwrap()],
        &[("MQTT_RESPONDER__BROKER__PASSWORD", env_secret)],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(
        all.contains("<redacted>") && !all.contains(env_secret),
        "{all}"
    );

    let pw_file = dir.path().join("pw");
    std::fs::write(&pw_file, format!("{secret}\n")).unwrap();
    let toml = format!(
        "[broker]\nusername = \"alice\"\npassword_file = \"{}\"\n[session]\nuser_id = \"42\"\n",
        pw_file.display()
    );
    let path = write_config(dir.path(), &toml);
    let out = run(&["check-config", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(!all.contains(secret), "{all}");
}

#[test]
fn shipped_example_config_is_valid() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/mqtt-responder/config.toml");
    let out = run(
        &["check-config", "--config", example.to_str().unwrap()],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn unreachable_broker_exits_69_after_max_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let path = write_config(dir.path(), &minimal(port));
    let started = Instant::now();
    let out = run(&["--config", path.to_str().unwrap()], &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(69), "{err}");
    assert!(err.contains("unreachable after 3 attempts"), "{err}");
    assert_eq!(err.matches("reconnecting in").count(), 2, "{err}");
    // Three attempts of at most a connect timeout each, two waits within the backoff's
    // ceilings (50 ms, then 100 ms).
    let bound = 3 * CONNECT_TIMEOUT + Duration::from_millis(150) + SLACK;
    assert!(started.elapsed() < bound, "{:?}", started.elapsed());
}

#[test]
fn refused_credentials_exit_77_without_a_retry_storm() {
    let broker = require_mosquitto!();
    let broker = broker
        .with_user("device", "right-password")
        .start()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "{}\n",
        minimal(broker.port()).replace(
            "[session]",
            "username = \"device\"\npassword = \"wrong-password\"\n\n[session]"
        )
    );
    let path = write_config(dir.path(), &toml);
    let mark = broker.log_mark();
    let started = Instant::now();
    let out = run(&["--config", path.to_str().unwrap()], &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(77), "{err}");
    // One CONNECT, refused: no retry, so within one connect timeout.
    assert!(started.elapsed() < CONNECT_TIMEOUT + SLACK, "{err}");
    assert!(
        err.contains("device") && err.contains(&broker.port().to_string()),
        "{err}"
    );
    assert!(
        !err.contains("wrong-password"),
        "the password leaked: {err}"
    );
    let log = broker.log_since(mark);
    let attempts = log.matches("New client connected").count();
    assert!(attempts <= 2, "{attempts} CONNECT attempts:\n{log}");

    // The right password from the environment overrides the wrong one in the file: the
    // daemon gets past the CONNACK (and then waits for a UUID, so stop it at the login).
    let path = write_config(
        dir.path(),
        &toml.replace("max_attempts = 3", "max_attempts = 1"),
    );
    let mark = broker.log_mark();
    let mut child = Command::new(BIN)
        .args(["--config", path.to_str().unwrap()])
        .env("MQTT_RESPONDER__BROKER__PASSWORD", "right-password")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let logged_in = broker.wait_for_log_since(mark, "'login'", Duration::from_secs(10));
    let _ = Command::new("kill")
        .args(["-s", "TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert!(logged_in, "{}", broker.log_since(mark));
    assert_eq!(status.code(), Some(0), "SIGTERM is a clean stop");
}
