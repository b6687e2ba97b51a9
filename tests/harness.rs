//! Smoke tests of the integration-test harness itself (`tests/support`): the real brokers
//! start, accept and refuse connections, log, stop, restart and clean up. Only raw TCP and
//! rumqttc's public codec are used, never the daemon.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{ConnectReturnCode, Packet};
use rumqttc::v5::mqttbytes::v5::ConnectReturnCode as ConnectReturnCode5;
use support::{EmbeddedBroker, Mosquitto, raw};

const LOG_TIMEOUT: Duration = Duration::from_secs(5);

#[test]
fn free_port_is_bindable_on_loopback() {
    let port = support::free_port();
    assert_ne!(port, 0);
    assert!(support::port_is_free(port));
    assert!(!support::port_accepts(port));
}

#[test]
fn write_config_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = support::write_config(dir.path(), "[broker]\nhost = \"127.0.0.1\"\n");
    assert_eq!(path, dir.path().join("config.toml"));
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(
        std::fs::read_to_string(&path)
            .unwrap()
            .contains("127.0.0.1")
    );
    // Rewriting keeps (or restores) 0600.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    support::write_config(dir.path(), "x = 1\n");
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
}

#[test]
fn mosquitto_accepts_connect_and_logs_it() {
    let broker = require_mosquitto!().start().unwrap();
    eprintln!(
        "{} on port {} pid {:?}",
        Mosquitto::version().unwrap_or_default(),
        broker.port(),
        broker.pid()
    );
    assert!(broker.pid().is_some());
    let (stream, ack) = raw::connect_v4(broker.port(), "harness-smoke", None).unwrap();
    assert_eq!(ack.code, ConnectReturnCode::Success);
    assert!(broker.wait_for_log("New client connected", LOG_TIMEOUT));
    assert!(broker.wait_for_log("as harness-smoke", LOG_TIMEOUT));
    stream.disconnect().unwrap();
    assert!(broker.wait_for_log("Client harness-smoke disconnected", LOG_TIMEOUT));
    let config = std::fs::read_to_string(broker.config_path()).unwrap();
    assert!(config.contains(&format!("listener {} 127.0.0.1", broker.port())));
    assert!(config.contains("log_type all"));
}

#[test]
fn mosquitto_password_file_refuses_wrong_password() {
    let broker = require_mosquitto!()
        .with_user("alice", "s3cret")
        .with_user("bob", "other")
        .start()
        .unwrap();
    let passwd = broker.password_file().expect("password file");
    assert!(passwd.starts_with(broker.dir()));

    let (_s, ack) = raw::connect_v4(broker.port(), "alice-1", Some(("alice", "s3cret"))).unwrap();
    assert_eq!(ack.code, ConnectReturnCode::Success);
    let (_s, ack) = raw::connect_v4(broker.port(), "bob-1", Some(("bob", "other"))).unwrap();
    assert_eq!(ack.code, ConnectReturnCode::Success);

    let (_s, ack) = raw::connect_v4(broker.port(), "alice-2", Some(("alice", "wrong"))).unwrap();
    assert_ne!(ack.code, ConnectReturnCode::Success);
    // Mosquitto answers 3.1.1 clients with 5 (not authorised), see notes §6.
    assert_eq!(ack.code, ConnectReturnCode::NotAuthorized);

    let (_s, ack) = raw::connect_v4(broker.port(), "anon", None).unwrap();
    assert_eq!(ack.code, ConnectReturnCode::NotAuthorized);
    assert!(broker.wait_for_log("disconnected, not authorised", LOG_TIMEOUT));
}

