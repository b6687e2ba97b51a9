//! Opening the byte stream to the broker: TCP with TCP_NODELAY, optionally TLS (rustls with
//! ring), both bounded by the connect timeout.
//!
//! The TLS client configuration is built once at startup so that a bad CA or key file is a
//! configuration error, not a reconnect loop.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{self, AlertDescription, ClientConfig, RootCertStore};

use crate::config::{Broker, Tls};

/// A connected byte stream, plain or TLS.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// A boxed [`Stream`].
pub type BoxStream = Pin<Box<dyn Stream>>;

/// Where and how to connect, prepared once.
#[derive(Clone)]
pub struct Endpoint {
    host: String,
    port: u16,
    timeout: Duration,
    tls: Option<(Arc<ClientConfig>, String)>,
}

/// Why opening the stream failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// TCP connect failed.
    #[error("cannot connect to {0}: {1}{hint}", hint = blocked_hint(.1))]
    Tcp(String, io::Error),
    /// The TLS handshake failed (untrusted certificate, wrong name, …).
    #[error(
        "TLS handshake with {addr} failed (trusting {trust}): {source}{hint}",
        hint = tls_hint(.source)
    )]
    Tls {
        /// host:port
        addr: String,
        /// The CA file in use or "the system trust store".
        trust: String,
        /// The cause.
        source: io::Error,
    },
    /// Connect + handshake took longer than the timeout.
    #[error("connecting to {0} timed out after {1:?}")]
    Timeout(String, Duration),
}

/// Why the TLS settings could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct TlsSetupError {
    /// The configuration key at fault.
    pub key: &'static str,
    /// What is wrong.
    pub message: String,
}

impl Endpoint {
    /// Prepares the endpoint; loads and checks TLS material now.
    pub fn new(broker: &Broker) -> Result<Endpoint, TlsSetupError> {
        let tls = match &broker.tls {
            None => None,
            Some(tls) => Some((Arc::new(client_config(tls)?), trust_name(tls))),
        };
        Ok(Endpoint {
            host: broker.host.clone(),
            port: broker.port,
            timeout: broker.connect_timeout,
            tls,
        })
    }

    /// `host:port`, for messages.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// What a TLS connection trusts ("CA file PATH" or "the system trust store"); `None`
    /// without TLS.
    pub fn trust(&self) -> Option<&str> {
        self.tls.as_ref().map(|(_, trust)| trust.as_str())
    }

    /// Opens the stream: TCP (no Nagle delay) and, if configured, the TLS handshake.
    pub async fn open(&self) -> Result<BoxStream, OpenError> {
        match tokio::time::timeout(self.timeout, self.open_inner()).await {
            Ok(result) => result,
            Err(_) => Err(OpenError::Timeout(self.addr(), self.timeout)),
        }
    }

    async fn open_inner(&self) -> Result<BoxStream, OpenError> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| OpenError::Tcp(self.addr(), e))?;
        // Without this a QoS 2 round trip waits on Nagle's algorithm (~40 ms per step).
        tcp.set_nodelay(true)
            .map_err(|e| OpenError::Tcp(self.addr(), e))?;
        let tcp = QuickAck(tcp);
        let Some((config, trust)) = &self.tls else {
            return Ok(Box::pin(tcp));
        };
        let tls_err = |source| OpenError::Tls {
            addr: self.addr(),
            trust: trust.clone(),
            source,
        };
        let name = ServerName::try_from(self.host.clone())
            .map_err(|e| tls_err(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
        let stream = TlsConnector::from(config.clone())
            .connect(name, tcp)
            .await
            .map_err(tls_err)?;
        Ok(Box::pin(stream))
    }
}

/// TCP that acknowledges what it reads at once. A broker with Nagle's algorithm on (stock
/// mosquitto) holds its next small packet until the previous one is acknowledged, and
/// Linux delays that ACK up to 40 ms when we have nothing to send back (after a PUBCOMP, say):
/// re-arming TCP_QUICKACK after every read (the flag does not stick) removes that stall.
struct QuickAck(TcpStream);

impl tokio::io::AsyncRead for QuickAck {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let polled = std::pin::Pin::new(&mut self.0).poll_read(cx, buf);
        if polled.is_ready() {
            // Best effort: a failure only brings the delay back.
            let _ = socket2::SockRef::from(&self.0).set_tcp_quickack(true);
        }
        polled
    }
}

