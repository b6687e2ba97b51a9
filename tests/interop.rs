//! The interop matrix (issue 8): the real daemon binary against every broker the harness can
//! start — mosquitto as shipped and with `max_qos 1`, `max_qos 0`, `max_inflight_messages 2`
//! and a small `max_packet_size`, the embedded rumqttd, and aedes (npm) — each on a free
//! loopback port, examined by the library's examiner. A full exchange runs at QoS 0, 1 and 2
//! with each protocol version the broker speaks (`max_qos 0`: a daemon configured for QoS 2);
//! every reply must arrive exactly once at the expected QoS and the daemon must exit 0 after
//! a clean DISCONNECT.
//!
//! MQTT 5 request/response runs against mosquitto with the examiner in response-topic mode.
//! An invalid Response Topic is not tested here: a conforming client cannot send one (brokers
//! reject wildcards in it), so the responder's unit tests cover it.
//!
//! Each run prints one `interop:` line (broker, protocol, QoS, what the broker allowed,
//! result, time); `cargo test --test interop -- --nocapture` shows the matrix.

mod support;

use std::time::Duration;

use bytes::Bytes;
use mqtt_responder::config::ReplyTable;
use mqtt_responder::peer::runner::Noise;
use mqtt_responder::protocol::examiner::ExaminerSettings;
use mqtt_responder::topic::{Template, Var};
use support::Mosquitto;
use support::aedes::Aedes;
use support::exchange::{self, Outcome};

/// Commands per run: enough to keep replies in flight and queues busy, quick in debug.
const COMMANDS: usize = 200;

/// The reply table entry longer than the small `max_packet_size` broker allows.
const LONG_COMMAND: &str = "LONG";
/// `max_packet_size` of that broker: above every other packet of the exchange.
const SMALL_MAX_PACKET: u32 = 256;

const SEED_TABLE: &str = "CMD1 = \"Apple\"\nCMD2 = \"Cat\"\nCMD3 = \"Dog\"\nCMD4 = \"Rat\"\n\
                          CMD5 = \"Boy\"\nCMD6 = \"Girl\"\nCMD7 = \"Toy\"\n";

/// One exchange: the daemon's broker, protocol and QoS, and what the examiner does.
struct Run {
    port: u16,
    protocol: &'static str,
    user_id: String,
    qos: u8,
    /// Extra `[replies]` entries on top of the seed table (not sent by the examiner).
    extra_replies: String,
    noise: Vec<Noise>,
    response_topic: Option<&'static str>,
    /// Commands the examiner keeps unanswered at once.
    window: usize,
}

impl Run {
    fn new(broker: &str, port: u16, protocol: &'static str, qos: u8) -> Run {
        let tag: String = broker
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let v = if protocol == "5" { "v5" } else { "v311" };
        Run {
            port,
            protocol,
            user_id: format!("{tag}-{v}-q{qos}"),
            qos,
            extra_replies: String::new(),
            noise: Vec::new(),
            response_topic: None,
            window: ExaminerSettings::default().window,
        }
    }

    /// The daemon's client id (the config's default).
    fn client_id(&self) -> String {
        format!("mqtt-responder-{}", self.user_id)
    }

    fn examiner_id(&self) -> String {
        format!("examiner-{}", self.user_id)
    }

    fn config_toml(&self) -> String {
        format!(
            "[broker]\nhost = \"127.0.0.1\"\nport = {}\nprotocol = \"{}\"\n\n\
             [session]\nuser_id = \"{}\"\nqos = {}\nlogin_timeout_secs = 5\n\n\
             [replies]\n{SEED_TABLE}{}\n\
             [reconnect]\ninitial_delay_ms = 50\nmax_delay_secs = 1\nmax_attempts = 20\n",
            self.port, self.protocol, self.user_id, self.qos, self.extra_replies
        )
    }

