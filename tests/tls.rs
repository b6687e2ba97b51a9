//! TLS against a real broker: mosquitto with a TLS listener on a free loopback port, and
//! certificates made at run time by the `openssl` CLI in a temp dir (a test CA, a second
//! CA, server certificates for the right and a wrong name, a client certificate).
//!
//! Covered: a whole exchange over TLS (also through `examine --tls --ca-file`, with
//! credentials that must never be logged), a server certificate from another CA and one for
//! another host name (each an ERROR naming the cause and the CA file, retried with backoff,
//! exit 69, and never a CONNECT), and mutual TLS with and without a client certificate.
//!
//! Without `openssl` or `mosquitto` the tests are skipped loudly; with `CI=true` they fail.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mqtt_responder::protocol::examiner::ExaminerSettings;
use support::{Mosquitto, bin_command, daemon_command, exchange, finish, text};

/// How long a daemon that cannot connect may take to give up (two or three attempts with
/// backoff capped at 1 s take well under that).
const GIVE_UP_TIMEOUT: Duration = Duration::from_secs(30);

/// Skips the calling test (returns from it) without `openssl`; see [`support::tool_or_skip`].
macro_rules! require_pki {
    () => {
        match support::tool_or_skip("openssl", "install it with `apt-get install -y openssl`") {
            Some(openssl) => Pki::new(openssl),
            None => return,
        }
    };
}

/// A throwaway PKI in a temp dir, made with the `openssl` CLI (EC P-256: fast to generate).
struct Pki {
    openssl: PathBuf,
    dir: tempfile::TempDir,
}

/// A certificate and its key, PEM files.
struct Leaf {
    cert: PathBuf,
    key: PathBuf,
}

