//! An embedded MQTT broker (rumqttd) on free loopback ports, for `demo` and the tests: an
//! MQTT 3.1.1 and an MQTT 5 listener on 127.0.0.1, no authentication, nothing on disk.
//!
//! rumqttd has no stop API (bytebeamio/rumqtt#771): its router and listener threads live
//! until the process exits, which is what a one-shot `demo` and a test process want.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// How long a listener may take to accept TCP after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest payload the embedded broker accepts.
pub const MAX_PAYLOAD: usize = 4 * 1024 * 1024;

/// A running embedded broker.
#[derive(Debug)]
pub struct EmbeddedBroker {
    port: u16,
    v5_port: u16,
}

impl EmbeddedBroker {
    /// Starts the router and both listeners, each in its own thread; returns once both
    /// accept TCP.
    pub fn start() -> Result<EmbeddedBroker, String> {
        let router = rumqttd::Router::new(0, router_config());
        let router_tx = router.spawn();
        let tx = router_tx.clone();
        let port = start_listener("v4", move |settings| {
            let mut server = rumqttd::Server::new(settings, tx.clone(), rumqttd::protocol::v4::V4);
            async move { server.start(rumqttd::LinkType::Remote).await }
        })?;
        let v5_port = start_listener("v5", move |settings| {
            let mut server =
                rumqttd::Server::new(settings, router_tx.clone(), rumqttd::protocol::v5::V5);
            async move { server.start(rumqttd::LinkType::Remote).await }
        })?;
        Ok(EmbeddedBroker { port, v5_port })
    }

    /// Port of the MQTT 3.1.1 listener.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Port of the MQTT 5 listener.
    pub fn v5_port(&self) -> u16 {
        self.v5_port
    }
}

fn router_config() -> rumqttd::RouterConfig {
    rumqttd::RouterConfig {
        max_connections: 10_000,
        // Packets read per subscription per round (QoS 1/2 is capped by rumqttd's own
        // inflight limit of 100 per connection).
        max_outgoing_packet_count: 1_000,
        // Per-topic commit log, allocated as data arrives.
        max_segment_size: 100 * 1024 * 1024,
        max_segment_count: 16,
        ..Default::default()
    }
}

fn connection_settings() -> rumqttd::ConnectionSettings {
    rumqttd::ConnectionSettings {
        connection_timeout_ms: 10_000,
        max_payload_size: MAX_PAYLOAD,
        max_inflight_count: 1_000,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    }
}

/// Runs one listener in its own thread with a current-thread runtime on a free port; tries
/// another port (three times at most) when the bind fails.
fn start_listener<F, Fut, E>(name: &str, make: F) -> Result<u16, String>
where
    F: Fn(rumqttd::ServerSettings) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display,
{
    let mut last_err = String::from("not started");
    for _ in 0..3 {
        let port = free_port().map_err(|e| format!("no free loopback port: {e}"))?;
        let settings = rumqttd::ServerSettings {
            name: format!("embedded-{name}-{port}"),
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            tls: None,
            next_connection_delay_ms: 0,
            connections: connection_settings(),
        };
        let server = make(settings);
        let (err_tx, err_rx) = mpsc::channel::<String>();
        thread::Builder::new()
            .name(format!("rumqttd-{name}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = err_tx.send(format!("runtime: {e}"));
                        return;
                    }
                };
                // Returns only on error (e.g. the port was taken meanwhile).
                let outcome = match runtime.block_on(server) {
                    Ok(()) => "the listener stopped".to_owned(),
                    Err(e) => e.to_string(),
                };
                let _ = err_tx.send(outcome);
            })
            .map_err(|e| format!("cannot start a broker thread: {e}"))?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(e) = err_rx.try_recv() {
                last_err = format!("{name} listener on port {port}: {e}");
                break;
            }
            if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
                return Ok(port);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{name} listener on port {port} did not accept connections in {START_TIMEOUT:?}"
                ));
            }
            thread::sleep(Duration::from_millis(5));
        }
    }
    Err(last_err)
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}