    fn run(self) -> Outcome {
        let (window, seed) = (self.window, u64::from(self.port) ^ u64::from(self.qos));
        let response_topic = self.response_topic;
        exchange::run(
            &self.config_toml(),
            &self.examiner_id(),
            |cfg| {
                // The examiner sends the seed table only; extra entries come as noise, if
                // at all.
                let mut settings =
                    ExaminerSettings::mirroring(&cfg.session.responder, &ReplyTable::seed());
                settings.commands = COMMANDS;
                settings.delay = Duration::from_millis(100);
                settings.window = window;
                settings.seed = seed;
                settings.response_topic = response_topic.map(|t| {
                    Template::parse(t, &[Var::UserId, Var::Uuid]).expect("response topic")
                });
                settings
            },
            self.noise,
        )
    }
}

/// Every command answered exactly once, right payload, expected QoS; the daemon exited 0
/// after completing; neither side lost its connection. Prints the matrix line.
fn assert_clean(run: &str, outcome: &Outcome, expected_qos: u8) {
    let r = &outcome.report;
    let totals = r.totals();
    let line = format!(
        "interop: {run}: {}/{} answered, {} dup, {} missing, QoS {} ({}); {}; {:.0} ms",
        totals.answered,
        totals.sent,
        totals.duplicates + r.late,
        totals.missing(),
        r.expected_qos,
        outcome.connack(),
        if r.passed() { "PASS" } else { "FAIL" },
        outcome.elapsed.as_secs_f64() * 1e3,
    );
    eprintln!("{line}");
    assert!(
        r.passed(),
        "{run}: examiner failed: {:?}\n{r}\ndaemon:\n{}",
        r.problems(),
        outcome.stderr
    );
    assert_eq!(totals.sent, COMMANDS as u64, "{run}\n{r}");
    assert_eq!(totals.answered, COMMANDS as u64, "{run}\n{r}");
    assert_eq!(totals.duplicates + r.late + r.unexpected, 0, "{run}\n{r}");
    assert_eq!(
        r.connection_losses, 0,
        "{run}: the examiner lost its connection"
    );
    assert_eq!(r.expected_qos.as_u8(), expected_qos, "{run}\n{r}");
    assert_eq!(
        outcome.exit_code,
        Some(0),
        "{run}: daemon:\n{}",
        outcome.stderr
    );
    let summary = outcome.summary();
    assert!(
        summary.starts_with("Completed") && summary.contains(" 0 reconnects"),
        "{run}: {summary}\n{}",
        outcome.stderr
    );
    assert!(
        summary.ends_with(&format!("QoS {expected_qos}")),
        "{run}: the summary shows the effective QoS: {summary}"
    );
}

/// The broker never dropped `client`: each time it went away, it had sent DISCONNECT first
/// (the 3.1.1 daemon's first connection only clears an old session, and ends the same way).
fn assert_never_dropped(broker: &Mosquitto, mark: usize, client: &str) {
    let log = broker.log_since(mark);
    let received = format!("Received DISCONNECT from {client}");
    let clean = format!("Client {client} disconnected.");
    // How mosquitto 2.0 words the end of a connection it did not get a DISCONNECT for
    // ("Too high QoS in PUBLISH from X, disconnecting.", "Bad socket read/write on client X",
    // "Client X closed its connection.", "Client X has exceeded timeout", …).
    let dropped = [
        format!("from {client}, disconnecting"),
        format!("on client {client}:"),
        format!("Client {client} closed its connection"),
        format!("Client {client} has exceeded timeout"),
        format!("Client {client} disconnected due to"),
        format!("Client {client} disconnected,"),
    ];
    let mut disconnect_sent = false;
    let mut seen = 0;
    for line in log.lines() {
        assert!(
            !dropped.iter().any(|d| line.contains(d.as_str())),
            "mosquitto dropped {client}: {line}\n--- log ---\n{log}"
        );
        if line.contains(&received) {
            disconnect_sent = true;
        } else if line.contains(&clean) {
            seen += 1;
            assert!(
                disconnect_sent,
                "{client} left without DISCONNECT: {line}\n--- log ---\n{log}"
            );
            disconnect_sent = false;
        }
    }
    assert!(seen > 0, "{client} never disconnected cleanly:\n{log}");
}

