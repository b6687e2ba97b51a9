//! A fault-injecting TCP proxy on 127.0.0.1, between the daemon and a broker.
//!
//! [`Proxy::start`] listens on a free loopback port and forwards every connection to the
//! upstream port, one pair of std threads per connection. While it runs, a test can:
//!
//! * [`cut_all`](Proxy::cut_all): close both sides of every current connection (FIN to the
//!   client and to the broker, as when a NAT box or a Wi-Fi link drops the flow);
//! * [`refuse`](Proxy::refuse): accept new connections and close them at once, until
//!   [`forward`](Proxy::forward);
//! * [`black_hole`](Proxy::black_hole): stop forwarding in both directions while keeping
//!   every socket open (a half-open link: nothing arrives, nothing fails), until
//!   [`forward`](Proxy::forward), which lets the held bytes through again;
//! * [`hold_upstream`](Proxy::hold_upstream): keep what clients send (counted in
//!   [`held_upstream`](Proxy::held_upstream)) while still forwarding what the broker sends,
//!   so a client's publishes stay unacknowledged, until [`forward`](Proxy::forward) passes
//!   them on.
//!
//! A test that wants a fault at a point of the exchange, not at a moment, arms a trigger:
//! [`freeze_after_publishes`](Proxy::freeze_after_publishes)`(k)` passes the next `k`
//! PUBLISH packets from the broker to the client and then, before one more byte goes
//! through, switches to [`black_hole`](Proxy::black_hole). [`wait_frozen`](Proxy::wait_frozen)
//! tells the test it happened; it then injects its fault (cut, broker restart, SIGKILL) with
//! the client certainly in the middle of the stream (holding the k-th command, its answer
//! kept in the kernel) and calls [`forward`](Proxy::forward). The broker-to-client direction
//! is forwarded in whole MQTT packets for this.
//!
//! It counts the connections it accepted ([`accepted`](Proxy::accepted)) and, for those that
//! ended by end of stream, which side closed first ([`closed_first_by_client`] and
//! [`closed_first_by_broker`]). Every loop is
//! bounded in time ([`LIFETIME`]) and paced by short socket timeouts; dropping the proxy
//! stops it, closes every socket and joins every thread.
//!
//! [`closed_first_by_client`]: Proxy::closed_first_by_client
//! [`closed_first_by_broker`]: Proxy::closed_first_by_broker

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::local_addr;

/// Upper bound on the life of a proxy and each of its threads.
pub const LIFETIME: Duration = Duration::from_secs(300);
/// How long a blocked accept or read waits before the thread looks at its flags again.
const TICK: Duration = Duration::from_millis(5);
/// Bound on connecting to the upstream port, and on one write to a peer that stopped
/// reading.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on the reads of one pump (far above what a test moves).
const MAX_READS: usize = 50_000_000;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// Forward both ways.
    Forward = 0,
    /// Accept new connections and close them at once; current ones keep forwarding.
    Refuse = 1,
    /// Forward nothing, close nothing (new connections are accepted and held too).
    BlackHole = 2,
    /// Read from clients and keep it; forward from the broker.
    HoldUpstream = 3,
}

/// One proxied connection: handles to both sockets, for cutting it from outside.
struct Conn {
    client: TcpStream,
    upstream: TcpStream,
    cut: Arc<AtomicBool>,
    pumps: Vec<JoinHandle<()>>,
}

impl Conn {
    fn close(&self) {
        self.cut.store(true, Ordering::SeqCst);
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.upstream.shutdown(Shutdown::Both);
    }

    fn is_finished(&self) -> bool {
        self.pumps.iter().all(JoinHandle::is_finished)
    }

    fn join(self) {
        for pump in self.pumps {
            let _ = pump.join();
        }
    }
}

