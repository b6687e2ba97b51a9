//! `mqtt-responder`: a headless MQTT command-responder daemon.
//!
//! It logs in to a broker with its user ID, learns a per-session UUID topic, answers
//! commands from a reply table and disconnects cleanly when the completion message arrives.
//! The contract (protocol, configuration, CLI, exit codes) is `SPEC.md`.
//!
//! # Layout
//! | module | what lives there |
//! |---|---|
//! | [`config`] | schema, loading (file + environment), validation into types, redaction |
//! | [`topic`] | topic and topic-level checks, `{placeholder}` templates |
//! | [`protocol`] | the responder and the examiner: pure state machines |
//! | [`mqtt`] | packet model over rumqttc's codec, the sans-IO MQTT session |
//! | [`session_config`] | broker settings → session settings, for the daemon and the examiner |
//! | [`backoff`] | capped exponential backoff with full jitter, pure |
//! | [`presence`] | the retained online/offline record and the Last Will, pure |
//! | [`state`] | the crash-resume state file |
//! | [`transport`] | TCP (no Nagle) and TLS to the broker |
//! | [`driver`], [`daemon`] | the event loop over one connection; reconnects, reload, shutdown |
//! | [`systemd`], [`logging`] | the operating-system edges: sd_notify, journald/text/JSON |
//! | [`cli`] | the command line |
//! | [`examine`], [`examine_command`] | the peer side against a real broker, and its subcommand |
//! | [`broker`], [`demo`], [`console`] | the embedded broker, the `demo`, what both show a person |
//! | [`fasthash`] | the hasher of the maps on the per-message path |

pub mod backoff;
pub mod broker;
pub mod cli;
pub mod config;
pub mod console;
pub mod daemon;
pub mod demo;
pub mod driver;
pub mod examine;
pub mod examine_command;
pub mod fasthash;
pub mod logging;
pub mod mqtt;
pub mod presence;
pub mod protocol;
pub mod session_config;
pub mod state;
pub mod systemd;
pub mod topic;
pub mod transport;