/// A full exchange at QoS 0, 1 and 2 with each of `protocols` on a mosquitto broker.
fn mosquitto_matrix(
    name: &str,
    broker: &Mosquitto,
    protocols: &[&'static str],
    effective: impl Fn(u8) -> u8,
    prepare: impl Fn(&mut Run),
) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    for &protocol in protocols {
        for qos in 0..=2 {
            let mut run = Run::new(name, broker.port(), protocol, qos);
            prepare(&mut run);
            let label = format!("{name} MQTT {protocol} QoS {qos}");
            let (daemon, examiner) = (run.client_id(), run.examiner_id());
            let mark = broker.log_mark();
            let outcome = run.run();
            assert_clean(&label, &outcome, effective(qos));
            assert_never_dropped(broker, mark, &daemon);
            assert_never_dropped(broker, mark, &examiner);
            outcomes.push(outcome);
        }
    }
    outcomes
}

fn mosquitto_name() -> String {
    Mosquitto::version()
        .and_then(|v| v.rsplit(' ').next().map(|v| format!("mosquitto {v}")))
        .unwrap_or_else(|| "mosquitto".to_owned())
}

#[test]
fn mosquitto_as_shipped() {
    let broker = require_mosquitto!().start().unwrap();
    let name = mosquitto_name();
    let outcomes = mosquitto_matrix(&name, &broker, &["3.1.1", "5"], |q| q, |_| {});
    for outcome in outcomes
        .iter()
        .filter(|o| o.connack().starts_with("MQTT 5"))
    {
        // mosquitto's defaults, as the MQTT 5 CONNACK announces them.
        assert!(
            outcome.connack().contains(
                "broker allows QoS 2, receive maximum 20, max packet size unlimited, retain yes"
            ),
            "{}",
            outcome.connack()
        );
    }
}

#[test]
fn mosquitto_max_qos_1_caps_a_qos_2_daemon_without_disconnects() {
    let broker = require_mosquitto!().max_qos(1).start().unwrap();
    // The premise: this broker drops a client that publishes at QoS 2.
    let (mut raw, _) = support::raw::connect_v4(broker.port(), "qos2-probe", None).unwrap();
    let mut publish = rumqttc::mqttbytes::v4::Publish::new(
        "probe",
        rumqttc::mqttbytes::QoS::ExactlyOnce,
        b"x".to_vec(),
    );
    publish.pkid = 1;
    raw.send(&rumqttc::mqttbytes::v4::Packet::Publish(publish))
        .unwrap();
    assert!(
        broker.wait_for_log(
            "Too high QoS in PUBLISH from qos2-probe, disconnecting",
            Duration::from_secs(5)
        ),
        "mosquitto with max_qos 1 kept a QoS 2 publisher:\n{}",
        broker.log_tail(20)
    );

    let name = format!("{} max_qos 1", mosquitto_name());
    let outcomes = mosquitto_matrix(&name, &broker, &["3.1.1", "5"], |q| q.min(1), |_| {});
    for (i, outcome) in outcomes.iter().enumerate() {
        let err = &outcome.stderr;
        // Runs go QoS 0, 1, 2 per protocol: only the daemon configured for 2 is capped, and
        // says so once, with the granted value.
        let warnings = if i % 3 == 2 { 1 } else { 0 };
        assert_eq!(err.matches("QoS capped to 1").count(), warnings, "{err}");
        if outcome.connack().starts_with("MQTT 5") {
            assert!(outcome.connack().contains("broker allows QoS 1"), "{err}");
        }
    }
}

