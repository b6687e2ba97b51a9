//! The MQTT layer: our own packet model over rumqttc's public codec, and the sans-IO
//! session that owns packet ids, the QoS handshakes, duplicate suppression and keep-alive.
//!
//! rumqttc's `EventLoop` is not used: its QoS 2 state is not exactly-once (see
//! `notes/rumqttc-0.25.md` §3 and §7), so only `rumqttc::mqttbytes` (3.1.1) and
//! `rumqttc::v5::mqttbytes` (5) are, for encoding and decoding.

#[cfg(test)]
pub(crate) mod broker_side;
pub mod packet;
pub mod session;