impl Pki {
    fn new(openssl: PathBuf) -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("mqtt-responder-pki-")
            .tempdir()
            .unwrap();
        // Our own minimal config: the system's openssl.cnf may add or lack CA extensions.
        std::fs::write(
            dir.path().join("openssl.cnf"),
            "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\n\
             [ca]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n",
        )
        .unwrap();
        Pki { openssl, dir }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// Runs `openssl` in the PKI's dir with `args`, split at spaces (file names are
    /// relative and have none).
    fn openssl(&self, args: &str) {
        let out = Command::new(&self.openssl)
            .args(args.split(' '))
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A self-signed CA `name`: `name.pem` and `name.key`; returns the certificate's path.
    fn ca(&self, name: &str) -> PathBuf {
        let (pem, key) = (format!("{name}.pem"), format!("{name}.key"));
        self.openssl(&format!(
            "req -x509 -config openssl.cnf -extensions ca -newkey ec -pkeyopt \
             ec_paramgen_curve:prime256v1 -nodes -keyout {key} -out {pem} -days 2 -subj /CN={name}"
        ));
        self.path(&pem)
    }

    /// A certificate `name` signed by CA `ca` (made by [`ca`](Self::ca)) for `san` (e.g.
    /// `IP:127.0.0.1`) and extended key usage `usage` (`serverAuth`, `clientAuth`).
    fn leaf(&self, name: &str, ca: &str, san: &str, usage: &str) -> Leaf {
        let (pem, key, csr, ext) = (
            format!("{name}.pem"),
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.ext"),
        );
        self.openssl(&format!(
            "req -new -config openssl.cnf -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
             -nodes -keyout {key} -out {csr} -subj /CN={name}"
        ));
        std::fs::write(
            self.path(&ext),
            format!(
                "basicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature\n\
                 extendedKeyUsage = {usage}\nsubjectAltName = {san}\n"
            ),
        )
        .unwrap();
        self.openssl(&format!(
            "x509 -req -in {csr} -CA {ca}.pem -CAkey {ca}.key -CAcreateserial -out {pem} \
             -days 2 -extfile {ext}"
        ));
        Leaf {
            cert: self.path(&pem),
            key: self.path(&key),
        }
    }
}

/// Starts mosquitto with a TLS listener: `server`'s certificate, and `ca` (also the CA for
/// client certificates when `require_certificate`).
fn tls_listener(
    builder: support::MosquittoBuilder,
    ca: &Path,
    server: &Leaf,
    require_certificate: bool,
) -> Mosquitto {
    let mut builder = builder
        .extra_config(&format!("cafile {}", ca.display()))
        .extra_config(&format!("certfile {}", server.cert.display()))
        .extra_config(&format!("keyfile {}", server.key.display()));
    if require_certificate {
        builder = builder.extra_config("require_certificate true");
    }
    builder.start().unwrap()
}

/// The daemon's config: `[broker]` on 127.0.0.1:`port` plus `broker` lines, `[broker.tls]`
/// with `tls` lines, fast reconnects bounded by `max_attempts`.
fn daemon_toml(port: u16, user_id: &str, broker: &str, tls: &str, max_attempts: u32) -> String {
    format!(
        "[broker]\nhost = \"127.0.0.1\"\nport = {port}\n{broker}\n[broker.tls]\n{tls}\n\
         [session]\nuser_id = \"{user_id}\"\nlogin_timeout_secs = 5\n\n\
         [reconnect]\ninitial_delay_ms = 50\nmax_delay_secs = 1\nmax_attempts = {max_attempts}\n"
    )
}

fn ca_line(ca: &Path) -> String {
    format!("ca_file = \"{}\"\n", ca.display())
}

fn spawn_daemon(config: &Path) -> Child {
    daemon_command(config).spawn().unwrap()
}

/// Runs the daemon with `toml` until it gives up; its exit code and log.
fn run_until_it_gives_up(toml: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = finish(
        spawn_daemon(&support::write_config(dir.path(), toml)),
        GIVE_UP_TIMEOUT,
    );
    (out.status.code(), text(&out.stderr))
}

/// A refused TLS connection as SPEC §3 wants it: one ERROR naming `cause` and the CA file
/// (a repeat of the same cause is not another ERROR), retried with backoff, exit 69 after
/// `attempts`; the broker logged `broker_says` for each attempt and never saw a CONNECT
/// from `client_id`.
#[allow(clippy::too_many_arguments)]
fn assert_refused(
    broker: &Mosquitto,
    mark: usize,
    (code, log): (Option<i32>, String),
    attempts: u32,
    cause: &str,
    ca: &Path,
    client_id: &str,
    broker_says: &str,
) {
    assert_eq!(code, Some(69), "{log}");
    let errors: Vec<&str> = log.lines().filter(|l| l.contains(" ERROR ")).collect();
    let tls_errors: Vec<&&str> = errors
        .iter()
        .filter(|l| l.contains(cause) && !l.contains("giving up"))
        .collect();
    assert_eq!(tls_errors.len(), 1, "one TLS ERROR per streak:\n{log}");
    assert!(
        tls_errors[0].contains(&format!("trusting CA file {}", ca.display())),
        "the ERROR names the CA file:\n{log}"
    );
    assert!(
        log.contains("reconnecting in ") && log.contains("(attempt 2)"),
        "retried with backoff:\n{log}"
    );
    assert!(
        errors
            .iter()
            .any(|l| l.contains(&format!("unreachable after {attempts} attempts"))),
        "{log}"
    );
    for attempt in 2..attempts {
        // The repeats are WARN, folded into the backoff line.
        assert!(
            log.lines().any(|l| l.contains(" WARN ")
                && l.contains(&format!("(attempt {})", attempt + 1))
                && l.contains(cause)),
            "no WARN backoff line for attempt {}:\n{log}",
            attempt + 1
        );
    }
    assert!(!log.contains("connected (MQTT"), "{log}");
    // Each attempt failed in the broker's TLS accept (mosquitto logs it either as a "New
    // connection" and an OpenSSL error or as one "Client connection … failed" line); the
    // daemon may exit before mosquitto has logged the last one.
    let failed_in_broker = support::wait_until(Duration::from_secs(10), || {
        broker.log_since(mark).matches(broker_says).count() >= attempts as usize
    });
    let broker_log = broker.log_since(mark);
    assert!(
        failed_in_broker,
        "{attempts} attempts failed with {broker_says:?} in the broker:\n{broker_log}"
    );
    assert!(
        !broker_log.contains("New client connected") && !broker_log.contains(client_id),
        "the broker accepted a CONNECT:\n{broker_log}"
    );
}

#[test]
fn a_whole_exchange_over_tls_with_the_test_ca() {
    let pki = require_pki!();
    let builder = require_mosquitto!();
    let ca = pki.ca("ca");
    let server = pki.leaf("server", "ca", "IP:127.0.0.1,DNS:localhost", "serverAuth");
    let broker = tls_listener(builder, &ca, &server, false);
    let mark = broker.log_mark();
    let toml = daemon_toml(broker.port(), "tls-ok", "", &ca_line(&ca), 20);
    let outcome = exchange::run(&toml, "examiner-tls-ok", settings(50), Vec::new());
    assert_exchanged(&outcome, 50);
    let log = broker.log_since(mark);
    assert!(
        log.contains("as mqtt-responder-tls-ok") && log.contains("Received DISCONNECT from"),
        "{log}"
    );
}

#[test]
fn a_server_certificate_from_another_ca_is_refused() {
    let pki = require_pki!();
    let builder = require_mosquitto!();
    let ca = pki.ca("ca");
    pki.ca("other-ca");
    let rogue = pki.leaf(
        "rogue",
        "other-ca",
        "IP:127.0.0.1,DNS:localhost",
        "serverAuth",
    );
    let broker = tls_listener(builder, &ca, &rogue, false);
    let mark = broker.log_mark();
    let toml = daemon_toml(broker.port(), "tls-rogue", "", &ca_line(&ca), 2);
    let run = run_until_it_gives_up(&toml);
    assert_refused(
        &broker,
        mark,
        run,
        2,
        "invalid peer certificate: UnknownIssuer",
        &ca,
        "tls-rogue",
        // The daemon, not the broker, broke the handshake off: it refused the certificate.
        "alert unknown ca",
    );
}

#[test]
fn a_host_name_mismatch_is_refused() {
    let pki = require_pki!();
    let builder = require_mosquitto!();
    let ca = pki.ca("ca");
    let elsewhere = pki.leaf("elsewhere", "ca", "DNS:broker.example", "serverAuth");
    let broker = tls_listener(builder, &ca, &elsewhere, false);
    let mark = broker.log_mark();
    // Three attempts: the third shows that a repeat is a WARN, not another ERROR.
    let toml = daemon_toml(broker.port(), "tls-name", "", &ca_line(&ca), 3);
    let run = run_until_it_gives_up(&toml);
    assert_refused(
        &broker,
        mark,
        run,
        3,
        "certificate not valid for name \"127.0.0.1\"",
        &ca,
        "tls-name",
        "alert bad certificate",
    );
}

#[test]
fn mutual_tls_passes_with_a_client_certificate_and_fails_clearly_without() {
    let pki = require_pki!();
    let builder = require_mosquitto!();
    let ca = pki.ca("ca");
    let server = pki.leaf("server", "ca", "IP:127.0.0.1", "serverAuth");
    let client = pki.leaf("client", "ca", "DNS:device.example", "clientAuth");
    let broker = tls_listener(builder, &ca, &server, true);

    // The examiner connects with the daemon's [broker.tls], client certificate included.
    let tls = format!(
        "{}client_cert_file = \"{}\"\nclient_key_file = \"{}\"\n",
        ca_line(&ca),
        client.cert.display(),
        client.key.display()
    );
    let toml = daemon_toml(broker.port(), "tls-mutual", "", &tls, 20);
    let outcome = exchange::run(&toml, "examiner-tls-mutual", settings(30), Vec::new());
    assert_exchanged(&outcome, 30);

    // examine's --cert-file/--key-file: the broker takes the examiner (its SUBSCRIBE is in
    // the log); no device logs in, so it gives up after a second with exit 1.
    let mark = broker.log_mark();
    let port = broker.port().to_string();
    let examiner = bin_command()
        .args([
            "examine",
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--ca-file",
        ])
        .arg(&ca)
        .arg("--cert-file")
        .arg(&client.cert)
        .arg("--key-file")
        .arg(&client.key)
        .args(["--client-id", "examiner-mtls-cli", "--user-id", "nobody"])
        .args(["--timeout", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = finish(examiner, Duration::from_secs(30));
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("never logged in"), "{said}");
    assert!(
        broker
            .log_since(mark)
            .contains("Received SUBSCRIBE from examiner-mtls-cli"),
        "{}",
        broker.log_since(mark)
    );

    // Without one: mosquitto (TLS 1.3) rejects it after the handshake with an alert.
    let mark = broker.log_mark();
    let toml = daemon_toml(broker.port(), "tls-anon", "", &ca_line(&ca), 2);
    let run = run_until_it_gives_up(&toml);
    assert_refused(
        &broker,
        mark,
        run,
        2,
        "CertificateRequired (the broker requires a client certificate)",
        &ca,
        "tls-anon",
        "peer did not return a certificate",
    );
}

#[test]
fn examine_cli_over_tls_with_credentials_that_are_never_logged() {
    const PASSWORD: &str = "s3cret-tls-Pa55";
    let pki = require_pki!();
    let builder = require_mosquitto!()
        .with_user("device", PASSWORD)
        .with_user("examiner", PASSWORD);
    let ca = pki.ca("ca");
    let server = pki.leaf("server", "ca", "IP:127.0.0.1", "serverAuth");
    let broker = tls_listener(builder, &ca, &server, false);
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("examiner-password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();

    let mark = broker.log_mark();
    let port = broker.port().to_string();
    let examiner = bin_command()
        .args(["examine", "--host", "127.0.0.1", "--port", &port, "--tls"])
        .arg("--ca-file")
        .arg(&ca)
        .args(["--username", "examiner", "--password-file"])
        .arg(&password_file)
        .args(["--client-id", "examiner-tls-cli", "--user-id", "tls-cli"])
        .args(["--commands", "20", "--delay-ms", "200", "--timeout", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // No login before the examiner listens: its subscription shows in the broker log.
    if !broker.wait_for_log_since(
        mark,
        "Received SUBSCRIBE from examiner-tls-cli",
        Duration::from_secs(15),
    ) {
        let out = finish(examiner, Duration::from_secs(15));
        panic!("examine did not subscribe: {}", text(&out.stderr));
    }
    let credentials = format!("username = \"device\"\npassword = \"{PASSWORD}\"\n");
    let toml = daemon_toml(broker.port(), "tls-cli", &credentials, &ca_line(&ca), 20);
    let daemon = spawn_daemon(&support::write_config(dir.path(), &toml));
    let out = finish(examiner, Duration::from_secs(60));
    let daemon = finish(daemon, Duration::from_secs(15));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    let daemon_log = text(&daemon.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("total        20       20       0     0     0     0"),
        "{stdout}"
    );
    assert_eq!(daemon.status.code(), Some(0), "{daemon_log}");
    assert!(daemon_log.contains("summary: Completed"), "{daemon_log}");
    for (what, output) in [
        ("examine's stdout", &stdout),
        ("examine's stderr", &stderr),
        ("the daemon's log", &daemon_log),
        ("the broker's log", &broker.log()),
    ] {
        assert!(!output.contains(PASSWORD), "the password is in {what}");
    }
}

/// The examiner's settings for the daemon's config, `commands` commands.
fn settings(commands: usize) -> impl FnOnce(&mqtt_responder::config::Config) -> ExaminerSettings {
    move |cfg| {
        let mut settings = cfg.examiner_settings();
        settings.commands = commands;
        settings.delay = Duration::from_millis(100);
        settings
    }
}

/// Every command answered once; the daemon finished cleanly.
fn assert_exchanged(outcome: &exchange::Outcome, commands: u64) {
    let r = &outcome.report;
    let totals = r.totals();
    assert!(
        r.passed(),
        "{:?}\n{r}\ndaemon:\n{}",
        r.problems(),
        outcome.stderr
    );
    assert_eq!((totals.sent, totals.answered), (commands, commands), "{r}");
    assert_eq!(totals.duplicates + r.late, 0, "{r}");
    assert_eq!(outcome.exit_code, Some(0), "daemon:\n{}", outcome.stderr);
    assert!(
        outcome.stderr.contains("summary: Completed"),
        "{}",
        outcome.stderr
    );
    assert!(!outcome.stderr.contains(" ERROR "), "{}", outcome.stderr);
}