/// mosquitto with `max_qos 0` refuses the daemon's QoS 1 Last Will: MQTT 5 with CONNACK 0x9B
/// (QoS not supported), MQTT 3.1.1, which has no return code for it, by closing the
/// connection without a CONNACK. The daemon, configured for QoS 2, connects again at once
/// with the Will at QoS 0 and runs the whole exchange at QoS 0, presence included.
///
/// QoS 0 is at most once: a broker may drop such a message, and mosquitto does when a
/// client's queue is over its limit (`max_queued_messages`, 1000 by default) or the client
/// is offline (`queue_qos0_messages` is off). Neither happens here — loopback, both clients
/// stay connected (asserted), and the examiner keeps at most 20 commands unanswered — so
/// every command and every reply must still arrive: a loss would be a bug, not QoS 0.
#[test]
fn mosquitto_max_qos_0_runs_a_qos_2_daemon_at_qos_0_with_presence() {
    use rumqttc::mqttbytes::{QoS, v4};

    let broker = require_mosquitto!().max_qos(0).start().unwrap();
    let name = format!("{} max_qos 0", mosquitto_name());
    for protocol in ["3.1.1", "5"] {
        let run = Run::new(&name, broker.port(), protocol, 2);
        let label = format!("{name} MQTT {protocol} QoS 2");
        let (daemon, examiner, user) = (run.client_id(), run.examiner_id(), run.user_id.clone());
        let status = format!("{user}/status");
        // Watches the presence records as they go out (QoS 0, read after the run).
        let (mut watch, _) =
            support::raw::connect_v4(broker.port(), &format!("watch-{user}"), None).unwrap();
        watch.subscribe(&status, QoS::AtMostOnce).unwrap();
        let mark = broker.log_mark();
        let outcome = run.run();
        assert_clean(&label, &outcome, 0);
        assert_never_dropped(&broker, mark, &daemon);
        assert_never_dropped(&broker, mark, &examiner);

        let log = broker.log_since(mark);
        let err = &outcome.stderr;
        // The broker refused the QoS 1 Will once, each protocol its own way.
        let refusals = log.matches("disconnected due to QoS too high or retain not supported");
        assert_eq!(refusals.count(), 1, "{label}:\n{log}");
        if protocol == "5" {
            assert!(
                log.contains("Sending CONNACK to 127.0.0.1 (0, 155)"),
                "{log}"
            );
            assert!(outcome.connack().contains("broker allows QoS 0"), "{err}");
        } else {
            assert!(
                !log.contains("(0, 155)"),
                "3.1.1 has no such return code: {log}"
            );
            assert!(
                err.contains("closed the connection without a CONNACK"),
                "{err}"
            );
        }
        // One WARN about the Will, one about the replies' QoS.
        let will_warnings = err
            .lines()
            .filter(|l| {
                l.contains("WARN")
                    && (l.contains("with the Will at QoS 0")
                        || l.contains("accepted the Last Will at QoS 0"))
            })
            .count();
        assert_eq!(will_warnings, 1, "{err}");
        assert_eq!(err.matches("QoS capped to 0").count(), 1, "{err}");
        // The Will it took is retained at QoS 0 (the examiner has none).
        let wills: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("Will message specified"))
            .collect();
        assert!(
            wills.len() == 1 && wills[0].contains("(r1, q0)"),
            "{wills:?}"
        );
        // Every publish of the daemon at QoS 0; presence retained.
        let publishes: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(&format!("Received PUBLISH from {daemon} (")))
            .collect();
        assert!(publishes.len() > COMMANDS, "{log}");
        assert!(
            publishes.iter().all(|l| l.contains("(d0, q0, ")),
            "{publishes:?}"
        );
        let presence: Vec<&&str> = publishes
            .iter()
            .filter(|l| l.contains(&format!("'{status}'")))
            .collect();
        assert!(
            presence.len() >= 2 && presence.iter().all(|l| l.contains(", r1, ")),
            "online and offline records, retained: {presence:?}"
        );

        // What the records said: the online one with the UUID carries the effective QoS.
        let mut records = Vec::new();
        for _ in 0..10 {
            let Ok(v4::Packet::Publish(p)) = watch.recv() else {
                continue;
            };
            let record: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
            let done = record["state"] == "offline";
            records.push(record);
            if done {
                break;
            }
        }
        let uuid = &outcome.report.uuid;
        assert!(
            records
                .iter()
                .any(|r| r["state"] == "online" && r["uuid"] == uuid.as_str() && r["qos"] == 0),
            "{records:?}"
        );
        assert_eq!(
            records.last().map(|r| r["reason"].clone()),
            Some("completed".into()),
            "{records:?}"
        );
        // Retained: whoever looks later sees the farewell.
        let (mut late, _) =
            support::raw::connect_v4(broker.port(), &format!("late-{user}"), None).unwrap();
        late.subscribe(&status, QoS::AtMostOnce).unwrap();
        match late.recv() {
            Ok(v4::Packet::Publish(p)) => {
                assert!(p.retain, "{p:?}");
                let record: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
                assert_eq!(
                    record,
                    serde_json::json!({"state": "offline", "reason": "completed"})
                );
            }
            other => panic!("{label}: no retained presence record: {other:?}"),
        }
    }
}

