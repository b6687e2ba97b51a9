//! Whole exchanges: the real daemon binary against real brokers (embedded rumqttd and a
//! mosquitto child process), examined by the library's examiner over its own MQTT session.
//! Every command must be answered exactly once, at the expected QoS, and the daemon must
//! exit 0 after a clean DISCONNECT.

mod support;

use std::time::Duration;

use bytes::Bytes;
use mqtt_responder::peer::runner::Noise;
use support::exchange::{self, Outcome};

/// One run: the daemon's config (`[broker]` host/port/protocol filled in) and what the peer
/// sends.
struct Exchange {
    port: u16,
    protocol: &'static str,
    user_id: String,
    qos: u8,
    commands: usize,
    /// Extra `[session]` lines.
    session: String,
    /// A `[replies]` table, if any.
    replies: String,
    noise: Vec<Noise>,
}

impl Exchange {
    fn new(port: u16, user_id: &str, qos: u8, commands: usize) -> Exchange {
        Exchange {
            port,
            protocol: "3.1.1",
            user_id: user_id.to_owned(),
            qos,
            commands,
            session: String::new(),
            replies: String::new(),
            noise: Vec::new(),
        }
    }

    fn config_toml(&self) -> String {
        format!(
            "[broker]\nhost = \"127.0.0.1\"\nport = {}\nprotocol = \"{}\"\n\n\
             [session]\nuser_id = \"{}\"\nqos = {}\nlogin_timeout_secs = 5\n{}\n{}\n\
             [reconnect]\ninitial_delay_ms = 50\nmax_delay_secs = 1\nmax_attempts = 20\n",
            self.port, self.protocol, self.user_id, self.qos, self.session, self.replies
        )
    }

    fn run(self) -> Outcome {
        let (commands, seed) = (self.commands, u64::from(self.port) ^ self.commands as u64);
        exchange::run(
            &self.config_toml(),
            &format!("examiner-{}", self.user_id),
            |cfg| {
                let mut settings = cfg.examiner_settings();
                settings.commands = commands;
                settings.delay = Duration::from_millis(100);
                settings.seed = seed;
                settings
            },
            self.noise,
        )
    }
}

/// Every command answered once with the right payload at the right QoS; the daemon
/// finished cleanly.
fn assert_clean(outcome: &Outcome, commands: usize) {
    let r = &outcome.report;
    let totals = r.totals();
    assert!(
        r.passed(),
        "examiner failed: {:?}\n{r}\ndaemon:\n{}",
        r.problems(),
        outcome.stderr
    );
    assert_eq!(totals.sent, commands as u64, "{r}");
    assert_eq!(totals.answered, commands as u64, "{r}");
    assert_eq!(totals.duplicates + r.late, 0, "{r}");
    assert_eq!(outcome.exit_code, Some(0), "daemon:\n{}", outcome.stderr);
    assert!(
        outcome.stderr.contains("summary: Completed"),
        "{}",
        outcome.stderr
    );
}

#[test]
fn embedded_broker_answers_every_command_at_each_qos() {
    let broker = support::embedded();
    for qos in 0..=2 {
        let user = format!("emb-q{qos}");
        let outcome = Exchange::new(broker.port(), &user, qos, 7).run();
        assert_clean(&outcome, 7);
        assert_eq!(outcome.report.expected_qos.as_u8(), qos);
    }
}

#[test]
fn embedded_broker_mqtt5_and_1000_commands() {
    let broker = support::embedded();
    let mut exchange = Exchange::new(broker.v5_port(), "emb-v5", 2, 50);
    exchange.protocol = "5";
    assert_clean(&exchange.run(), 50);
    let outcome = Exchange::new(broker.port(), "emb-1000", 2, 1000).run();
    assert_clean(&outcome, 1000);
}

