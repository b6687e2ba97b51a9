//! `mqtt-responder`: a headless MQTT command-responder daemon.
//!
//! It logs in to a broker with its user ID, learns a per-session UUID topic, answers
//! commands from a reply table and disconnects cleanly when the completion message arrives.
//! The contract (protocol, configuration, CLI, exit codes) is `SPEC.md`.
//!
//! # Layout
//! From the bottom up: each layer uses only those above it in this table.
//!
//! | module | what lives there |
//! |---|---|
//! | [`vocabulary`] | the words every layer shares: QoS, Protocol, Secret, MessageId |
//! | [`topic`] | topic and topic-level checks, `{placeholder}` templates |
//! | [`protocol`] | the responder and the examiner, pure state machines, and their settings |
//! | [`mqtt`] | packet model over rumqttc's codec, the sans-IO MQTT session |
//! | [`config`] | schema, loading (file + environment), validation into types, redaction |
//! | [`transport`], [`driver`] | TCP (no Nagle) and TLS; the event loop over one connection |
//! | [`daemon`] | the composition, the reconnect policy, presence, the crash-resume journal, systemd |
//! | [`peer`] | the peer side: the examiner's runner, `examine`, `demo`, the embedded broker |
//! | [`logging`], [`cli`] | journald/text/JSON output; the command line |

pub mod cli;
pub mod config;
pub mod daemon;
pub mod driver;
pub mod logging;
pub mod mqtt;
pub mod peer;
pub mod protocol;
pub mod topic;
pub mod transport;
pub mod vocabulary;