/// mosquitto with `retain_available false` refuses a retained Last Will: MQTT 5 with CONNACK
/// 0x9A (retain not supported), MQTT 3.1.1 by closing the connection without a CONNACK, the
/// same way as for a QoS it does not allow — so the daemon first tries the Will at QoS 0,
/// then also not retained. Either way the exchange runs at QoS 2 and presence goes out
/// without retain.
#[test]
fn mosquitto_retain_available_false_runs_with_presence_not_retained() {
    let broker = require_mosquitto!()
        .extra_config("retain_available false")
        .start()
        .unwrap();
    let name = format!("{} retain_available false", mosquitto_name());
    for protocol in ["3.1.1", "5"] {
        let run = Run::new(&name, broker.port(), protocol, 2);
        let label = format!("{name} MQTT {protocol} QoS 2");
        let (daemon, user) = (run.client_id(), run.user_id.clone());
        let status = format!("'{user}/status'");
        let mark = broker.log_mark();
        let outcome = run.run();
        assert_clean(&label, &outcome, 2);
        assert_never_dropped(&broker, mark, &daemon);
        let log = broker.log_since(mark);
        let err = &outcome.stderr;
        let refusals = log
            .matches("disconnected due to QoS too high or retain not supported")
            .count();
        // 3.1.1: the retained QoS 1 Will, then the retained QoS 0 one.
        assert_eq!(
            refusals,
            if protocol == "5" { 1 } else { 2 },
            "{label}:\n{log}"
        );
        let wills: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("Will message specified"))
            .collect();
        assert!(
            wills.len() == 1 && wills[0].contains("(r0, "),
            "{label}: the accepted Will is not retained: {wills:?}"
        );
        let presence: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(&format!("Received PUBLISH from {daemon} (")))
            .filter(|l| l.contains(&status))
            .collect();
        assert!(
            presence.len() >= 2 && presence.iter().all(|l| l.contains(", r0, ")),
            "{label}: online and offline records, not retained: {presence:?}"
        );
        let said = if protocol == "5" {
            "does not keep retained messages"
        } else {
            "accepted the Last Will at QoS 0, not retained,"
        };
        assert!(err.contains(said), "{label}: {err}");
    }
}

#[test]
fn mosquitto_max_inflight_messages_2() {
    let broker = require_mosquitto!()
        .max_inflight_messages(2)
        .start()
        .unwrap();
    let name = format!("{} max_inflight_messages 2", mosquitto_name());
    let outcomes = mosquitto_matrix(
        &name,
        &broker,
        &["3.1.1", "5"],
        |q| q,
        |run| {
            // mosquitto 2.0 takes at most max_inflight_messages QoS 2 publishes in flight
            // from a client and drops the rest (it logs "PUBREC (rc151)", quota exceeded; a
            // 3.1.1 PUBREC cannot carry that, so the sender never knows). MQTT 5 announces
            // the limit as Receive Maximum, which the examiner's session honours; with 3.1.1
            // the examiner must keep its burst of commands within it. The daemon needs
            // nothing: a command is acknowledged only once its reply is, so the broker's
            // own limit towards the daemon bounds the replies in flight.
            if run.protocol == "3.1.1" {
                run.window = 2;
            }
        },
    );
    for outcome in outcomes
        .iter()
        .filter(|o| o.connack().starts_with("MQTT 5"))
    {
        assert!(
            outcome.connack().contains("receive maximum 2,"),
            "{}",
            outcome.connack()
        );
    }
}

