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
pub mod protocol;
pub mod topic;
pub mod transport;
