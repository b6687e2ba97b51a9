//! The one mapping from the broker settings the configuration produces
//! ([`config::Broker`](Broker)) to an MQTT session's ([`SessionConfig`]), for the daemon and
//! the examiner alike. It lives outside [`crate::mqtt`], which must not depend on
//! [`crate::config`]; once `config` is a folder it belongs there, as
//! `impl Broker { pub fn session_config(&self) -> SessionConfig }`.

use crate::config::Broker;
use crate::mqtt::session::SessionConfig;

/// The session settings for logging in to `broker`: its protocol, client id, credentials,
/// keep-alive and in-flight cap, and a clean first start. What else a session needs is the
/// caller's to set (struct update syntax): as given here it is a plain client's, with
/// acknowledgements on arrival, no Will, no broker-side session after a disconnect and
/// packets of up to 1 MiB.
pub fn from_broker(broker: &Broker) -> SessionConfig {
    SessionConfig {
        protocol: broker.protocol,
        client_id: broker.client_id.clone(),
        username: broker.username.clone(),
        password: broker.password.clone(),
        keep_alive: broker.keep_alive,
        max_inflight: broker.max_inflight,
        max_incoming_packet: 1 << 20,
        session_expiry: 0,
        will: None,
        manual_acks: false,
        clean_first: true,
    }
}
