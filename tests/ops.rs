//! Operations (SPEC §5, §6) through the real binary against a real mosquitto: sd_notify
//! readiness, status, watchdog and stop; SIGHUP reload; the retained presence record and
//! the Last Will; JSON and native journald log records.
//!
//! The peer side is a raw MQTT 3.1.1 client driven step by step (the examiner checks
//! replies against one fixed table, and a reload changes the table mid-run). It subscribes
//! at QoS 0, so it never owes the broker an acknowledgement.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4;
use support::proxy::Proxy;
use support::raw::{self, RawV4};
use support::{Mosquitto, free_port, send_signal, wait_until, write_config};

const BIN: &str = env!("CARGO_BIN_EXE_mqtt-responder");
const UUID: &str = "6533a9a8-5b52-4ccb-95c1-4b75383d5c38";
/// Bound for every single wait below; far above what each step takes.
const STEP: Duration = Duration::from_secs(15);

/// A message the peer received.
#[derive(Debug, Clone)]
struct Msg {
    topic: String,
    payload: String,
    retain: bool,
}

/// The peer: one raw connection that keeps every PUBLISH it receives.
struct Peer {
    conn: RawV4,
    inbox: Vec<Msg>,
    next_pkid: u16,
}

impl Peer {
    fn connect(port: u16, id: &str, login: Option<(&str, &str)>) -> Peer {
        let (conn, ack) = raw::connect_v4(port, id, login).expect("peer connects");
        assert_eq!(ack.code, v4::ConnectReturnCode::Success);
        Peer {
            conn,
            inbox: Vec::new(),
            next_pkid: 1,
        }
    }

    /// SUBSCRIBE at QoS 0 and wait for its SUBACK, keeping messages that arrive meanwhile.
    fn subscribe(&mut self, filter: &str) {
        let pkid = self.next_pkid;
        self.next_pkid += 1;
        let mut sub = v4::Subscribe::new(filter, QoS::AtMostOnce);
        sub.pkid = pkid;
        self.conn.send(&v4::Packet::Subscribe(sub)).unwrap();
        let deadline = Instant::now() + STEP;
        while Instant::now() < deadline {
            match self.conn.recv() {
                Ok(v4::Packet::SubAck(ack)) if ack.pkid == pkid => return,
                Ok(v4::Packet::Publish(p)) => self.keep(p),
                Ok(_) | Err(_) => {}
            }
        }
        panic!("no SUBACK for {filter}");
    }

    fn publish(&mut self, topic: &str, payload: &str) {
        let p = v4::Publish::new(topic, QoS::AtMostOnce, payload.as_bytes().to_vec());
        self.conn.send(&v4::Packet::Publish(p)).unwrap();
    }

    fn keep(&mut self, p: v4::Publish) {
        self.inbox.push(Msg {
            topic: p.topic,
            payload: String::from_utf8_lossy(&p.payload).into_owned(),
            retain: p.retain,
        });
    }

    /// Whether a message that matches is kept or arrives within [`STEP`] (taken if so).
    fn try_expect(&mut self, matches: impl Fn(&Msg) -> bool) -> bool {
        let deadline = Instant::now() + STEP;
        while Instant::now() < deadline {
            if let Some(i) = self.inbox.iter().position(&matches) {
                self.inbox.remove(i);
                return true;
            }
            if let Ok(v4::Packet::Publish(p)) = self.conn.recv() {
                self.keep(p);
            }
        }
        false
    }

    /// Takes the first kept or arriving message that matches, within [`STEP`].
    fn expect(&mut self, what: &str, matches: impl Fn(&Msg) -> bool) -> Msg {
        let deadline = Instant::now() + STEP;
        loop {
            if let Some(i) = self.inbox.iter().position(&matches) {
                return self.inbox.remove(i);
            }
            assert!(
                Instant::now() < deadline,
                "peer: no {what} within {STEP:?}; got {:?}",
                self.inbox
            );
            // A read timeout is just another turn of the bounded loop.
            if let Ok(v4::Packet::Publish(p)) = self.conn.recv() {
                self.keep(p);
            }
        }
    }

    /// Sends `command` and returns the reply payload.
    fn ask(&mut self, command: &str) -> String {
        self.publish(UUID, command);
        let topic = format!("{UUID}/{command}");
        self.expect(&format!("reply to {command}"), |m| m.topic == topic)
            .payload
    }
}

/// The notification socket a test owns, read all the time as systemd reads it: a unix
/// datagram queue holds only `net.unix.max_dgram_qlen` (10) messages, and a full one blocks
/// the sender, so a test that read only while it waits would stall the daemon it watches.
struct NotifySocket {
    path: PathBuf,
    lines: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    reader: Option<thread::JoinHandle<()>>,
}

impl NotifySocket {
    /// Bound on the reader's life, far above any test's.
    const LIFETIME: Duration = Duration::from_secs(600);

    fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (lines, stop) = (Arc::clone(&lines), Arc::clone(&stop));
            thread::spawn(move || {
                let end = Instant::now() + Self::LIFETIME;
                let mut buf = [0u8; 4096];
                while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                    if let Ok(n) = socket.recv(&mut buf) {
                        let text = String::from_utf8_lossy(&buf[..n]);
                        lines
                            .lock()
                            .unwrap()
                            .extend(text.lines().map(str::to_owned));
                    }
                }
            })
        };
        NotifySocket {
            path,
            lines,
            stop,
            reader: Some(reader),
        }
    }

    /// Every line received so far, in order.
    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits until a line satisfies `cond`; returns its index.
    fn wait(&self, what: &str, cond: impl Fn(&str) -> bool) -> usize {
        let mut found = None;
        wait_until(STEP, || {
            found = self.lines().iter().position(|l| cond(l));
            found.is_some()
        });
        found.unwrap_or_else(|| panic!("no {what} notification; got {:?}", self.lines()))
    }

    fn count(&self, line: &str) -> usize {
        self.lines().iter().filter(|l| *l == line).count()
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(reader) = self.reader.take() {
            reader.join().ok();
        }
    }
}

/// The daemon under test, its stderr in a file so it can be read while it runs.
struct Daemon {
    child: Child,
    stderr: PathBuf,
}