#[test]
fn mosquitto_stop_restart_keeps_port_and_persistence() {
    let mut broker = require_mosquitto!().start().unwrap();
    let port = broker.port();
    let first_pid = broker.pid().unwrap();
    let (mut conn, ack) = raw::connect_v4(port, "before-restart", None).unwrap();
    assert_eq!(ack.code, ConnectReturnCode::Success);
    conn.publish_qos1("harness/kept", b"retained", true)
        .unwrap();

    let t = Instant::now();
    broker.stop().unwrap();
    eprintln!("stop took {:?}", t.elapsed());
    assert_eq!(broker.pid(), None);
    assert!(!support::port_accepts(port));
    assert!(broker.log().contains("terminating"));
    assert!(
        broker.dir().join("mosquitto.db").is_file(),
        "persistence saved on stop"
    );

    let mark = broker.log_mark();
    let t = Instant::now();
    broker.restart().unwrap();
    eprintln!("restart took {:?}", t.elapsed());
    assert_eq!(broker.port(), port);
    assert_ne!(broker.pid(), Some(first_pid));
    let (mut conn, ack) = raw::connect_v4(port, "after-restart", None).unwrap();
    assert_eq!(ack.code, ConnectReturnCode::Success);
    // The retained message survived in the persistence database.
    conn.subscribe("harness/kept", QoS::AtMostOnce).unwrap();
    match conn.recv().unwrap() {
        Packet::Publish(p) => {
            assert_eq!(p.topic, "harness/kept");
            assert_eq!(&p.payload[..], b"retained");
            assert!(p.retain);
        }
        other => panic!("expected the retained PUBLISH, got {other:?}"),
    }
    assert!(broker.wait_for_log_since(mark, "as after-restart", LOG_TIMEOUT));
    assert!(!broker.log_since(mark).contains("as before-restart"));

    // A crash, then a start on the same port.
    broker.kill().unwrap();
    assert!(!broker.is_running());
    broker.start_again().unwrap();
    let (_s, ack) = raw::connect_v4(port, "after-kill", None).unwrap();
    assert_eq!(ack.code, ConnectReturnCode::Success);
    assert_eq!(broker.log_count(" starting"), 3, "three runs in one log");
}

#[test]
fn mosquitto_wait_for_log_is_bounded() {
    let broker = require_mosquitto!().start().unwrap();
    assert!(broker.wait_for_log("Opening ipv4 listen socket", LOG_TIMEOUT));
    let t = Instant::now();
    assert!(!broker.wait_for_log("this line never appears", Duration::from_millis(300)));
    let elapsed = t.elapsed();
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
}

#[test]
fn mosquitto_options_reach_the_config() {
    let broker = require_mosquitto!()
        .persistence(false)
        .max_qos(1)
        .max_inflight_messages(20)
        .max_packet_size(64 * 1024)
        .extra_config("max_keepalive 120")
        .start()
        .unwrap();
    let config = std::fs::read_to_string(broker.config_path()).unwrap();
    for line in [
        "persistence false",
        "max_qos 1",
        "max_inflight_messages 20",
        "max_packet_size 65536",
        "max_keepalive 120",
    ] {
        assert!(config.lines().any(|l| l == line), "{line:?} in\n{config}");
    }
    let (_s, ack) = raw::connect_v4(broker.port(), "opts", None).unwrap();
    assert_eq!(ack.code, ConnectReturnCode::Success);
}

#[test]
fn mosquitto_bad_config_fails_start_with_log_tail() {
    let err = require_mosquitto!()
        .extra_config("this_is_not_an_option 1")
        .start()
        .unwrap_err()
        .to_string();
    assert!(err.contains("exited during startup"), "{err}");
    assert!(err.contains("this_is_not_an_option"), "{err}");
}

#[test]
fn mosquitto_drop_kills_process_and_removes_dir() {
    let broker = require_mosquitto!().start().unwrap();
    let pid = broker.pid().unwrap();
    let dir = broker.dir().to_path_buf();
    let port = broker.port();
    drop(broker);
    assert!(!dir.exists(), "temp dir removed");
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "process gone");
    assert!(!support::port_accepts(port));
}

#[test]
fn rumqttd_accepts_connect_on_v4_and_v5() {
    let broker = support::embedded();
    assert_ne!(broker.port(), broker.v5_port());
    let (v4_conn, ack) = raw::connect_v4(broker.port(), "embedded-v4", None).unwrap();
    assert_eq!(ack.code, ConnectReturnCode::Success);
    // The v4 connection stays open: a DISCONNECT just before this CONNECT can make
    // rumqttd drop the new connection (see `EmbeddedBroker`'s docs).
    let (_v5_conn, ack) = raw::connect_v5(broker.v5_port(), "embedded-v5", None).unwrap();
    assert_eq!(ack.code, ConnectReturnCode5::Success);
    v4_conn.disconnect().unwrap();

    // The shared broker is started once per process.
    assert_eq!(support::embedded().port(), broker.port());
}

#[test]
fn rumqttd_independent_instances() {
    let a = EmbeddedBroker::start().unwrap();
    let b = EmbeddedBroker::start().unwrap();
    assert_ne!(a.port(), b.port());
    let (_s, ack) = raw::connect_v4(b.port(), "embedded-b", None).unwrap();
    assert_eq!(ack.code, ConnectReturnCode::Success);
}
