//! Pumps one connection: bytes from the stream into the [`Session`], the session's events
//! into an [`App`] (the responder or the examiner), the bytes they produce back to the
//! stream, and timers for both. Reconnecting is the caller's business: this returns how
//! the connection ended.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::mqtt::packet::ConnectCode;
use crate::mqtt::session::{Event, Session};
use crate::transport::{self, BoxStream, Endpoint, OpenError};

/// How long, after our DISCONNECT, the broker has to close the connection before we do.
pub const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// The protocol side of a connection.
pub trait App {
    /// A session event (never `Refused` or `Purged`: those end the connection).
    fn handle_event(&mut self, event: Event, session: &mut Session, now: Instant);
    /// The app's next deadline.
    fn poll_timeout(&self) -> Option<Instant>;
    /// The app's deadline passed.
    fn handle_timeout(&mut self, session: &mut Session, now: Instant);
    /// SIGTERM/SIGINT: stop taking work and finish what is in flight.
    fn handle_shutdown(&mut self, session: &mut Session, now: Instant);
    /// Whether the app has called `session.disconnect()` and the connection should close.
    fn wants_disconnect(&self) -> bool;
    /// How long the broker may take to close the connection after our DISCONNECT (see
    /// [`CLOSE_LINGER`]); an app with a deadline of its own passes what is left of it.
    fn close_linger(&self, now: Instant) -> Duration {
        let _ = now;
        CLOSE_LINGER
    }
    /// Called before the session's pending bytes are written: the place to save state
    /// that must reach the disk before the packets it guards reach the wire.
    fn before_transmit(&mut self, session: &mut Session, now: Instant) {
        let _ = (session, now);
    }
    /// Called once the session's pending bytes are written: the place to announce what
    /// those packets achieve (systemd's READY=1 after the login is on the wire).
    fn after_transmit(&mut self) {}
    /// The caller's `wake` was notified: the daemon reloads (SIGHUP) what it can without
    /// touching the connection; the examiner opens its command gate.
    fn handle_wake(&mut self, session: &mut Session, now: Instant) {
        let _ = (session, now);
    }
}

/// How a connection ended.
#[derive(Debug)]
pub enum End {
    /// DISCONNECT was written and the stream shut down cleanly.
    Disconnected,
    /// The broker refused the CONNECT.
    Refused(ConnectCode),
    /// A 3.1.1 run cleared its old session; connect again at once.
    Purged,
    /// The link failed or the broker went silent.
    Lost {
        /// What failed.
        error: String,
        /// How long the connection had been up after CONNACK (`None`: never connected).
        up_for: Option<Duration>,
        /// The broker's side ended the stream (end of stream, or a reset: a broker that
        /// closes with our bytes unread sends RST), as when another client takes the
        /// session over; not a timeout or a protocol error on our side.
        closed_by_broker: bool,
        /// The TLS layer failed (e.g. a TLS 1.3 broker's alert, after the handshake, that it
        /// wants a client certificate), or the handshake did.
        tls: bool,
    },
}

/// Opens a stream to `endpoint` and runs connections over it until one ends other than by
/// the 3.1.1 purge of an old session (the purge is followed by the real connection at
/// once, so callers never see [`End::Purged`]). An `endpoint` that cannot be reached is an
/// [`End::Lost`] that never connected. Each notification of `wake` goes to
/// [`App::handle_wake`].
pub async fn open_and_run(
    endpoint: &Endpoint,
    session: &mut Session,
    app: &mut dyn App,
    connect_timeout: Duration,
    shutdown: &CancellationToken,
    wake: Option<&Notify>,
) -> End {
    // A purge happens once per session; the bound only guards against a broker that keeps
    // answering a clean start with session present.
    for _ in 0..3 {
        let stream = match endpoint.open().await {
            Ok(stream) => stream,
            Err(e) => {
                return End::Lost {
                    tls: matches!(e, OpenError::Tls { .. }),
                    error: e.to_string(),
                    up_for: None,
                    closed_by_broker: false,
                };
            }
        };
        match run_connection_with_wake(stream, session, app, connect_timeout, shutdown, wake).await
        {
            End::Purged => continue,
            end => return end,
        }
    }
    End::Lost {
        error: "the broker kept ending the connection that clears the old session".to_owned(),
        up_for: None,
        closed_by_broker: true,
        tls: false,
    }
}

/// Runs one connection over `stream` until it ends. `connect_timeout` bounds the wait for
/// CONNACK; `shutdown` is passed to the app once when it fires.
pub async fn run_connection(
    stream: BoxStream,
    session: &mut Session,
    app: &mut dyn App,
    connect_timeout: Duration,
    shutdown: &CancellationToken,
) -> End {
    run_connection_with_wake(stream, session, app, connect_timeout, shutdown, None).await
}