#[test]
fn mosquitto_small_max_packet_size_fails_one_reply_and_answers_the_rest() {
    let broker = require_mosquitto!()
        .max_packet_size(SMALL_MAX_PACKET)
        .start()
        .unwrap();
    let name = format!("{} max_packet_size {SMALL_MAX_PACKET}", mosquitto_name());
    let long_reply = "L".repeat(SMALL_MAX_PACKET as usize + 44);
    let outcomes = mosquitto_matrix(
        &name,
        &broker,
        &["5"],
        |q| q,
        |run| {
            run.extra_replies = format!("{LONG_COMMAND} = \"{long_reply}\"\n");
            run.noise = vec![Noise {
                topic: None,
                payload: Bytes::from_static(LONG_COMMAND.as_bytes()),
            }];
        },
    );
    for outcome in &outcomes {
        let err = &outcome.stderr;
        assert!(
            outcome
                .connack()
                .contains(&format!("max packet size {SMALL_MAX_PACKET},")),
            "the CONNACK announces the limit: {}",
            outcome.connack()
        );
        assert!(
            err.contains(&format!(
                "exceed the broker's maximum packet size of {SMALL_MAX_PACKET}"
            )),
            "{err}"
        );
        let summary = outcome.summary();
        assert!(
            summary.contains(&format!("; {COMMANDS} replies ("))
                && summary.contains(&format!("{LONG_COMMAND}=0"))
                && summary.contains("1 rejected by the broker"),
            "the long reply is counted as failed, not answered: {summary}"
        );
    }
}

#[test]
fn mosquitto_mqtt5_request_response() {
    let broker = require_mosquitto!().start().unwrap();
    let name = format!("{} request/response", mosquitto_name());
    let mut responses = 0;
    for qos in 0..=2 {
        let mut run = Run::new(&name, broker.port(), "5", qos);
        run.response_topic = Some("responses/{user_id}/{uuid}");
        let user = run.user_id.clone();
        let mark = broker.log_mark();
        let outcome = run.run();
        assert_clean(&format!("{name} MQTT 5 QoS {qos}"), &outcome, qos);
        // The replies went to the Response Topic, none to the ordinary reply topics.
        let log = broker.log_since(mark);
        let uuid = &outcome.report.uuid;
        let on_response = format!("'responses/{user}/{uuid}'");
        responses += log.matches(&on_response).count();
        assert!(
            !log.contains(&format!("'{uuid}/CMD")),
            "a reply went to the ordinary reply topic"
        );
    }
    assert!(
        responses > 0,
        "no publish on the Response Topic in the broker log"
    );
}

#[test]
fn embedded_rumqttd() {
    let broker = support::embedded();
    let name = "rumqttd 0.20 (embedded)";
    for (protocol, port) in [("3.1.1", broker.port()), ("5", broker.v5_port())] {
        for qos in 0..=2 {
            let outcome = Run::new(name, port, protocol, qos).run();
            assert_clean(&format!("{name} MQTT {protocol} QoS {qos}"), &outcome, qos);
        }
    }
}

#[test]
fn aedes_mqtt311() {
    require_aedes!();
    let mut broker = Aedes::start().unwrap();
    let name = format!("aedes {}", Aedes::version().unwrap_or_default());
    for qos in 0..=2 {
        let run = Run::new(&name, broker.port(), "3.1.1", qos);
        let daemon = run.client_id();
        let outcome = run.run();
        assert_clean(&format!("{name} MQTT 3.1.1 QoS {qos}"), &outcome, qos);
        let log = broker.log();
        assert!(
            !log.contains(&format!("client error: {daemon}")),
            "aedes reported an error for the daemon:\n{log}"
        );
    }
    broker.stop().unwrap();
}