struct Shared {
    upstream: SocketAddr,
    mode: AtomicU8,
    stop: AtomicBool,
    accepted: AtomicUsize,
    refused: AtomicUsize,
    /// Bytes read from clients and kept back in [`Mode::HoldUpstream`], in all.
    held_upstream: AtomicUsize,
    /// PUBLISH packets forwarded from the broker to clients, all connections together.
    publishes_down: AtomicUsize,
    /// `publishes_down` at which to switch to [`Mode::BlackHole`] (`usize::MAX`: never).
    freeze_at: AtomicUsize,
    /// Times the trigger fired.
    freezes: AtomicUsize,
    /// Connections whose first end of stream came from the client / from the broker.
    client_closed_first: AtomicUsize,
    broker_closed_first: AtomicUsize,
    conns: Mutex<Vec<Conn>>,
}

/// The side a pump reads from.
#[derive(Debug, Clone, Copy)]
enum Side {
    Client,
    Broker,
}

impl Shared {
    fn mode(&self) -> Mode {
        match self.mode.load(Ordering::SeqCst) {
            1 => Mode::Refuse,
            2 => Mode::BlackHole,
            3 => Mode::HoldUpstream,
            _ => Mode::Forward,
        }
    }
}

/// The proxy; see the module documentation.
pub struct Proxy {
    port: u16,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Listens on a free 127.0.0.1 port and forwards to 127.0.0.1:`upstream_port`.
    pub fn start(upstream_port: u16) -> Proxy {
        let listener = TcpListener::bind(local_addr(0)).expect("bind the proxy on 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("non-blocking proxy listener");
        let port = listener.local_addr().expect("proxy address").port();
        let shared = Arc::new(Shared {
            upstream: local_addr(upstream_port),
            mode: AtomicU8::new(Mode::Forward as u8),
            stop: AtomicBool::new(false),
            accepted: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
            held_upstream: AtomicUsize::new(0),
            publishes_down: AtomicUsize::new(0),
            freeze_at: AtomicUsize::new(usize::MAX),
            freezes: AtomicUsize::new(0),
            client_closed_first: AtomicUsize::new(0),
            broker_closed_first: AtomicUsize::new(0),
            conns: Mutex::new(Vec::new()),
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name(format!("proxy-{port}"))
                .spawn(move || accept_loop(&listener, &shared))
                .expect("spawn the proxy thread")
        };
        Proxy {
            port,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Connections accepted so far (refused ones included).
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections accepted and closed at once because the proxy was refusing.
    pub fn refused(&self) -> usize {
        self.shared.refused.load(Ordering::SeqCst)
    }

    /// Keep what clients send (see the module documentation) until [`forward`](Self::forward).
    pub fn hold_upstream(&self) {
        self.shared
            .mode
            .store(Mode::HoldUpstream as u8, Ordering::SeqCst);
    }

    /// Bytes kept back from clients by [`hold_upstream`](Self::hold_upstream) so far.
    pub fn held_upstream(&self) -> usize {
        self.shared.held_upstream.load(Ordering::SeqCst)
    }

    /// Connections that ended with the client closing first (not cut by the proxy).
    pub fn closed_first_by_client(&self) -> usize {
        self.shared.client_closed_first.load(Ordering::SeqCst)
    }

    /// Connections that ended with the broker closing first (not cut by the proxy).
    pub fn closed_first_by_broker(&self) -> usize {
        self.shared.broker_closed_first.load(Ordering::SeqCst)
    }

    /// PUBLISH packets passed from the broker to clients so far.
    pub fn publishes_down(&self) -> usize {
        self.shared.publishes_down.load(Ordering::SeqCst)
    }

    /// Arms the trigger: after `k` more PUBLISH packets from the broker have passed, the
    /// proxy turns into a [black hole](Self::black_hole) before anything else passes.
    pub fn freeze_after_publishes(&self, k: usize) {
        assert!(k > 0, "a trigger needs at least one packet to wait for");
        let at = self.publishes_down() + k;
        self.shared.freeze_at.store(at, Ordering::SeqCst);
    }

    /// Disarms the trigger if it has not fired.
    pub fn disarm(&self) {
        self.shared.freeze_at.store(usize::MAX, Ordering::SeqCst);
    }

    /// Times the trigger fired so far.
    pub fn freezes(&self) -> usize {
        self.shared.freezes.load(Ordering::SeqCst)
    }

    /// Waits (bounded) until the trigger has fired `n` times in all.
    pub fn wait_frozen(&self, n: usize, timeout: Duration) -> bool {
        super::wait_until(timeout, || self.freezes() >= n)
    }

    /// Connections currently open through the proxy.
    pub fn open_connections(&self) -> usize {
        let conns = self.shared.conns.lock().expect("proxy lock");
        conns.iter().filter(|c| !c.is_finished()).count()
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        self.shared.mode()
    }

    /// Forward both ways again (ends [`refuse`](Self::refuse) and
    /// [`black_hole`](Self::black_hole)).
    pub fn forward(&self) {
        self.shared
            .mode
            .store(Mode::Forward as u8, Ordering::SeqCst);
    }

    /// Close new connections right after accepting them.
    pub fn refuse(&self) {
        self.shared.mode.store(Mode::Refuse as u8, Ordering::SeqCst);
    }

    /// Stop forwarding in both directions, keeping every socket open.
    pub fn black_hole(&self) {
        self.shared
            .mode
            .store(Mode::BlackHole as u8, Ordering::SeqCst);
    }

    /// Closes both sides of every current connection; returns how many there were.
    pub fn cut_all(&self) -> usize {
        let conns: Vec<Conn> = std::mem::take(&mut *self.shared.conns.lock().expect("proxy lock"));
        let n = conns.iter().filter(|c| !c.is_finished()).count();
        for conn in &conns {
            conn.close();
        }
        for conn in conns {
            conn.join();
        }
        n
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        self.cut_all();
    }
}

/// Accepts until stopped (or [`LIFETIME`]); reaps finished connections as it goes.
fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    let deadline = Instant::now() + LIFETIME;
    let max_ticks = LIFETIME.as_millis() / TICK.as_millis() + 1;
    for _ in 0..max_ticks {
        if shared.stop.load(Ordering::SeqCst) || Instant::now() >= deadline {
            break;
        }
        match listener.accept() {
            Ok((client, _)) => {
                shared.accepted.fetch_add(1, Ordering::SeqCst);
                handle_new(client, shared);
            }
            // Paces the loop: the listener is non-blocking so the stop flag is seen.
            Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(TICK),
            Err(_) => thread::sleep(TICK),
        }
        let finished: Vec<Conn> = {
            let mut conns = shared.conns.lock().expect("proxy lock");
            let (done, live) = std::mem::take(&mut *conns)
                .into_iter()
                .partition(Conn::is_finished);
            *conns = live;
            done
        };
        finished.into_iter().for_each(Conn::join);
    }
}

fn handle_new(client: TcpStream, shared: &Arc<Shared>) {
    if shared.mode() == Mode::Refuse {
        shared.refused.fetch_add(1, Ordering::SeqCst);
        let _ = client.shutdown(Shutdown::Both);
        return;
    }
    let Ok(upstream) = TcpStream::connect_timeout(&shared.upstream, UPSTREAM_TIMEOUT) else {
        // Broker down: the client sees the connection close, as with a refused connect.
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let (Ok(c2), Ok(u2), Ok(c3), Ok(u3)) = (
        client.try_clone(),
        upstream.try_clone(),
        client.try_clone(),
        upstream.try_clone(),
    ) else {
        return;
    };
    for s in [&client, &upstream] {
        let _ = s.set_nodelay(true);
        let _ = s.set_read_timeout(Some(TICK));
        let _ = s.set_write_timeout(Some(UPSTREAM_TIMEOUT));
    }
    let cut = Arc::new(AtomicBool::new(false));
    let ended = Arc::new(AtomicBool::new(false));
    let spawn = |from: TcpStream, to: TcpStream, side: Side, name: &str| {
        let shared = Arc::clone(shared);
        let cut = Arc::clone(&cut);
        let ended = Arc::clone(&ended);
        thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || pump(from, to, side, &shared, &cut, &ended))
            .expect("spawn a proxy pump")
    };
    let pumps = vec![
        spawn(c2, upstream, Side::Client, "proxy-up"),
        spawn(u2, client, Side::Broker, "proxy-down"),
    ];
    shared.conns.lock().expect("proxy lock").push(Conn {
        client: c3,
        upstream: u3,
        cut,
        pumps,
    });
}

/// Copies `from` → `to` while forwarding; holds still in a black hole; on end of stream,
/// an error or a cut, closes both sockets so the other direction ends too. The first of a
/// connection's two pumps to end (`ended`) counts an end of stream for its `side`. What the
/// broker sends goes on in whole packets (see [`pass_packets`]), for the trigger.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    side: Side,
    shared: &Shared,
    cut: &AtomicBool,
    ended: &AtomicBool,
) {
    let deadline = Instant::now() + LIFETIME;
    let mut buf = vec![0u8; 16 * 1024];
    // What HoldUpstream kept back from the client, or (broker side) what was read but not
    // passed yet: a partial packet, or what follows the packet that fired the trigger.
    let mut held: Vec<u8> = Vec::new();
    for _ in 0..MAX_READS {
        if cut.load(Ordering::SeqCst)
            || shared.stop.load(Ordering::SeqCst)
            || Instant::now() >= deadline
        {
            break;
        }
        let mode = shared.mode();
        if mode == Mode::BlackHole {
            // Not reading: the bytes wait in the kernel, the peer sees silence.
            thread::sleep(TICK);
            continue;
        }
        let holding = mode == Mode::HoldUpstream && matches!(side, Side::Client);
        if !holding && !held.is_empty() {
            let passed = match side {
                Side::Client => held.len(),
                Side::Broker => pass_packets(&held, shared),
            };
            if to.write_all(&held[..passed]).is_err() {
                break;
            }
            held.drain(..passed);
            if shared.mode() == Mode::BlackHole {
                continue;
            }
        }
        match from.read(&mut buf) {
            Ok(0) => {
                if !cut.load(Ordering::SeqCst) && !ended.swap(true, Ordering::SeqCst) {
                    match side {
                        Side::Client => &shared.client_closed_first,
                        Side::Broker => &shared.broker_closed_first,
                    }
                    .fetch_add(1, Ordering::SeqCst);
                }
                break;
            }
            Ok(n) if holding => {
                held.extend_from_slice(&buf[..n]);
                shared.held_upstream.fetch_add(n, Ordering::SeqCst);
            }
            Ok(n) if matches!(side, Side::Broker) => held.extend_from_slice(&buf[..n]),
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    ended.store(true, Ordering::SeqCst);
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// How many leading bytes of `bytes` (from the broker) to pass on: every whole MQTT packet,
/// stopping right after the PUBLISH that fires the trigger (which then switches the mode to
/// [`Mode::BlackHole`]). A partial packet at the end waits for the rest.
fn pass_packets(bytes: &[u8], shared: &Shared) -> usize {
    let mut at = 0;
    // Each pass consumes one whole packet of at least two bytes.
    for _ in 0..bytes.len() {
        let Some(len) = packet_len(&bytes[at..]) else {
            break;
        };
        let is_publish = bytes[at] >> 4 == 3;
        at += len;
        if is_publish {
            let count = shared.publishes_down.fetch_add(1, Ordering::SeqCst) + 1;
            if count == shared.freeze_at.load(Ordering::SeqCst) {
                shared.freeze_at.store(usize::MAX, Ordering::SeqCst);
                shared.mode.store(Mode::BlackHole as u8, Ordering::SeqCst);
                shared.freezes.fetch_add(1, Ordering::SeqCst);
                break;
            }
        }
    }
    at
}

/// The length of the whole MQTT packet at the start of `bytes` (fixed header included),
/// once all of it is there.
fn packet_len(bytes: &[u8]) -> Option<usize> {
    let mut remaining = 0usize;
    // The remaining length: at most four bytes of seven bits each, little end first.
    for i in 0..4 {
        let byte = *bytes.get(1 + i)?;
        remaining |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            let len = 2 + i + remaining;
            return (bytes.len() >= len).then_some(len);
        }
    }
    // A malformed length: pass the bytes on as they are and let the client say so.
    Some(bytes.len())
}