#[test]
fn mosquitto_answers_7_and_1000_commands_at_each_qos_and_disconnects_cleanly() {
    let broker = require_mosquitto!().start().unwrap();
    for qos in 0..=2 {
        for commands in [7, 1000] {
            let user = format!("mq-q{qos}-n{commands}");
            let mark = broker.log_mark();
            let outcome = Exchange::new(broker.port(), &user, qos, commands).run();
            assert_clean(&outcome, commands);
            let log = broker.log_since(mark);
            let client = format!("mqtt-responder-{user}");
            assert!(
                log.contains(&format!("Received DISCONNECT from {client}"))
                    && log.contains(&format!("Client {client} disconnected.")),
                "no clean DISCONNECT from {client} in the broker log"
            );
            assert!(
                !log.contains(&format!("Client {client} closed its connection")),
                "{client} closed without DISCONNECT"
            );
        }
    }
}

#[test]
fn mosquitto_mqtt5_qos2() {
    let broker = require_mosquitto!().start().unwrap();
    let mut exchange = Exchange::new(broker.port(), "mq-v5", 2, 300);
    exchange.protocol = "5";
    let mark = broker.log_mark();
    let outcome = exchange.run();
    assert_clean(&outcome, 300);
    let log = broker.log_since(mark);
    assert!(
        log.contains("as mqtt-responder-mq-v5 (p5"),
        "MQTT 5 was not used"
    );
    assert!(log.contains("Received DISCONNECT from mqtt-responder-mq-v5"));
}

#[test]
fn hostile_payloads_are_dropped_and_the_rest_answered() {
    let broker = require_mosquitto!().start().unwrap();
    let mut exchange = Exchange::new(broker.port(), "mq-hostile", 2, 25);
    exchange.session = "max_payload_bytes = 20\n".to_owned();
    let noise = |payload: &[u8]| Noise {
        topic: None,
        payload: Bytes::copy_from_slice(payload),
    };
    exchange.noise = vec![
        noise(b"\xff\xfe\x00CMD1"),
        noise(b""),
        noise(&[b'C'; 21]),
        noise(b"CMD9"),
        noise(b"#"),
        noise(&[b'Z'; 20]),
        // Larger than the daemon reads at all (max_payload_bytes plus room for the topic):
        // over 3.1.1 it is acknowledged and skipped, not a connection error that would
        // bring it back on every reconnect.
        noise(&vec![b'B'; 200 * 1024]),
    ];
    let outcome = exchange.run();
    assert_clean(&outcome, 25);
    let err = &outcome.stderr;
    for expected in [
        "not UTF-8",
        "empty payload",
        "more than max_payload_bytes = 20",
        "a 204",
        "unknown command",
    ] {
        assert!(err.contains(expected), "no {expected:?} warning in:\n{err}");
    }
    assert!(err.contains("4 dropped"), "{err}");
    assert!(err.contains(" 0 reconnects"), "{err}");
    assert!(err.contains("3 unknown"), "{err}");
}

#[test]
fn custom_topics_completion_and_reply_table() {
    let broker = require_mosquitto!().start().unwrap();
    let mut exchange = Exchange::new(broker.port(), "mq-custom", 1, 40);
    exchange.session = "login_topic = \"fleet/login\"\n\
        uuid_topic = \"fleet/{user_id}/session\"\n\
        command_topic = \"fleet/{user_id}/{uuid}/cmd\"\n\
        reply_topic = \"fleet/{user_id}/{uuid}/reply/{command}\"\n\
        completion_message = \"BYE\"\n"
        .to_owned();
    exchange.replies =
        "[replies]\nPING = \"PONG\"\nTIME = \"twelve o'clock\"\nlower = \"ok\"\n".to_owned();
    let mark = broker.log_mark();
    let outcome = exchange.run();
    assert_clean(&outcome, 40);
    let commands: Vec<&str> = outcome
        .report
        .commands
        .iter()
        .map(|c| c.command.as_str())
        .collect();
    assert_eq!(commands, ["PING", "TIME", "lower"]);
    let log = broker.log_since(mark);
    assert!(
        log.contains("'fleet/login'"),
        "login not on the custom topic"
    );
    assert!(log.contains("/reply/PING'") || log.contains("/reply/TIME'"));
}