/// A 3.1.1 run first clears the old session on a throwaway connection, then connects for
/// real at once. When the client closed right after its DISCONNECT, rumqttd 0.20 sometimes
/// handled the throwaway connection's end twice, the second time under the connection id it
/// had meanwhile given to the real connection, which it then dropped (a reconnect in about a
/// quarter of the exchanges above). The driver lets the broker close first; a proxy between
/// them sees which side closed each connection first, so the order is checked on every run,
/// whether or not the broker's race would have struck.
#[test]
fn the_broker_closes_first_after_each_disconnect_and_the_real_connection_stays_up() {
    use mqtt_responder::config::Broker;
    use mqtt_responder::driver::{self, App, End};
    use mqtt_responder::mqtt::session::{Event, Session};
    use mqtt_responder::peer::runner;
    use mqtt_responder::vocabulary::QoS;
    use std::time::Instant;
    use support::proxy::Proxy;
    use tokio_util::sync::CancellationToken;

    /// Subscribes `left` times in a row, one SUBACK at a time, then disconnects.
    struct RoundTrips {
        left: u32,
        disconnecting: bool,
    }
    impl App for RoundTrips {
        fn handle_event(&mut self, event: Event, session: &mut Session, now: Instant) {
            if matches!(event, Event::Connected { .. } | Event::SubAck { .. }) {
                if self.left == 0 {
                    session.disconnect(now);
                    self.disconnecting = true;
                } else {
                    self.left -= 1;
                    session.subscribe(vec![("purge/probe".to_owned(), QoS::AtLeastOnce)], now);
                }
            }
        }
        fn poll_timeout(&self) -> Option<Instant> {
            None
        }
        fn handle_timeout(&mut self, _: &mut Session, _: Instant) {}
        fn handle_shutdown(&mut self, _: &mut Session, _: Instant) {}
        fn wants_disconnect(&self) -> bool {
            self.disconnecting
        }
    }

    // A broker of its own: a hundred connection pairs are not the exchanges' business.
    let port = support::EmbeddedBroker::start()
        .expect("start an embedded rumqttd")
        .port();
    // Clients in parallel, as the daemon and the examiner are in an exchange: the broker's
    // router is busy when each purge ends.
    let probes: Vec<_> = (0..4)
        .map(|probe| {
            std::thread::spawn(move || {
                let proxy = Proxy::start(port);
                let toml = format!(
                    "[broker]\nhost = \"127.0.0.1\"\nport = {}\nprotocol = \"3.1.1\"\n\
                     [session]\nuser_id = \"purge-probe\"\n",
                    proxy.port()
                );
                let cfg = mqtt_responder::config::from_toml(std::path::Path::new("p.toml"), &toml)
                    .expect("probe config is valid");
                let endpoint = mqtt_responder::transport::Endpoint::new(&cfg.broker).unwrap();
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let never = CancellationToken::new();
                for run in 0..25 {
                    // Connected as the examiner is in the exchanges.
                    let broker = Broker {
                        client_id: format!("purge-probe-{probe}"),
                        ..cfg.broker.clone()
                    };
                    let mut session =
                        Session::new(runner::peer_session_config(&broker), Instant::now());
                    let mut app = RoundTrips {
                        left: 3,
                        disconnecting: false,
                    };
                    let before = proxy.closed_first_by_broker();
                    let end = runtime.block_on(async {
                        let timeout = Duration::from_secs(5);
                        let run =
                            driver::open_and_run(&endpoint, &mut session, &mut app, timeout, &never, None);
                        tokio::time::timeout(Duration::from_secs(20), run).await
                    });
                    assert!(
                        matches!(end, Ok(End::Disconnected)),
                        "probe {probe}, run {run}: the connection after the purge ended with {end:?}"
                    );
                    // The proxy counts a close before passing it on, so both are counted by
                    // the time the client has seen them.
                    assert_eq!(
                        proxy.closed_first_by_broker() - before,
                        2,
                        "probe {probe}, run {run}: the broker closes the purge connection and \
                         the real one first ({} closed first by the client so far)",
                        proxy.closed_first_by_client()
                    );
                }
                assert_eq!(proxy.closed_first_by_client(), 0);
            })
        })
        .collect();
    for probe in probes {
        probe.join().expect("every probe passes");
    }
}
