//! `demo` and `examine` through the binary: demo on a machine with no broker running,
//! examine against the real daemon on mosquitto at each QoS, against a daemon with a wrong
//! reply table, and against 20 daemons at once.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use support::{Mosquitto, bin_command, daemon_command, finish, text};

fn daemon_config(dir: &Path, port: u16, user_id: &str, qos: u8, replies: &str) -> PathBuf {
    let toml = format!(
        "[broker]\nhost = \"127.0.0.1\"\nport = {port}\n\n[session]\nuser_id = \"{user_id}\"\n\
         qos = {qos}\nlogin_timeout_secs = 2\n\n[reconnect]\ninitial_delay_ms = 50\n\
         max_delay_secs = 1\nmax_attempts = 20\n{replies}"
    );
    let path = dir.join(format!("{user_id}.toml"));
    std::fs::write(&path, toml).unwrap();
    path
}

fn spawn_daemon(config: &Path) -> Child {
    daemon_command(config).spawn().unwrap()
}

/// Starts `examine` against `broker` and waits until it listens for logins (its
/// subscription shows in the broker log), so no login is published before it listens.
fn spawn_examine(broker: &Mosquitto, client_id: &str, args: &[&str]) -> Child {
    let mark = broker.log_mark();
    let port = broker.port().to_string();
    let child = bin_command()
        .args([
            "examine",
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--client-id",
            client_id,
        ])
        .args(["--delay-ms", "200"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let subscribed = broker.wait_for_log_since(
        mark,
        &format!("Received SUBSCRIBE from {client_id}"),
        Duration::from_secs(10),
    );
    if !subscribed {
        let out = finish(child, Duration::from_secs(15));
        panic!("examine did not subscribe: {}", text(&out.stderr));
    }
    child
}

#[test]
fn demo_runs_the_whole_exchange_with_nothing_installed() {
    let child = bin_command()
        .args(["demo", "--delay-ms", "100", "--commands", "9"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = finish(child, Duration::from_secs(30));
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    for expected in [
        "embedded rumqttd on 127.0.0.1:",
        "daemon logged in, waiting for the UUID",
        "peer   login from 2547841",
        "hands out UUID",
        "answered \"",
        "sends the completion message",
        "disconnected cleanly after the completion message",
        "total         9        9       0     0     0     0",
        "PASS",
    ] {
        assert!(stdout.contains(expected), "no {expected:?} in:\n{stdout}");
    }

    // MQTT 5 at QoS 1 too.
    let child = bin_command()
        .args(["demo", "--delay-ms", "100", "--protocol", "5", "--qos", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = finish(child, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("(MQTT 5); 12 commands at QoS 1"));
}

#[test]
fn examine_passes_against_the_daemon_at_each_qos() {
    let broker = require_mosquitto!().start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    for qos in 0..=2u8 {
        let user = format!("exq{qos}");
        let qos_arg = qos.to_string();
        let examiner = spawn_examine(
            &broker,
            &format!("examiner-{user}"),
            &[
                "--qos",
                &qos_arg,
                "--commands",
                "50",
                "--user-id",
                &user,
                "--timeout",
                "60",
            ],
        );
        let daemon = spawn_daemon(&daemon_config(dir.path(), broker.port(), &user, qos, ""));
        let out = finish(examiner, Duration::from_secs(60));
        let daemon = finish(daemon, Duration::from_secs(15));
        let stdout = text(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{stdout}\n{}",
            text(&out.stderr)
        );
        assert!(stdout.contains(&format!("qos {qos})")), "{stdout}");
        assert!(stdout.contains("total        50       50       0     0     0     0"));
        assert_eq!(daemon.status.code(), Some(0), "{}", text(&daemon.stderr));
    }
}

#[test]
fn examine_fails_with_the_reason_against_a_wrong_reply_table() {
    let broker = require_mosquitto!().start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let examiner = spawn_examine(
        &broker,
        "examiner-wrong",
        &[
            "--commands",
            "30",
            "--user-id",
            "wrong",
            "--json",
            "--timeout",
            "60",
        ],
    );
    // CMD3 answers "Cow" instead of "Dog".
    let replies = "[replies]\nCMD1 = \"Apple\"\nCMD2 = \"Cat\"\nCMD3 = \"Cow\"\nCMD4 = \"Rat\"\n\
                   CMD5 = \"Boy\"\nCMD6 = \"Girl\"\nCMD7 = \"Toy\"\n";
    let daemon = spawn_daemon(&daemon_config(
        dir.path(),
        broker.port(),
        "wrong",
        2,
        replies,
    ));
    let out = finish(examiner, Duration::from_secs(60));
    finish(daemon, Duration::from_secs(15));
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let doc: serde_json::Value = serde_json::from_str(&stdout).expect("--json prints JSON");
    assert_eq!(doc["passed"], false);
    let cmd3 = &doc["devices"][0]["commands"][2];
    assert_eq!(cmd3["command"], "CMD3");
    assert!(
        cmd3["sent"].as_u64().unwrap() > 0,
        "seeded run sent no CMD3: {doc:#}"
    );
    assert_eq!(cmd3["wrong"], cmd3["sent"]);
    let problems = doc["problems"].to_string();
    assert!(problems.contains("wrong"), "{problems}");

    // Without --json the reason is in the verdict line, and a timeout names what is missing.
    let examiner = spawn_examine(
        &broker,
        "examiner-nobody",
        &["--user-id", "nobody", "--timeout", "1"],
    );
    let out = finish(examiner, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("FAIL: 1 device(s) never logged in"),
        "{stdout}"
    );
}

#[test]
fn examine_serves_20_devices_at_once() {
    let broker = require_mosquitto!().start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let examiner = spawn_examine(
        &broker,
        "examiner-fleet",
        &[
            "--logins",
            "20",
            "--commands",
            "25",
            "--qos",
            "1",
            "--timeout",
            "80",
        ],
    );
    let daemons: Vec<Child> = (0..20)
        .map(|i| {
            let config = daemon_config(dir.path(), broker.port(), &format!("dev{i:02}"), 1, "");
            spawn_daemon(&config)
        })
        .collect();
    let out = finish(examiner, Duration::from_secs(90));
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    assert_eq!(stdout.matches("PASS dev").count(), 20, "{stdout}");
    assert!(
        stdout.contains("total       500      500       0     0     0     0"),
        "{stdout}"
    );
    assert!(stdout.contains("PASS: 20 device(s)"));
    for daemon in daemons {
        let out = finish(daemon, Duration::from_secs(15));
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    }
}