impl Daemon {
    fn spawn(config: &Path, env: &[(&str, &str)]) -> Daemon {
        let stderr = config.with_file_name("daemon.log");
        let mut cmd = Command::new(BIN);
        cmd.args(["run", "--config", config.to_str().unwrap()])
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("JOURNAL_STREAM")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&stderr).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Daemon {
            child: cmd.spawn().expect("start the daemon"),
            stderr,
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn wait_for_log(&self, pattern: &str) {
        assert!(
            wait_until(STEP, || self.log().contains(pattern)),
            "no {pattern:?} in the daemon's log:\n{}",
            self.log()
        );
    }

    fn signal(&self, signal: &str) {
        send_signal(self.child.id(), signal).unwrap();
    }

    /// Waits (bounded) for the exit and returns its code.
    fn exit_code(&mut self) -> Option<i32> {
        let mut status = None;
        wait_until(STEP, || {
            status = self.child.try_wait().unwrap();
            status.is_some()
        });
        match status {
            Some(s) => s.code(),
            None => {
                self.child.kill().ok();
                panic!("the daemon did not exit; log:\n{}", self.log());
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Strictly our child, by PID, if a failed assertion left it running.
        if matches!(self.child.try_wait(), Ok(None)) {
            self.child.kill().ok();
            self.child.wait().ok();
        }
    }
}

fn config(port: u16, user: &str, extra: &str) -> String {
    format!(
        "[broker]\nhost = \"127.0.0.1\"\nport = {port}\n\n\
         [session]\nuser_id = \"{user}\"\nqos = 1\nlogin_timeout_secs = 30\n\
         status_interval_secs = 3600\n{extra}\n\
         [reconnect]\ninitial_delay_ms = 50\nmax_delay_secs = 1\nmax_attempts = 20\n"
    )
}

/// Peer side of the login: the login arrives, the UUID goes out, and once the daemon has
/// subscribed to the command topic (seen in the broker's log) the peer listens for replies.
fn hand_out_uuid(peer: &mut Peer, broker: &Mosquitto, mark: usize, user: &str) {
    peer.expect("login", |m| m.topic == "login" && m.payload == user);
    peer.publish(&format!("{user}/UUID"), UUID);
    assert!(
        broker.wait_for_log_since(mark, &format!("{UUID} (QoS"), STEP),
        "the daemon did not subscribe to the command topic"
    );
    peer.subscribe(&format!("{UUID}/+"));
}

#[test]
fn notify_ready_after_login_status_watchdog_and_stopping() {
    let broker = require_mosquitto!().start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let user = "ops-notify";
    let path = write_config(dir.path(), &config(broker.port(), user, ""));
    let notify = NotifySocket::bind(dir.path());
    let mut peer = Peer::connect(broker.port(), "peer-notify", None);
    peer.subscribe("login");
    let mark = broker.log_mark();
    let mut daemon = Daemon::spawn(
        &path,
        &[
            ("NOTIFY_SOCKET", notify.path.to_str().unwrap()),
            ("WATCHDOG_USEC", "300000"),
        ],
    );

    // READY=1 comes without any UUID from the peer: a slow peer cannot fail the start.
    let connecting = notify.wait("STATUS=connecting", |l| {
        l == format!("STATUS=connecting to 127.0.0.1:{}", broker.port())
    });
    let ready = notify.wait("READY=1", |l| l == "READY=1");
    let waiting = notify.wait("waiting status", |l| l == "STATUS=waiting for UUID");
    assert!(connecting < ready, "{:?}", notify.lines());
    assert!(
        waiting.abs_diff(ready) <= 2,
        "READY=1 belongs with the login: {:?}",
        notify.lines()
    );
    peer.expect("login", |m| m.topic == "login" && m.payload == user);
    assert_eq!(notify.count("READY=1"), 1);

    peer.publish(&format!("{user}/UUID"), UUID);
    assert!(broker.wait_for_log_since(mark, &format!("{UUID} (QoS"), STEP));
    peer.subscribe(&format!("{UUID}/+"));
    notify.wait("answering status", |l| {
        l == format!("STATUS=answering on {UUID}: 0 replies")
    });
    for (command, reply) in [("CMD1", "Apple"), ("CMD4", "Rat"), ("CMD7", "Toy")] {
        assert_eq!(peer.ask(command), reply);
    }
    // Refreshed by a timer (at most every 5 s), not once per reply.
    notify.wait("refreshed status", |l| {
        l == format!("STATUS=answering on {UUID}: 3 replies")
    });
    assert!(
        !notify.lines().iter().any(|l| l.ends_with(": 1 replies")),
        "status sent per reply: {:?}",
        notify.lines()
    );
    // The watchdog (300 ms) is pinged every 150 ms from the event loop.
    assert!(
        notify.count("WATCHDOG=1") >= 5,
        "{} pings: {:?}",
        notify.count("WATCHDOG=1"),
        notify.lines()
    );

    daemon.signal("TERM");
    notify.wait("STOPPING=1", |l| l == "STOPPING=1");
    assert_eq!(daemon.exit_code(), Some(0), "{}", daemon.log());
    assert_eq!(notify.count("READY=1"), 1, "{:?}", notify.lines());
}

/// A broker (or the Wi-Fi) down at boot: READY=1 as soon as the first attempt has failed,
/// so `systemctl start` returns and boot goes on; the 5th failed attempt in a row is a WARN
/// with the cause; a broker started later on that port is logged in to, same process.
#[test]
fn a_broker_down_at_start_is_ready_at_once_warns_on_the_5th_failure_and_is_reached_later() {
    let builder = require_mosquitto!();
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let user = "ops-down";
    let toml = config(port, user, "").replace("max_attempts = 20", "max_attempts = 0");
    let path = write_config(dir.path(), &toml);
    let notify = NotifySocket::bind(dir.path());
    let mut daemon = Daemon::spawn(&path, &[("NOTIFY_SOCKET", notify.path.to_str().unwrap())]);

    let ready = notify.wait("READY=1", |l| l == "READY=1");
    let reconnecting = notify.wait("STATUS=reconnecting", |l| {
        l.starts_with("STATUS=reconnecting in")
    });
    assert!(ready <= reconnecting + 1, "{:?}", notify.lines());
    assert!(!daemon.log().contains("logged in"), "{}", daemon.log());
    // Attempts 1-4 are INFO, the 5th is the first WARN (the 15th the next).
    daemon.wait_for_log("(5 failed attempts in a row)");
    let log = daemon.log();
    let warn = log
        .lines()
        .find(|l| l.contains("(5 failed attempts in a row)"))
        .unwrap();
    assert!(
        warn.contains("WARN") && warn.contains(&format!("127.0.0.1:{port}")),
        "{warn}"
    );
    // Up to that WARN (more attempts may have failed since): four INFO retries before it.
    let retries: Vec<&str> = log
        .lines()
        .take_while(|l| !l.contains("(5 failed attempts in a row)"))
        .filter(|l| l.contains("reconnecting in"))
        .collect();
    assert_eq!(retries.len(), 4, "{log}");
    assert!(retries.iter().all(|l| l.contains("INFO")), "{retries:#?}");

    // The broker comes up: the same process connects and logs in.
    let broker = builder.port(port).start().unwrap();
    let mut peer = Peer::connect(broker.port(), "peer-down", None);
    peer.subscribe("login");
    daemon.wait_for_log("logged in, waiting for the UUID");
    assert_eq!(notify.count("READY=1"), 1, "{:?}", notify.lines());
    daemon.signal("TERM");
    assert_eq!(daemon.exit_code(), Some(0), "{}", daemon.log());
}

/// A reading of `/proc/PID/status` in KiB (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// SPEC §2 Floods: 200,000 QoS 0 commands to a daemon replying at QoS 2, through a proxy
/// that holds back what the daemon sends until the flood has overflowed: no reply can be
/// acknowledged meanwhile, so by construction, not by speed, `max_pending` (1000, the
/// default) replies wait and the commands beyond them are dropped, counted and reported
/// at WARN at most every 10 s. The peak RSS stays within 2 MiB of the idle size, and a
/// QoS 1 command sent after the flood is still answered.
#[test]
fn a_qos0_flood_is_dropped_beyond_max_pending_and_memory_stays_flat() {
    const FLOOD: usize = 200_000;
    const MAX_PENDING: u64 = 1000;
    let broker = require_mosquitto!().start().unwrap();
    let proxy = Proxy::start(broker.port());
    let dir = tempfile::tempdir().unwrap();
    let user = "ops-flood";
    let toml = config(proxy.port(), user, &format!("max_pending = {MAX_PENDING}"))
        .replace("qos = 1", "qos = 2");
    let path = write_config(dir.path(), &toml);
    let mut peer = Peer::connect(broker.port(), "peer-flood", None);
    peer.subscribe("login");
    let mut daemon = Daemon::spawn(&path, &[]);
    peer.expect("login", |m| m.topic == "login" && m.payload == user);
    peer.publish(&format!("{user}/UUID"), UUID);
    daemon.wait_for_log("answering commands");
    // The marker's replies only: the flood's go to no subscriber.
    let marker = format!("{UUID}/CMD2");
    peer.subscribe(&marker);
    assert_eq!(peer.ask("CMD2"), "Cat");
    let pid = daemon.child.id();
    let idle = status_kib(pid, "VmRSS");

    proxy.hold_upstream();
    let (mut flooder, _) = raw::connect_v4(broker.port(), "peer-flooder", None).unwrap();
    let command = v4::Publish::new(UUID, QoS::AtMostOnce, b"CMD1".to_vec());
    for _ in 0..FLOOD / 1000 {
        flooder
            .send_batch((0..1000).map(|_| v4::Packet::Publish(command.clone())))
            .unwrap();
    }
    // Its PUBACK: the broker has taken every command before it.
    flooder.publish_qos1(UUID, b"CMD2", false).unwrap();
    // The first drop is reported at once.
    daemon.wait_for_log("(session.max_pending)");
    proxy.forward();
    let answered = peer.try_expect(|m| m.topic == marker);
    assert!(
        answered,
        "no reply to the command after the flood; log:\n{}",
        daemon.log()
    );
    let peak = status_kib(pid, "VmHWM");
    eprintln!("flood: idle RSS {idle} KiB, peak {peak} KiB");
    assert!(
        peak <= idle + 2048,
        "peak RSS {peak} KiB, idle {idle} KiB: more than 2 MiB for a flood"
    );

    peer.publish(UUID, "Well done my IoT!");
    assert_eq!(daemon.exit_code(), Some(0), "{}", daemon.log());
    let log = daemon.log();
    let summary = log.lines().find(|l| l.contains("summary:")).unwrap();
    let overflowed: u64 = summary
        .split(" dropped (")
        .nth(1)
        .and_then(|rest| rest.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no flood drops in the summary: {summary}"));
    let answered: u64 = summary
        .split("CMD1=")
        .nth(1)
        .and_then(|rest| rest.split([',', ')']).next()?.parse().ok())
        .unwrap();
    assert!(overflowed >= 1, "{summary}");
    assert!(
        answered + overflowed <= FLOOD as u64 && answered >= MAX_PENDING,
        "{summary}"
    );
    let warns: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("(session.max_pending)"))
        .collect();
    let reported: u64 = warns
        .iter()
        .filter_map(|l| {
            l.split("dropped ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    assert_eq!(reported, overflowed, "{warns:#?}");
    // At most one WARN per 10 s of the run, plus the first.
    let run_secs: f64 = summary
        .split(" after ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next()?.parse().ok())
        .unwrap();
    assert!(
        warns.len() as f64 <= 1.0 + run_secs / 10.0 + 1.0,
        "{} WARNs in {run_secs} s: {warns:#?}",
        warns.len()
    );
}

#[test]
fn sighup_swaps_the_reply_table_without_reconnecting_and_keeps_it_on_a_bad_file() {
    let broker = require_mosquitto!().start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let user = "ops-reload";
    let replies = "[replies]\nCMD1 = \"Apple\"\nCMD2 = \"Cat\"\n";
    let path = write_config(dir.path(), &config(broker.port(), user, replies));
    let notify = NotifySocket::bind(dir.path());
    let mut peer = Peer::connect(broker.port(), "peer-reload", None);
    peer.subscribe("login");
    let mark = broker.log_mark();
    let mut daemon = Daemon::spawn(&path, &[("NOTIFY_SOCKET", notify.path.to_str().unwrap())]);
    hand_out_uuid(&mut peer, &broker, mark, user);
    assert_eq!(peer.ask("CMD1"), "Apple");

    // A new table and a setting that needs a restart.
    let client = format!("mqtt-responder-{user}");
    let connected = broker.log().matches(&format!("as {client} (")).count();
    let new_replies = "[replies]\nCMD1 = \"Pear\"\nCMD9 = \"Nine\"\n[log]\nlevel = \"debug\"\n";
    let new = config(broker.port(), user, new_replies).replace("qos = 1", "qos = 2");
    write_config(dir.path(), &new);
    daemon.signal("HUP");
    daemon.wait_for_log("2 replies, log level debug");
    assert!(
        daemon
            .log()
            .contains("session.qos changed; needs restart, not applied"),
        "{}",
        daemon.log()
    );
    assert_eq!(peer.ask("CMD1"), "Pear");
    assert_eq!(peer.ask("CMD9"), "Nine");
    // The new log level is in force: per-reply DEBUG lines appear.
    daemon.wait_for_log("reply acknowledged");
    let reloading = notify.wait("RELOADING=1", |l| l == "RELOADING=1");
    assert!(
        notify.lines()[reloading..].iter().any(|l| l == "READY=1"),
        "READY=1 after the reload: {:?}",
        notify.lines()
    );

    // An invalid file: logged with its key, the table in force stays.
    let bad = format!("{new}\n").replace("qos = 2", "qos = 3");
    write_config(dir.path(), &bad);
    daemon.signal("HUP");
    daemon.wait_for_log("session.qos = 3, expected 0, 1 or 2; keeping the current configuration");
    assert_eq!(peer.ask("CMD1"), "Pear");
    assert_eq!(
        broker.log().matches(&format!("as {client} (")).count(),
        connected,
        "a reload must not reconnect"
    );

    peer.publish(UUID, "Well done my IoT!");
    assert_eq!(daemon.exit_code(), Some(0), "{}", daemon.log());
    assert!(daemon.log().contains("summary: Completed"));
}

#[test]
fn presence_online_offline_completed_and_the_will_after_sigkill() {
    let broker = require_mosquitto!().start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let user = "ops-presence";
    let status = format!("{user}/status");
    let path = write_config(dir.path(), &config(broker.port(), user, ""));
    let mut peer = Peer::connect(broker.port(), "peer-presence", None);
    peer.subscribe("login");
    peer.subscribe(&status);
    let json = |m: &Msg| serde_json::from_str::<serde_json::Value>(&m.payload).unwrap();

    // A completed run: online (before and after the UUID), then offline "completed".
    let mark = broker.log_mark();
    let mut daemon = Daemon::spawn(&path, &[]);
    let online = peer.expect("online record", |m| m.topic == status);
    let v = json(&online);
    assert_eq!(v["state"], "online", "{v}");
    assert!(v["uuid"].is_null(), "{v}");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["answered"], 0);
    // 3.1.1: the broker's grant is not known before the first SUBACK.
    assert!(v["qos"].is_null(), "{v}");
    hand_out_uuid(&mut peer, &broker, mark, user);
    let with_uuid = peer.expect("online record with the UUID", |m| m.topic == status);
    assert_eq!(json(&with_uuid)["uuid"], UUID);
    assert_eq!(json(&with_uuid)["qos"], 1, "the effective QoS");
    assert_eq!(peer.ask("CMD2"), "Cat");
    peer.publish(UUID, "Well done my IoT!");
    let offline = peer.expect("offline record", |m| m.topic == status);
    assert_eq!(
        json(&offline),
        serde_json::json!({"state": "offline", "reason": "completed"})
    );
    assert_eq!(daemon.exit_code(), Some(0), "{}", daemon.log());
    assert!(
        !peer.inbox.iter().any(|m| m.topic.ends_with("/status")),
        "presence after the farewell: {:?}",
        peer.inbox
    );

    // A run killed without warning: the broker publishes the Will.
    let mut daemon = Daemon::spawn(&path, &[]);
    let online = peer.expect("online record", |m| {
        m.topic == status && m.payload.contains("online")
    });
    assert_eq!(json(&online)["state"], "online");
    daemon.child.kill().unwrap();
    daemon.child.wait().unwrap();
    let will = peer.expect("the Will", |m| m.topic == status);
    assert_eq!(
        json(&will),
        serde_json::json!({"state": "offline", "reason": "lost"})
    );
    // Retained: whoever looks later sees it.
    let mut late = Peer::connect(broker.port(), "peer-late", None);
    late.subscribe(&status);
    let retained = late.expect("retained record", |m| m.topic == status);
    assert!(retained.retain);
    assert_eq!(json(&retained)["reason"], "lost");
}

#[test]
fn json_log_lines_carry_the_fields_and_no_secret() {
    const SECRET: &str = "n0t-in-any-L0g";
    let broker = require_mosquitto!()
        .with_user("ops-json", SECRET)
        .with_user("peer", "peer-pw")
        .start()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let user = "ops-json";
    let extra = "[log]\nformat = \"json\"\nlevel = \"trace\"\n";
    let toml = config(broker.port(), user, extra).replace(
        "[session]",
        &format!("username = \"ops-json\"\npassword = \"{SECRET}\"\n\n[session]"),
    );
    let path = write_config(dir.path(), &toml);
    let mut peer = Peer::connect(broker.port(), "peer-json", Some(("peer", "peer-pw")));
    peer.subscribe("login");
    let mark = broker.log_mark();
    let mut daemon = Daemon::spawn(&path, &[]);
    hand_out_uuid(&mut peer, &broker, mark, user);
    assert_eq!(peer.ask("CMD4"), "Rat");
    peer.publish(UUID, "Well done my IoT!");
    assert_eq!(daemon.exit_code(), Some(0), "{}", daemon.log());

    let log = daemon.log();
    assert!(!log.contains(SECRET), "the password leaked:\n{log}");
    let records: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let find = |message: &str| {
        records
            .iter()
            .find(|r| {
                r["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with(message))
            })
            .unwrap_or_else(|| panic!("no {message:?} record in:\n{log}"))
    };
    let connecting = find("connecting to");
    assert_eq!(connecting["level"], "INFO");
    assert_eq!(connecting["broker"], format!("127.0.0.1:{}", broker.port()));
    assert_eq!(connecting["reconnect_attempt"], 1);
    let reply = find("reply acknowledged");
    assert_eq!(reply["level"], "DEBUG");
    assert_eq!(reply["command"], "CMD4");
    assert_eq!(reply["mqtt_topic"], format!("{UUID}/CMD4"));
    assert_eq!(reply["session_uuid"], UUID);
    assert_eq!(reply["qos"], 1);
    assert!(reply["latency_us"].as_u64().is_some(), "{reply}");
    assert_eq!(find("UUID received")["session_uuid"], UUID);
}

/// Native journald records, read the way journald would: the daemon runs in a private
/// mount namespace (`unshare`, root only) whose `/run/systemd/journal/socket` is the test's
/// own datagram socket.
#[test]
fn journald_records_have_priorities_and_upper_case_fields() {
    const SECRET: &str = "n0t-in-the-J0urnal";
    const WRONG: &str = "n0r-this-0ne";
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if !root && !support::in_ci() {
        eprintln!("SKIPPED: the journald test needs root for unshare --mount");
        return;
    }
    let broker = require_mosquitto!()
        .with_user("ops-journal", SECRET)
        .with_user("peer", "peer-pw")
        .start()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let user = "ops-journal";
    let config_with = |password: &str| {
        let toml = config(
            broker.port(),
            user,
            "[log]\nformat = \"journald\"\nlevel = \"trace\"\n",
        )
        .replace(
            "[session]",
            &format!("username = \"{user}\"\npassword = \"{password}\"\n\n[session]"),
        );
        write_config(dir.path(), &toml)
    };
    let journal = dir.path().join("journal.sock");
    let socket = UnixDatagram::bind(&journal).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let stderr = dir.path().join("daemon.log");
    let daemon_log = || fs::read_to_string(&stderr).unwrap_or_default();
    let spawn = |config: &Path| {
        let script = "mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/journal \
                      && touch /run/systemd/journal/socket \
                      && mount --bind \"$JOURNAL\" /run/systemd/journal/socket \
                      && exec \"$BIN\" run --config \"$CONFIG\"";
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", script])
            .env("JOURNAL", &journal)
            .env("BIN", BIN)
            .env("CONFIG", config)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap()
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut drain = |records: &mut Vec<BTreeMap<String, String>>| {
        for _ in 0..10_000 {
            match socket.recv(&mut buf) {
                // tracing-journald probes the socket with an empty datagram at start.
                Ok(0) => {}
                Ok(n) => records.push(parse_journal(&buf[..n])),
                Err(_) => return,
            }
        }
    };
    let exit_code = |child: &mut Child| {
        let mut status = None;
        wait_until(STEP, || {
            status = child.try_wait().unwrap();
            status.is_some()
        });
        if status.is_none() {
            child.kill().ok();
            child.wait().ok();
            panic!("the daemon did not exit; stderr:\n{}", daemon_log());
        }
        status.unwrap().code()
    };
    let find = |records: &[BTreeMap<String, String>], message: &str| {
        records
            .iter()
            .find(|r| r.get("MESSAGE").is_some_and(|m| m.starts_with(message)))
            .cloned()
            .unwrap_or_else(|| panic!("no {message:?} record in {records:#?}"))
    };

    // A whole run at TRACE, with a password and an unknown command (a WARN).
    let mut peer = Peer::connect(broker.port(), "peer-journal", Some(("peer", "peer-pw")));
    peer.subscribe("login");
    let mark = broker.log_mark();
    let mut child = spawn(&config_with(SECRET));
    let mut records: Vec<BTreeMap<String, String>> = Vec::new();
    let deadline = Instant::now() + STEP;
    while !records
        .iter()
        .any(|r| r.get("MESSAGE").is_some_and(|m| m.contains("logged in")))
    {
        assert!(
            Instant::now() < deadline,
            "no login record; stderr:\n{}",
            daemon_log()
        );
        drain(&mut records);
    }
    hand_out_uuid(&mut peer, &broker, mark, user);
    assert_eq!(peer.ask("CMD3"), "Dog");
    peer.publish(UUID, "CMD9");
    peer.publish(UUID, "Well done my IoT!");
    assert_eq!(exit_code(&mut child), Some(0), "{}", daemon_log());
    drain(&mut records);

    let connecting = find(&records, "connecting to");
    assert_eq!(connecting["PRIORITY"], "6", "INFO is journald's info");
    assert_eq!(connecting["SYSLOG_IDENTIFIER"], "mqtt-responder");
    assert_eq!(connecting["BROKER"], format!("127.0.0.1:{}", broker.port()));
    assert_eq!(connecting["RECONNECT_ATTEMPT"], "1");
    let reply = find(&records, "reply acknowledged");
    assert_eq!(reply["PRIORITY"], "7");
    assert_eq!(reply["COMMAND"], "CMD3");
    assert_eq!(reply["MQTT_TOPIC"], format!("{UUID}/CMD3"));
    assert_eq!(reply["SESSION_UUID"], UUID);
    assert_eq!(reply["QOS"], "1");
    assert!(reply["LATENCY_US"].parse::<u64>().is_ok());
    assert_eq!(
        find(&records, "unknown command")["PRIORITY"],
        "4",
        "WARN is warning"
    );
    assert!(
        records
            .iter()
            .all(|r| r.contains_key("PRIORITY") && r.contains_key("MESSAGE")),
        "every record has a priority and a message: {records:#?}"
    );
    assert!(
        daemon_log().is_empty(),
        "nothing on stderr with journald: {}",
        daemon_log()
    );

    // Credentials refused: an ERROR, then exit 77.
    let mut child = spawn(&config_with(WRONG));
    let mut refused = Vec::new();
    assert_eq!(exit_code(&mut child), Some(77), "{}", daemon_log());
    drain(&mut refused);
    let error = find(&refused, &format!("broker 127.0.0.1:{}", broker.port()));
    assert_eq!(error["PRIORITY"], "3", "ERROR is err: {error:?}");
    assert!(error["MESSAGE"].contains("refused the credentials of user ops-journal"));

    // No field of any record, at TRACE, holds either password.
    for record in records.iter().chain(&refused) {
        for (key, value) in record {
            assert!(
                !value.contains(SECRET) && !value.contains(WRONG),
                "a password in {key}: {record:?}"
            );
        }
    }
}

/// journald's native datagram: `KEY=value\n`, or `KEY\n` + little-endian u64 length +
/// value + `\n` for values that may hold newlines.
fn parse_journal(mut data: &[u8]) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    while let Some(eol) = data.iter().position(|&b| b == b'\n') {
        let line = &data[..eol];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            fields.insert(
                String::from_utf8_lossy(&line[..eq]).into_owned(),
                String::from_utf8_lossy(&line[eq + 1..]).into_owned(),
            );
            data = &data[eol + 1..];
        } else {
            let key = String::from_utf8_lossy(line).into_owned();
            let rest = &data[eol + 1..];
            let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
            let value = &rest[8..8 + len];
            fields.insert(key, String::from_utf8_lossy(value).into_owned());
            data = &rest[8 + len + 1..];
        }
    }
    fields
}

#[test]
fn presence_without_retain_when_the_broker_has_none() {
    let broker = require_mosquitto!()
        .extra_config("retain_available false")
        .start()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let user = "ops-noretain";
    let status = format!("{user}/status");
    let toml =
        config(broker.port(), user, "").replace("[session]", "protocol = \"5\"\n\n[session]");
    let path = write_config(dir.path(), &toml);
    let mut peer = Peer::connect(broker.port(), "peer-noretain", None);
    peer.subscribe("login");
    peer.subscribe(&status);
    let mark = broker.log_mark();
    let mut daemon = Daemon::spawn(&path, &[]);
    let online = peer.expect("online record", |m| m.topic == status);
    assert!(online.payload.contains("\"online\""), "{online:?}");
    hand_out_uuid(&mut peer, &broker, mark, user);
    assert_eq!(peer.ask("CMD5"), "Boy");
    peer.publish(UUID, "Well done my IoT!");
    peer.expect("offline record", |m| {
        m.topic == status && m.payload.contains("completed")
    });
    assert_eq!(daemon.exit_code(), Some(0), "{}", daemon.log());
    let log = daemon.log();
    assert!(log.contains("without retain"), "{log}");
    assert!(
        log.contains("connecting again with a Will that is not retained"),
        "{log}"
    );
}

#[test]
fn presence_is_published_again_after_a_broker_restart() {
    let mut broker = require_mosquitto!().start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let user = "ops-restart";
    let status = format!("{user}/status");
    let path = write_config(dir.path(), &config(broker.port(), user, ""));
    let mut peer = Peer::connect(broker.port(), "peer-restart", None);
    peer.subscribe("login");
    peer.subscribe(&status);
    let json = |m: &Msg| serde_json::from_str::<serde_json::Value>(&m.payload).unwrap();
    let mark = broker.log_mark();
    let mut daemon = Daemon::spawn(&path, &[]);
    peer.expect("online record", |m| m.topic == status);
    hand_out_uuid(&mut peer, &broker, mark, user);
    assert_eq!(peer.ask("CMD1"), "Apple");

    // The broker goes away and comes back (persistence on): the daemon reconnects, resumes
    // and says again that it is online, counting the reconnect.
    broker.restart().unwrap();
    let mut after = Peer::connect(broker.port(), "peer-restart-2", None);
    after.subscribe(&status);
    let again = after.expect("online record after the restart", |m| {
        m.topic == status && json(m)["reconnects"].as_u64().is_some_and(|n| n >= 1)
    });
    let v = json(&again);
    assert_eq!(v["state"], "online", "{v}");
    assert_eq!(v["uuid"], UUID, "{v}");
    assert_eq!(v["answered"], 1, "{v}");
    assert_eq!(
        v["qos"], 1,
        "the broker kept the session and its grants: {v}"
    );
    // Mosquitto published the Will when it went down (the link ended without DISCONNECT),
    // so a newcomer first sees that retained record, then the fresh online one.
    assert!(
        after
            .inbox
            .iter()
            .all(|m| m.topic != status || m.payload.contains("lost")),
        "{:?}",
        after.inbox
    );
    // Still answering on the same UUID, then a clean end.
    after.subscribe(&format!("{UUID}/+"));
    assert_eq!(after.ask("CMD3"), "Dog");
    after.publish(UUID, "Well done my IoT!");
    after.expect("offline record", |m| {
        m.topic == status && m.payload.contains("completed")
    });
    assert_eq!(daemon.exit_code(), Some(0), "{}", daemon.log());
    // The last word, retained for whoever looks next, is the farewell.
    let mut late = Peer::connect(broker.port(), "peer-restart-late", None);
    late.subscribe(&status);
    let last = late.expect("retained record", |m| m.topic == status);
    assert_eq!(json(&last)["reason"], "completed");
}

/// Drain bound used by the stop tests below.
const DRAIN: Duration = Duration::from_secs(2);

/// SIGTERM or SIGINT with a reply in flight (the daemon sits behind a proxy that keeps what
/// it sends, so the reply is certainly unacknowledged): no new work, the acknowledgement is
/// awaited for at most `drain_timeout_secs`, then DISCONNECT and exit 0. `ack` lets the held
/// bytes through after the signal; the daemon must then finish at once. Returns the log and
/// the time from the signal to the exit.
fn stop_with_a_reply_in_flight(broker: &Mosquitto, signal: &str, ack: bool) -> (String, Duration) {
    let proxy = support::proxy::Proxy::start(broker.port());
    let dir = tempfile::tempdir().unwrap();
    let user = format!("ops-drain-{}", signal.to_lowercase());
    let extra = format!("drain_timeout_secs = {}\n", DRAIN.as_secs());
    let path = write_config(dir.path(), &config(proxy.port(), &user, &extra));
    let mut peer = Peer::connect(broker.port(), &format!("peer-{user}"), None);
    peer.subscribe("login");
    let mark = broker.log_mark();
    let mut daemon = Daemon::spawn(&path, &[]);
    hand_out_uuid(&mut peer, broker, mark, &user);
    assert_eq!(peer.ask("CMD1"), "Apple");

    proxy.hold_upstream();
    let held = proxy.held_upstream();
    peer.publish(UUID, "CMD2");
    assert!(
        wait_until(STEP, || proxy.held_upstream() > held),
        "the daemon sent no reply to CMD2:\n{}",
        daemon.log()
    );
    let signalled = Instant::now();
    daemon.signal(signal);
    daemon.wait_for_log(&format!(
        "stopping: waiting up to {DRAIN:?} for 1 in-flight replies"
    ));
    if ack {
        proxy.forward();
    }
    let code = daemon.exit_code();
    let took = signalled.elapsed();
    let log = daemon.log();
    assert_eq!(code, Some(0), "{log}");
    if ack {
        assert_eq!(
            peer.expect("reply to CMD2", |m| m.topic.ends_with("/CMD2"))
                .payload,
            "Cat"
        );
    }
    (log, took)
}

#[test]
fn sigterm_waits_for_the_reply_in_flight_and_exits_once_it_is_acknowledged() {
    let broker = require_mosquitto!().start().unwrap();
    let (log, took) = stop_with_a_reply_in_flight(&broker, "TERM", true);
    assert!(!log.contains("still unacknowledged"), "{log}");
    assert!(log.contains("summary: Stopped"), "{log}");
    assert!(
        took < DRAIN,
        "took {took:?} although the reply was acknowledged:\n{log}"
    );
}

#[test]
fn sigint_gives_up_on_an_unacknowledged_reply_within_drain_timeout_secs() {
    let broker = require_mosquitto!().start().unwrap();
    let (log, took) = stop_with_a_reply_in_flight(&broker, "INT", false);
    assert!(
        log.contains(&format!(
            "1 replies still unacknowledged after {DRAIN:?}; disconnecting anyway"
        )),
        "{log}"
    );
    // The bound holds the wait for the broker's close too (it gets what is left: nothing).
    assert!(
        took >= DRAIN && took < DRAIN + Duration::from_millis(800),
        "took {took:?} for drain_timeout_secs = {}:\n{log}",
        DRAIN.as_secs()
    );
}

/// A state file older than a broker session lives (24 h) is not resumed: the daemon warns,
/// starts a fresh session and logs in, rather than answering a UUID from a day ago.
#[test]
fn a_state_file_older_than_a_session_is_not_resumed() {
    use mqtt_responder::daemon::state::Journal;
    use mqtt_responder::mqtt::session::Session;

    let broker = require_mosquitto!().start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    fs::create_dir_all(&state_dir).unwrap();
    let user = "ops-stale";
    let extra = format!("state_dir = \"{}\"\n", state_dir.display());
    let path = write_config(dir.path(), &config(broker.port(), user, &extra));

    // What a run stopped a day and an hour ago would have left for this client and broker.
    let (cfg, _) = mqtt_responder::config::load(&path).expect("test config is valid");
    let session = Session::new(cfg.broker.session_config(), Instant::now());
    let broker_addr = format!("127.0.0.1:{}", broker.port());
    let mut journal = Journal::in_dir(&state_dir, &cfg.broker.client_id, &broker_addr);
    let mut state = journal.state(session.snapshot());
    state.uuid = Some(UUID.to_owned());
    journal.snapshot(&state, Instant::now());
    let long_ago = std::time::SystemTime::now() - Duration::from_secs(25 * 3600);
    for i in 0..3 {
        if let Ok(file) = fs::File::options()
            .write(true)
            .open(state_dir.join(format!("journal.{i}")))
        {
            file.set_modified(long_ago).unwrap();
        }
    }
    assert_eq!(
        Journal::in_dir(&state_dir, &cfg.broker.client_id, &broker_addr).load(),
        None,
        "too old to resume"
    );

    let mut peer = Peer::connect(broker.port(), "peer-stale", None);
    peer.subscribe("login");
    let mut daemon = Daemon::spawn(&path, &[]);
    daemon.wait_for_log("written 25 h ago, longer than a session lives (24 h); starting fresh");
    peer.expect("a fresh login", |m| m.topic == "login" && m.payload == user);
    let log = daemon.log();
    assert!(!log.contains("resuming the run"), "{log}");
    daemon.signal("TERM");
    assert_eq!(daemon.exit_code(), Some(0), "{}", daemon.log());
}