/// [`run_connection`], also passing each notification of `wake` to [`App::handle_wake`].
pub async fn run_connection_with_wake(
    mut stream: BoxStream,
    session: &mut Session,
    app: &mut dyn App,
    connect_timeout: Duration,
    shutdown: &CancellationToken,
    wake: Option<&Notify>,
) -> End {
    let started = Instant::now();
    let connack_deadline = started + connect_timeout;
    let mut connected_at: Option<Instant> = None;
    let mut rbuf = BytesMut::with_capacity(16 * 1024);
    let mut shutdown_seen = shutdown.is_cancelled();
    session.handle_transport_up(started);
    let lost = |error: String, connected_at: Option<Instant>| End::Lost {
        error,
        up_for: connected_at.map(|t| t.elapsed()),
        closed_by_broker: false,
        tls: false,
    };
    // One timer for the whole connection, moved only when the earliest deadline moves:
    // building a new one on every pass cost 5–7% of the daemon's instructions.
    let timer = tokio::time::sleep_until(tokio::time::Instant::from_std(connack_deadline));
    tokio::pin!(timer);
    let mut armed: Option<Instant> = None;

    loop {
        app.before_transmit(session, Instant::now());
        while let Some(bytes) = session.poll_transmit() {
            if let Err(e) = stream.write_all(&bytes).await {
                session.handle_transport_down();
                return End::Lost {
                    closed_by_broker: is_reset(&e),
                    tls: transport::is_tls_failure(&e),
                    error: format!("write failed: {e}{}", transport::tls_hint(&e)),
                    up_for: connected_at.map(|t| t.elapsed()),
                };
            }
        }
        app.after_transmit();
        if app.wants_disconnect() {
            close_after_disconnect(&mut stream, app.close_linger(Instant::now())).await;
            session.handle_transport_down();
            return End::Disconnected;
        }

        let deadline = [
            session.poll_timeout(),
            app.poll_timeout(),
            connected_at.is_none().then_some(connack_deadline),
        ]
        .into_iter()
        .flatten()
        .min();
        if deadline != armed {
            if let Some(d) = deadline {
                timer.as_mut().reset(tokio::time::Instant::from_std(d));
            }
            armed = deadline;
        }

        tokio::select! {
            biased;
            _ = shutdown.cancelled(), if !shutdown_seen => {
                shutdown_seen = true;
                app.handle_shutdown(session, Instant::now());
            }
            () = woken(wake) => {
                app.handle_wake(session, Instant::now());
            }
            read = stream.read_buf(&mut rbuf) => {
                let now = Instant::now();
                let (closed_by_broker, tls) = match &read {
                    Ok(n) => (*n == 0, false),
                    Err(e) => (is_reset(e), transport::is_tls_failure(e)),
                };
                let error = match read {
                    Ok(0) => Some("connection closed by the broker".to_owned()),
                    Ok(_) => session.handle_bytes(&mut rbuf, now).err().map(|e| e.to_string()),
                    Err(e) => Some(format!("read failed: {e}{}", transport::tls_hint(&e))),
                };
                if let Some(error) = error {
                    // Events decoded before the failure still count (e.g. a DISCONNECT reason).
                    if let Some(end) = dispatch(session, app, &mut connected_at, now) {
                        return end;
                    }
                    session.handle_transport_down();
                    return End::Lost {
                        error,
                        up_for: connected_at.map(|t| t.elapsed()),
                        closed_by_broker,
                        tls,
                    };
                }
            }
            () = &mut timer, if armed.is_some() => {
                // Fired: re-armed on the next pass, whatever the deadline is then.
                armed = None;
                let now = Instant::now();
                if connected_at.is_none() && now >= connack_deadline {
                    session.handle_transport_down();
                    return lost(format!("no CONNACK within {connect_timeout:?}"), None);
                }
                if let Err(e) = session.handle_timeout(now) {
                    session.handle_transport_down();
                    return lost(e.to_string(), connected_at);
                }
                app.handle_timeout(session, now);
            }
        }
        if let Some(end) = dispatch(session, app, &mut connected_at, Instant::now()) {
            if matches!(end, End::Purged) {
                while let Some(bytes) = session.poll_transmit() {
                    let _ = stream.write_all(&bytes).await;
                }
                close_after_disconnect(&mut stream, CLOSE_LINGER).await;
            }
            session.handle_transport_down();
            return end;
        }
    }
}

/// Flushes a DISCONNECT already written to `stream`, lets the broker close the connection
/// first (for at most `linger`), then shuts our side down (FIN; TLS: close_notify).
///
/// Closing first races the broker's own teardown. rumqttd 0.20 then handles the
/// disconnect twice, the second time under a connection id it has already given to the
/// next connection: with a 3.1.1 purge that is our own real connection, dropped right
/// after its CONNACK. Waiting for the broker's close costs nothing with brokers that close
/// at once (mosquitto, rumqttd, aedes).
async fn close_after_disconnect(stream: &mut BoxStream, linger: Duration) {
    let mut scratch = [0u8; 512];
    let _ = tokio::time::timeout(linger, async {
        stream.flush().await?;
        // Whatever still arrives is moot after our DISCONNECT; the timeout bounds the loop.
        while stream.read(&mut scratch).await? > 0 {}
        Ok::<(), std::io::Error>(())
    })
    .await;
    let _ = stream.shutdown().await;
}

/// Whether an I/O error means the other side tore the connection down.
fn is_reset(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
    matches!(e.kind(), ConnectionReset | ConnectionAborted | BrokenPipe)
}

/// Resolves on the next notification of `wake`; never without one.
async fn woken(wake: Option<&Notify>) {
    match wake {
        Some(wake) => wake.notified().await,
        None => std::future::pending().await,
    }
}

/// Hands session events to the app until none are left; `Some` when the connection ends.
fn dispatch(
    session: &mut Session,
    app: &mut dyn App,
    connected_at: &mut Option<Instant>,
    now: Instant,
) -> Option<End> {
    while let Some(event) = session.poll_event() {
        match event {
            Event::Refused(code) => return Some(End::Refused(code)),
            Event::Purged => return Some(End::Purged),
            event => {
                if matches!(event, Event::Connected { .. }) {
                    *connected_at = Some(now);
                }
                app.handle_event(event, session, now);
            }
        }
    }
    None
}