impl tokio::io::AsyncWrite for QuickAck {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

/// EPERM from `connect` is not the network's answer but a local firewall's, most likely the
/// unit's `IPAddressAllow=` list: say where to look.
fn blocked_hint(e: &io::Error) -> &'static str {
    if e.kind() == io::ErrorKind::PermissionDenied {
        " (refused locally: a broker outside the LAN needs IPAddressAllow=any in a drop-in \
         for mqtt-responder.service; see README)"
    } else {
        ""
    }
}

/// Whether `e` is the TLS layer's own failure (an alert from the broker, a record that does
/// not decrypt) rather than the socket's: tokio-rustls wraps those as `InvalidData`.
pub fn is_tls_failure(e: &io::Error) -> bool {
    tls_cause(e).is_some()
}

fn tls_cause(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

/// In TLS 1.3 a broker that wants a client certificate says so with an alert after the
/// handshake, which rustls reports by its bare name: spell it out.
pub fn tls_hint(e: &io::Error) -> &'static str {
    match tls_cause(e) {
        Some(rustls::Error::AlertReceived(AlertDescription::CertificateRequired)) => {
            " (the broker requires a client certificate)"
        }
        _ => "",
    }
}

fn trust_name(tls: &Tls) -> String {
    match &tls.ca_file {
        Some(path) => format!("CA file {}", path.display()),
        None => "the system trust store".to_owned(),
    }
}

fn client_config(tls: &Tls) -> Result<ClientConfig, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    match &tls.ca_file {
        Some(path) => {
            let certs = read_certs(path, "broker.tls.ca_file")?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(TlsSetupError {
                    key: "broker.tls.ca_file",
                    message: format!("{} holds no usable certificate", path.display()),
                });
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                return Err(TlsSetupError {
                    key: "broker.tls.ca_file",
                    message: "empty, and the system trust store has no usable certificate"
                        .to_owned(),
                });
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError {
            key: "broker.tls",
            message: e.to_string(),
        })?
        .with_root_certificates(roots);
    match &tls.client_auth {
        None => Ok(builder.with_no_client_auth()),
        Some(auth) => {
            let certs = read_certs(&auth.cert_file, "broker.tls.client_cert_file")?;
            let key = PrivateKeyDer::from_pem_file(&auth.key_file).map_err(|e| TlsSetupError {
                key: "broker.tls.client_key_file",
                message: format!("{}: {e}", auth.key_file.display()),
            })?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| TlsSetupError {
                    key: "broker.tls.client_cert_file",
                    message: e.to_string(),
                })
        }
    }
}

fn read_certs(
    path: &PathBuf,
    key: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let err = |message: String| TlsSetupError { key, message };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(format!("{}: {e}", path.display())))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(err(format!("{} holds no PEM certificate", path.display())));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tls_alert_is_a_tls_failure_and_a_missing_client_certificate_is_spelled_out() {
        let alert = |a| io::Error::new(io::ErrorKind::InvalidData, rustls::Error::AlertReceived(a));
        let required = alert(AlertDescription::CertificateRequired);
        assert!(is_tls_failure(&required));
        assert!(tls_hint(&required).contains("requires a client certificate"));
        let unknown_ca = alert(AlertDescription::UnknownCA);
        assert!(is_tls_failure(&unknown_ca));
        assert_eq!(tls_hint(&unknown_ca), "");
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert!(!is_tls_failure(&reset));
        assert_eq!(tls_hint(&reset), "");
    }

    #[test]
    fn a_handshake_error_names_the_trust_in_use() {
        let e = OpenError::Tls {
            addr: "127.0.0.1:8883".to_owned(),
            trust: trust_name(&Tls {
                ca_file: None,
                client_auth: None,
            }),
            source: io::Error::new(
                io::ErrorKind::InvalidData,
                rustls::Error::AlertReceived(AlertDescription::CertificateRequired),
            ),
        };
        assert_eq!(
            e.to_string(),
            "TLS handshake with 127.0.0.1:8883 failed (trusting the system trust store): \
             received fatal alert: CertificateRequired (the broker requires a client certificate)"
        );
    }
}
