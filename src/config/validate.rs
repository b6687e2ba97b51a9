//! Validation: the raw schema, and `[replies]` as the file and the environment give it, into
//! the typed [`Config`]. The rules on values live here (ranges, templates that must render to
//! valid topics, strings MQTT can carry, files that must be readable now, keys that must
//! agree with each other); unknown keys, and wrong types outside `[replies]`, are caught
//! earlier, when the `config` crate deserializes. Every failure is a [`ConfigError`] naming
//! the key.

use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use super::error::{Check, ConfigError, quoted};
use super::raw::{RawBroker, RawConfig, RawSession, RawTls};
use super::schema::{
    Broker, ClientAuth, Config, Log, LogFormat, Reconnect, ReplyTable, Session, Tls, UnknownCommand,
};
use crate::protocol::responder::ResponderSettings;
use crate::topic::{Template, Var, Vars, validate_level, validate_topic};
use crate::vocabulary::Secret;
use crate::vocabulary::{Protocol, QoS};

/// Upper bound for durations and counts. Far beyond any sensible setting, and it keeps
/// `Instant + Duration` arithmetic elsewhere in the daemon clear of overflow.
const MAX_U32: i64 = u32::MAX as i64;

/// Largest payload MQTT can carry in one packet (the Remaining Length limit).
const MAX_PACKET_BYTES: i64 = 268_435_455;
/// Bound on `session.max_pending`: a million queued replies is already ~100 MiB.
const MAX_PENDING: i64 = 1_000_000;

/// Largest MQTT UTF-8 string or binary field (client id, user name, password).
const MAX_MQTT_STRING: usize = u16::MAX as usize;

/// Stand-in for the UUID when templates are rendered at load time; shaped like a real one so
/// that a literal topic cannot collide with it by accident.
const SAMPLE_UUID: &str = "00000000-0000-4000-8000-000000000000";

/// The checks of single values, each failing with a [`ConfigError`] that names the key.
impl Check<'_> {
    fn int(
        &self,
        key: &str,
        value: i64,
        range: RangeInclusive<i64>,
        expected: &str,
    ) -> Result<i64, ConfigError> {
        if range.contains(&value) {
            Ok(value)
        } else {
            Err(self.invalid(key, value, expected))
        }
    }

    /// A whole number of seconds, at least `min`.
    fn secs(&self, key: &str, value: i64, min: i64) -> Result<Duration, ConfigError> {
        let unit = if min == 1 { "second" } else { "seconds" };
        let expected = if value < min {
            format!("at least {min} {unit}")
        } else {
            format!("at most {MAX_U32} seconds")
        };
        let value = self.int(key, value, min..=MAX_U32, &expected)?;
        Ok(Duration::from_secs(value.unsigned_abs()))
    }

    fn template(
        &self,
        key: &str,
        source: &str,
        allowed: &[Var],
        user_id: &str,
    ) -> Result<Template, ConfigError> {
        let template =
            Template::parse(source, allowed).map_err(|e| self.rejected(key, quoted(source), e))?;
        // `parse` checked the shape with sample values; the real user ID can still make the
        // topic too long.
        let vars = Vars {
            user_id,
            uuid: SAMPLE_UUID,
            command: "CMD1",
        };
        let rendered = template.render(&vars);
        validate_topic(&rendered).map_err(|e| {
            self.rejected(
                key,
                quoted(source),
                format_args!("rendered with session.user_id the topic {e}"),
            )
        })?;
        Ok(template)
    }

    /// A string the broker receives in CONNECT: MQTT forbids NUL and caps the length.
    fn mqtt_string(&self, key: &str, value: &str) -> Result<(), ConfigError> {
        if value.contains('\0') {
            return Err(self.rejected(key, quoted(value), "must not contain NUL"));
        }
        if value.len() > MAX_MQTT_STRING {
            return Err(self.problem(
                key,
                format_args!(
                    "is {} bytes long, expected at most {MAX_MQTT_STRING}",
                    value.len()
                ),
            ));
        }
        Ok(())
    }

    /// A file the daemon will read later (a CA bundle, a client key): it must be readable
    /// now, so a typo is a config error at start-up and not a TLS failure minutes later.
    fn readable_file(&self, key: &str, path: &str) -> Result<PathBuf, ConfigError> {
        let file = std::fs::File::open(path)
            .map_err(|e| self.rejected(key, quoted(path), format_args!("cannot read it: {e}")))?;
        let is_dir = file.metadata().map(|m| m.is_dir()).unwrap_or(false);
        if is_dir {
            return Err(self.rejected(key, quoted(path), "is a directory, expected a file"));
        }
        Ok(PathBuf::from(path))
    }
}

/// `[replies]` from the parsed file (in file order, keys as written), or the seed table;
/// then the `MQTT_RESPONDER__REPLIES__<COMMAND>` overrides, replacing or adding entries.
pub(super) fn reply_table(
    check: &Check<'_>,
    table: Option<&toml::Value>,
    overrides: &[(String, String)],
) -> Result<ReplyTable, ConfigError> {
    let mut pairs = match table {
        None => ReplyTable::seed().0,
        Some(toml::Value::Table(table)) => {
            let mut pairs = Vec::with_capacity(table.len());
            for (command, reply) in table {
                match reply {
                    toml::Value::String(reply) => pairs.push((command.clone(), reply.clone())),
                    other => {
                        return Err(check.problem(
                            &format!("replies.{command}"),
                            format_args!("found {}, expected a string", other.type_str()),
                        ));
                    }
                }
            }
            pairs
        }
        Some(other) => {
            return Err(check.problem(
                "replies",
                format_args!(
                    "found {}, expected a table of COMMAND = \"reply\"",
                    other.type_str()
                ),
            ));
        }
    };
    for (command, reply) in overrides {
        match pairs.iter_mut().find(|(c, _)| c == command) {
            Some(pair) => pair.1 = reply.clone(),
            None => pairs.push((command.clone(), reply.clone())),
        }
    }
    if pairs.is_empty() {
        return Err(check.problem(
            "replies",
            "is empty, expected at least one COMMAND = \"reply\"",
        ));
    }
    for (command, reply) in &pairs {
        let key = format!("replies.{command}");
        // The command is rendered into reply topics, so it must be one clean level.
        validate_level(command).map_err(|e| {
            check.problem(
                &key,
                format_args!(
                    "the command {} {e} (it becomes part of the reply topic)",
                    quoted(command)
                ),
            )
        })?;
        if reply.is_empty() {
            return Err(check.invalid(&key, "\"\"", "a non-empty reply"));
        }
    }
    Ok(ReplyTable(pairs))
}

/// The raw schema into validated types. Also returns the password file, if any, for the
/// permission check.
pub(super) fn validate(
    check: &Check<'_>,
    raw: RawConfig,
    replies: ReplyTable,
    state_directory: Option<&str>,
) -> Result<(Config, Option<PathBuf>), ConfigError> {
    let RawConfig {
        broker: b,
        session: mut s,
        reconnect: r,
        log: l,
        _replies,
    } = raw;

    // The user ID comes first: the client id and every topic are built from it.
    let Some(user_id) = s.user_id.take() else {
        return Err(check.problem(
            "session.user_id",
            "missing, expected the user ID to log in with, e.g. user_id = \"2547841\"",
        ));
    };
    validate_level(&user_id).map_err(|e| check.rejected("session.user_id", quoted(&user_id), e))?;

    let (broker, password_file) = broker(check, b, &user_id)?;
    let session = session(check, s, user_id, state_directory)?;
    let responder = &session.responder;

    if replies.reply(&responder.completion_message).is_some() {
        return Err(check.problem(
            "replies",
            format_args!(
                "the command {} is also session.completion_message; a message cannot both \
                 be answered and end the run",
                quoted(&responder.completion_message)
            ),
        ));
    }
    // A reply published where commands arrive would come back as a command: with
    // `unknown_command = "reply"` the daemon would feed itself forever.
    let vars = |command| Vars {
        user_id: &responder.user_id,
        uuid: SAMPLE_UUID,
        command,
    };
    let command_topic = responder.command_topic.render(&vars(""));
    for (command, _) in &replies.0 {
        if responder.reply_topic.render(&vars(command)) == command_topic {
            return Err(check.rejected(
                "session.reply_topic",
                quoted(responder.reply_topic.as_str()),
                format_args!(
                    "for command {} it is the same topic as session.command_topic, so the \
                     daemon would receive its own replies as commands",
                    quoted(command)
                ),
            ));
        }
    }

    let initial_delay_ms = check.int(
        "reconnect.initial_delay_ms",
        r.initial_delay_ms,
        1..=MAX_U32,
        &format!("1..={MAX_U32} milliseconds"),
    )?;
    let max_delay = check.secs("reconnect.max_delay_secs", r.max_delay_secs, 1)?;
    let initial_delay = Duration::from_millis(initial_delay_ms.unsigned_abs());
    if max_delay < initial_delay {
        return Err(check.invalid(
            "reconnect.max_delay_secs",
            r.max_delay_secs,
            format_args!(
                "at least reconnect.initial_delay_ms ({initial_delay_ms} ms), the first backoff"
            ),
        ));
    }
    let max_attempts = check.int(
        "reconnect.max_attempts",
        r.max_attempts,
        0..=MAX_U32,
        &format!("0 (retry forever) or a count up to {MAX_U32}"),
    )?;
    let reconnect = Reconnect {
        initial_delay,
        max_delay,
        max_attempts: u32::try_from(max_attempts).ok().filter(|&n| n > 0),
    };

    let level = l.level.to_ascii_lowercase();
    if !["trace", "debug", "info", "warn", "error"].contains(&level.as_str()) {
        return Err(check.invalid(
            "log.level",
            quoted(&l.level),
            "one of \"trace\", \"debug\", \"info\", \"warn\", \"error\"",
        ));
    }
    let format = match l.format.as_str() {
        "auto" => LogFormat::Auto,
        "journald" => LogFormat::Journald,
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        _ => {
            return Err(check.invalid(
                "log.format",
                quoted(&l.format),
                "one of \"auto\", \"journald\", \"text\", \"json\"",
            ));
        }
    };

    let config = Config {
        source: check.file.to_path_buf(),
        broker,
        session,
        replies,
        reconnect,
        log: Log { level, format },
    };
    Ok((config, password_file))
}

fn broker(
    check: &Check<'_>,
    b: RawBroker,
    user_id: &str,
) -> Result<(Broker, Option<PathBuf>), ConfigError> {
    let host = b.host.trim();
    if host.is_empty() {
        return Err(check.invalid("broker.host", quoted(&b.host), "a host name or address"));
    }

    // TLS first: it decides the default port.
    let tls = b.tls.map(|t| tls(check, t)).transpose()?;
    let port = match b.port {
        Some(port) => check.int("broker.port", port, 1..=65535, "1..=65535")?,
        None if tls.is_some() => 8883,
        None => 1883,
    };

    let protocol = match b.protocol.as_str() {
        "3.1.1" => Protocol::V311,
        "5" => Protocol::V5,
        _ => {
            return Err(check.invalid(
                "broker.protocol",
                quoted(&b.protocol),
                "\"3.1.1\" or \"5\" (protocol levels such as \"3\" or \"4\" are not accepted)",
            ));
        }
    };

    let client_id = if b.client_id.is_empty() {
        format!("mqtt-responder-{user_id}")
    } else {
        b.client_id
    };
    check.mqtt_string("broker.client_id", &client_id)?;

    let username = Some(b.username).filter(|u| !u.is_empty());
    if let Some(username) = &username {
        check.mqtt_string("broker.username", username)?;
    }

    let (password, password_file) = match (b.password.is_empty(), b.password_file.is_empty()) {
        (false, false) => {
            return Err(check.problem(
                "broker.password",
                "broker.password and broker.password_file are both set; set only one",
            ));
        }
        (false, true) => (Some(b.password), None),
        (true, false) => {
            let password = read_password_file(check, &b.password_file)?;
            (Some(password), Some(PathBuf::from(b.password_file)))
        }
        (true, true) => (None, None),
    };
    if let Some(password) = &password {
        // MQTT carries the password as binary data; only its length is limited.
        if password.len() > MAX_MQTT_STRING {
            return Err(check.problem(
                "broker.password",
                format_args!("too long, expected at most {MAX_MQTT_STRING} bytes"),
            ));
        }
        // MQTT 3.1.1 (§3.1.2.9) has no password without a user name: it would never be
        // sent, and the broker would see an anonymous client. MQTT 5 sends it alone.
        if protocol == Protocol::V311 && username.is_none() && !password.is_empty() {
            let key = if password_file.is_some() {
                "broker.password_file"
            } else {
                "broker.password"
            };
            return Err(check.problem(
                key,
                "a password without broker.username: MQTT 3.1.1 sends a password only with \
                 a user name; set broker.username (or protocol = \"5\", which sends it alone)",
            ));
        }
    }

    let keep_alive = b.keep_alive_secs;
    if !(5..=65535).contains(&keep_alive) {
        return Err(check.invalid(
            "broker.keep_alive_secs",
            keep_alive,
            "5..=65535 seconds (common MQTT 5 clients refuse less than 5, and 0 would turn off the \
             keep-alive the daemon relies on to notice a dead connection)",
        ));
    }
    let connect_timeout = check.secs("broker.connect_timeout_secs", b.connect_timeout_secs, 1)?;
    let max_inflight = check.int(
        "broker.max_inflight",
        b.max_inflight,
        1..=65535,
        "1..=65535",
    )?;

    let broker = Broker {
        host: host.to_owned(),
        port: u16::try_from(port).unwrap_or(u16::MAX),
        protocol,
        client_id,
        username,
        password: password.map(Secret::new),
        keep_alive: Duration::from_secs(keep_alive.unsigned_abs()),
        connect_timeout,
        max_inflight: u16::try_from(max_inflight).unwrap_or(u16::MAX),
        tls,
    };
    Ok((broker, password_file))
}

/// A password file's content without the one trailing newline (`\n` or `\r\n`) an editor
/// or `echo` adds.
pub fn strip_one_newline(content: &str) -> &str {
    content
        .strip_suffix("\r\n")
        .or_else(|| content.strip_suffix('\n'))
        .unwrap_or(content)
}

/// Reads `broker.password_file`, dropping the one trailing newline an editor or `echo` adds.
fn read_password_file(check: &Check<'_>, path: &str) -> Result<String, ConfigError> {
    let key = "broker.password_file";
    let content = std::fs::read_to_string(path)
        .map_err(|e| check.rejected(key, quoted(path), format_args!("cannot read it: {e}")))?;
    let password = strip_one_newline(&content);
    if password.is_empty() {
        return Err(check.rejected(
            key,
            quoted(path),
            "the file is empty, expected the password",
        ));
    }
    Ok(password.to_owned())
}

fn tls(check: &Check<'_>, t: RawTls) -> Result<Tls, ConfigError> {
    let client_auth = match (t.client_cert_file.is_empty(), t.client_key_file.is_empty()) {
        (true, true) => None,
        (false, false) => Some(ClientAuth {
            cert_file: check.readable_file("broker.tls.client_cert_file", &t.client_cert_file)?,
            key_file: check.readable_file("broker.tls.client_key_file", &t.client_key_file)?,
        }),
        (false, true) => {
            return Err(check.problem(
                "broker.tls.client_key_file",
                "missing, but broker.tls.client_cert_file is set; mutual TLS needs both or \
                 neither",
            ));
        }
        (true, false) => {
            return Err(check.problem(
                "broker.tls.client_cert_file",
                "missing, but broker.tls.client_key_file is set; mutual TLS needs both or \
                 neither",
            ));
        }
    };
    let ca_file = if t.ca_file.is_empty() {
        None
    } else {
        Some(check.readable_file("broker.tls.ca_file", &t.ca_file)?)
    };
    Ok(Tls {
        ca_file,
        client_auth,
    })
}

fn session(
    check: &Check<'_>,
    s: RawSession,
    user_id: String,
    state_directory: Option<&str>,
) -> Result<Session, ConfigError> {
    use Var::{Command, UserId, Uuid};
    let login_topic = check.template("session.login_topic", &s.login_topic, &[UserId], &user_id)?;
    let uuid_topic = check.template("session.uuid_topic", &s.uuid_topic, &[UserId], &user_id)?;
    let command_topic = check.template(
        "session.command_topic",
        &s.command_topic,
        &[UserId, Uuid],
        &user_id,
    )?;
    let reply_topic = check.template(
        "session.reply_topic",
        &s.reply_topic,
        &[UserId, Uuid, Command],
        &user_id,
    )?;
    let status_topic = if s.status_topic.is_empty() {
        None
    } else {
        Some(check.template("session.status_topic", &s.status_topic, &[UserId], &user_id)?)
    };

    let qos = check.int("session.qos", s.qos, 0..=2, "0, 1 or 2")?;
    let qos = u8::try_from(qos)
        .ok()
        .and_then(|q| QoS::try_from(q).ok())
        .unwrap_or(QoS::ExactlyOnce);

    let max_payload_bytes = check.int(
        "session.max_payload_bytes",
        s.max_payload_bytes,
        1..=MAX_PACKET_BYTES,
        &format!("1..={MAX_PACKET_BYTES} (the largest MQTT packet)"),
    )?;
    let max_payload_bytes = usize::try_from(max_payload_bytes).unwrap_or(usize::MAX);

    let max_pending = check.int(
        "session.max_pending",
        s.max_pending,
        1..=MAX_PENDING,
        &format!("1..={MAX_PENDING}"),
    )?;
    let max_pending = usize::try_from(max_pending).unwrap_or(usize::MAX);

    if s.completion_message.is_empty() {
        return Err(check.invalid("session.completion_message", "\"\"", "a non-empty message"));
    }
    if s.completion_message.len() > max_payload_bytes {
        return Err(check.problem(
            "session.completion_message",
            format_args!(
                "is {} bytes, longer than session.max_payload_bytes = {max_payload_bytes}, so \
                 it would be dropped and the run would never end",
                s.completion_message.len()
            ),
        ));
    }

    let unknown_command = match s.unknown_command.as_str() {
        "ignore" => UnknownCommand::Ignore,
        "reply" if s.unknown_reply.is_empty() => {
            return Err(check.invalid(
                "session.unknown_reply",
                "\"\"",
                "a non-empty payload when session.unknown_command = \"reply\"",
            ));
        }
        "reply" => UnknownCommand::Reply(s.unknown_reply),
        _ => {
            return Err(check.invalid(
                "session.unknown_command",
                quoted(&s.unknown_command),
                "\"ignore\" or \"reply\"",
            ));
        }
    };

    // systemd's StateDirectory= may list several directories separated by colons; the
    // first is ours.
    let state_dir = if s.state_dir.is_empty() {
        state_directory
            .and_then(|dirs| dirs.split(':').find(|d| !d.is_empty()))
            .map(PathBuf::from)
    } else {
        Some(PathBuf::from(s.state_dir))
    };

    let responder = ResponderSettings {
        login_topic,
        uuid_topic,
        command_topic,
        reply_topic,
        completion_message: s.completion_message,
        qos,
        login_timeout: check.secs("session.login_timeout_secs", s.login_timeout_secs, 1)?,
        drain_timeout: check.secs("session.drain_timeout_secs", s.drain_timeout_secs, 0)?,
        max_payload_bytes,
        max_pending,
        unknown_command,
        user_id,
    };
    Ok(Session {
        responder,
        status_topic,
        status_interval: check.secs("session.status_interval_secs", s.status_interval_secs, 1)?,
        state_dir,
    })
}

#[cfg(test)]
mod tests {
    use std::fs::Permissions;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    use super::*;
    use crate::config::testing::*;

    /// Every case: a TOML snippet (dotted keys, so no headers are needed) and text the error
    /// must contain — always the dotted key, and the value where it is not a secret.
    #[test]
    fn invalid_values_name_key_value_and_expectation() {
        let long_topic = format!("session.login_topic = \"{}{{user_id}}\"", "x".repeat(65530));
        let long_client = format!("broker.client_id = \"{}\"", "x".repeat(65536));
        let cases: &[(&str, &str)] = &[
            (
                "session.user_id = \"a/b\"",
                "session.user_id = \"a/b\": must be a single topic level",
            ),
            (
                "session.user_id = \"\"",
                "session.user_id = \"\": must not be empty",
            ),
            (
                "session.user_id = \"a+\"",
                "session.user_id = \"a+\": must not contain '+'",
            ),
            (
                "session.login_topic = \"{uuid}\"",
                "session.login_topic = \"{uuid}\": unknown placeholder {uuid} (allowed here: {user_id})",
            ),
            (
                "session.login_topic = \"a/#\"",
                "session.login_topic = \"a/#\": must not contain",
            ),
            (
                "session.uuid_topic = \"{command}/x\"",
                "session.uuid_topic = \"{command}/x\": unknown placeholder {command}",
            ),
            (
                "session.command_topic = \"{command}\"",
                "session.command_topic = \"{command}\": unknown placeholder {command} (allowed here: {user_id}, {uuid})",
            ),
            (
                "session.reply_topic = \"{uuid}/{nope}\"",
                "session.reply_topic = \"{uuid}/{nope}\": unknown placeholder {nope}",
            ),
            (
                "session.reply_topic = \"{uuid\"",
                "session.reply_topic = \"{uuid\": unbalanced",
            ),
            (
                "session.status_topic = \"{uuid}\"",
                "session.status_topic = \"{uuid}\": unknown placeholder {uuid}",
            ),
            (
                &long_topic,
                "session.login_topic = \"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"… (65539 bytes): rendered with session.user_id the topic must be at most 65535 bytes",
            ),
            ("session.qos = 3", "session.qos = 3, expected 0, 1 or 2"),
            ("session.qos = -1", "session.qos = -1, expected 0, 1 or 2"),
            (
                "session.login_timeout_secs = 0",
                "session.login_timeout_secs = 0, expected at least 1 second",
            ),
            (
                "session.drain_timeout_secs = -1",
                "session.drain_timeout_secs = -1, expected at least 0 seconds",
            ),
            (
                "session.status_interval_secs = 0",
                "session.status_interval_secs = 0, expected at least 1",
            ),
            (
                "session.status_interval_secs = 4294967296",
                "session.status_interval_secs = 4294967296, expected at most 4294967295",
            ),
            (
                "session.max_payload_bytes = 0",
                "session.max_payload_bytes = 0, expected 1..=268435455",
            ),
            (
                "session.max_payload_bytes = 268435456",
                "session.max_payload_bytes = 268435456, expected 1..=268435455",
            ),
            (
                "session.max_pending = 0",
                "session.max_pending = 0, expected 1..=1000000",
            ),
            (
                "session.unknown_command = \"maybe\"",
                "session.unknown_command = \"maybe\", expected \"ignore\" or \"reply\"",
            ),
            (
                "session.unknown_command = \"reply\"\nsession.unknown_reply = \"\"",
                "session.unknown_reply = \"\", expected a non-empty payload",
            ),
            (
                "session.completion_message = \"\"",
                "session.completion_message = \"\", expected a non-empty message",
            ),
            (
                "session.max_payload_bytes = 4",
                "session.completion_message: is 17 bytes, longer than session.max_payload_bytes = 4",
            ),
            (
                "session.reply_topic = \"{uuid}\"",
                "session.reply_topic = \"{uuid}\": for command \"CMD1\" it is the same topic as session.command_topic",
            ),
            (
                "broker.host = \"\"",
                "broker.host = \"\", expected a host name or address",
            ),
            (
                "broker.host = \"  \"",
                "broker.host = \"  \", expected a host name",
            ),
            ("broker.port = 0", "broker.port = 0, expected 1..=65535"),
            (
                "broker.port = 65536",
                "broker.port = 65536, expected 1..=65535",
            ),
            ("broker.port = -1", "broker.port = -1, expected 1..=65535"),
            (
                "broker.protocol = \"4\"",
                "broker.protocol = \"4\", expected \"3.1.1\" or \"5\"",
            ),
            (
                "broker.protocol = \"3\"",
                "broker.protocol = \"3\", expected \"3.1.1\" or \"5\" (protocol levels such as \"3\" or \"4\" are not accepted)",
            ),
            (
                "broker.client_id = \"a\\u0000b\"",
                "broker.client_id = \"a\\0b\": must not contain NUL",
            ),
            (
                &long_client,
                "broker.client_id: is 65536 bytes long, expected at most 65535",
            ),
            (
                "broker.username = \"a\\u0000\"",
                "broker.username = \"a\\0\": must not contain NUL",
            ),
            (
                "broker.keep_alive_secs = 4",
                "broker.keep_alive_secs = 4, expected 5..=65535 seconds (common MQTT 5 clients refuse less than 5",
            ),
            (
                "broker.keep_alive_secs = 0",
                "broker.keep_alive_secs = 0, expected 5..=65535",
            ),
            (
                "broker.keep_alive_secs = 65536",
                "broker.keep_alive_secs = 65536, expected 5..=65535",
            ),
            (
                "broker.connect_timeout_secs = 0",
                "broker.connect_timeout_secs = 0, expected at least 1 second",
            ),
            (
                "broker.max_inflight = 0",
                "broker.max_inflight = 0, expected 1..=65535",
            ),
            (
                "broker.max_inflight = 65536",
                "broker.max_inflight = 65536, expected 1..=65535",
            ),
            (
                "broker.password_file = \"/nonexistent/pw\"",
                "broker.password_file = \"/nonexistent/pw\": cannot read it: No such file",
            ),
            (
                "broker.tls.ca_file = \"/nonexistent/ca.pem\"",
                "broker.tls.ca_file = \"/nonexistent/ca.pem\": cannot read it",
            ),
            (
                "broker.tls.ca_file = \"/\"",
                "broker.tls.ca_file = \"/\": is a directory",
            ),
            (
                "broker.tls.client_cert_file = \"/etc/hostname\"",
                "broker.tls.client_key_file: missing, but broker.tls.client_cert_file is set",
            ),
            (
                "broker.tls.client_key_file = \"/etc/hostname\"",
                "broker.tls.client_cert_file: missing, but broker.tls.client_key_file is set",
            ),
            (
                "broker.tls.client_cert_file = \"/nonexistent/c\"\nbroker.tls.client_key_file = \"/nonexistent/k\"",
                "broker.tls.client_cert_file = \"/nonexistent/c\": cannot read it",
            ),
            ("replies = {}", "replies: is empty, expected at least one"),
            (
                "replies = \"CMD1\"",
                "replies: found string, expected a table",
            ),
            (
                "replies.\"a/b\" = \"x\"",
                "replies.a/b: the command \"a/b\" must be a single topic level",
            ),
            (
                "replies.\"#\" = \"x\"",
                "replies.#: the command \"#\" must not contain",
            ),
            (
                "replies.CMD1 = \"\"",
                "replies.CMD1 = \"\", expected a non-empty reply",
            ),
            (
                "replies.CMD1 = 5",
                "replies.CMD1: found integer, expected a string",
            ),
            (
                "replies.\"Well done my IoT!\" = \"x\"",
                "replies: the command \"Well done my IoT!\" is also session.completion_message",
            ),
            (
                "reconnect.initial_delay_ms = 0",
                "reconnect.initial_delay_ms = 0, expected 1..=4294967295 milliseconds",
            ),
            (
                "reconnect.max_delay_secs = 0",
                "reconnect.max_delay_secs = 0, expected at least 1 second",
            ),
            (
                "reconnect.initial_delay_ms = 5000\nreconnect.max_delay_secs = 4",
                "reconnect.max_delay_secs = 4, expected at least reconnect.initial_delay_ms (5000 ms)",
            ),
            (
                "reconnect.max_attempts = -1",
                "reconnect.max_attempts = -1, expected 0 (retry forever) or a count",
            ),
            (
                "log.level = \"verbose\"",
                "log.level = \"verbose\", expected one of \"trace\", \"debug\", \"info\", \"warn\", \"error\"",
            ),
            (
                "log.format = \"xml\"",
                "log.format = \"xml\", expected one of \"auto\", \"journald\", \"text\", \"json\"",
            ),
        ];
        for (snippet, expected) in cases {
            let user = if snippet.starts_with("session.user_id") {
                ""
            } else {
                USER
            };
            let message = err(&format!("{user}{snippet}\n"));
            assert!(
                message.contains(expected),
                "for {snippet:?}\n  got: {message}\n want: {expected}"
            );
        }
    }

    #[test]
    fn user_id_is_required() {
        for content in ["", "[session]\n", "[broker]\nhost = \"h\"\n"] {
            let message = err(content);
            assert!(message.starts_with("session.user_id: missing"), "{message}");
        }
    }

    #[test]
    fn a_template_that_renders_too_long_with_the_user_id_is_rejected() {
        // Valid with parse's one-byte sample user ID, too long with the real one.
        let content = format!(
            "session.user_id = \"abcdefghij\"\nsession.login_topic = \"{}{{user_id}}\"\n",
            "x".repeat(65530)
        );
        let message = err(&content);
        assert!(
            message.starts_with("session.login_topic = "),
            "{}",
            &message[..40]
        );
        assert!(
            message
                .ends_with("rendered with session.user_id the topic must be at most 65535 bytes"),
            "{}",
            &message[message.len() - 80..]
        );
    }

    #[test]
    fn state_dir_falls_back_to_systemd_state_directory() {
        let config = load_env(USER, &[]).unwrap();
        assert_eq!(config.session.state_dir, None);
        let vars = [("STATE_DIRECTORY", "/var/lib/mqtt-responder:/var/lib/other")];
        let config = load_env(USER, &vars).unwrap();
        assert_eq!(
            config.session.state_dir.as_deref(),
            Some(Path::new("/var/lib/mqtt-responder"))
        );
        let content = format!("{USER}session.state_dir = \"/srv/state\"\n");
        let config = load_env(&content, &vars).unwrap();
        assert_eq!(
            config.session.state_dir.as_deref(),
            Some(Path::new("/srv/state"))
        );
    }

    fn with_password_file(content: &[u8]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("password");
        std::fs::write(&pw, content).unwrap();
        std::fs::set_permissions(&pw, Permissions::from_mode(0o600)).unwrap();
        let toml = format!(
            "{USER_LOGIN}broker.password_file = {:?}\n",
            pw.to_str().unwrap()
        );
        load_env(&toml, &[])
    }

    #[test]
    fn password_file_strips_one_trailing_newline() {
        let cases: [(&[u8], &str); 5] = [
            (b"hunter2\n", "hunter2"),
            (b"hunter2\r\n", "hunter2"),
            (b"hunter2", "hunter2"),
            (b"hunter2\n\n", "hunter2\n"),
            (b" hunter2 ", " hunter2 "),
        ];
        for (content, expected) in cases {
            let config = with_password_file(content).unwrap();
            let password = config.broker.password.expect("a password");
            assert_eq!(password.expose(), expected, "{content:?}");
        }
        let e = with_password_file(b"\n").unwrap_err();
        assert!(e.message.contains("the file is empty"), "{e}");
    }

    #[test]
    fn password_and_password_file_are_exclusive() {
        let content = format!(
            "{USER}broker.password = \"{SECRET}\"\nbroker.password_file = \"/etc/hostname\"\n"
        );
        let message = err(&content);
        assert!(
            message.contains("broker.password and broker.password_file"),
            "{message}"
        );
        assert!(!message.contains(SECRET));
        // Also when one of them comes from the environment.
        let content = format!("{USER}broker.password_file = \"/etc/hostname\"\n");
        let message = err_env(&content, &[("MQTT_RESPONDER__BROKER__PASSWORD", SECRET)]);
        assert!(message.contains("are both set"), "{message}");
        assert!(!message.contains(SECRET));
    }

    #[test]
    fn a_password_without_a_user_name_is_an_error_over_3_1_1_and_sent_over_5() {
        for key in ["password = \"pw\"", "password_file = \"/etc/hostname\""] {
            let message = err(&format!("{USER}broker.{key}\n"));
            let name = key.split(' ').next().unwrap();
            assert!(
                message.starts_with(&format!(
                    "broker.{name}: a password without broker.username"
                )),
                "{message}"
            );
        }
        let config = ok(&format!(
            "{USER}broker.protocol = \"5\"\nbroker.password = \"pw\"\n"
        ));
        assert_eq!(config.broker.username, None);
        assert_eq!(
            config.broker.password.map(|p| p.expose().to_owned()),
            Some("pw".into())
        );
    }

    #[test]
    fn empty_credentials_mean_none() {
        let content = format!("{USER}broker.username = \"\"\nbroker.password = \"\"\n");
        let config = ok(&content);
        assert_eq!(config.broker.username, None);
        assert_eq!(config.broker.password, None);
        let config = ok(&format!("{USER}broker.username = \"pi\"\n"));
        assert_eq!(config.broker.username.as_deref(), Some("pi"));
    }

    #[test]
    fn replies_keep_case_and_order_and_replace_the_defaults() {
        let content =
            format!("{USER}[replies]\nzeta = \"1\"\nAlpha = \"2\"\ncmd1 = \"3\"\nCMD1 = \"4\"\n");
        let config = ok(&content);
        let expected = [("zeta", "1"), ("Alpha", "2"), ("cmd1", "3"), ("CMD1", "4")];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(c, r)| (c.to_string(), r.to_string()))
            .collect();
        assert_eq!(config.replies.0, expected);
        assert_eq!(config.replies.reply("CMD2"), None);
        // The redacted view keeps them too.
        let shown = config.to_redacted_toml();
        let at = |s: &str| shown.find(s).unwrap_or_else(|| panic!("{s} in {shown}"));
        assert!(at("zeta = ") < at("Alpha = ") && at("Alpha = ") < at("cmd1 = "));
    }

    #[test]
    fn resolved_and_optional_values() {
        let c = ok(&format!(
            "{USER}session.status_topic = \"\"\nsession.unknown_command = \"reply\"\n\
             reconnect.max_attempts = 5\nbroker.protocol = \"5\"\nlog.level = \"DEBUG\"\n\
             log.format = \"json\"\n"
        ));
        assert_eq!(c.session.status_topic, None);
        assert_eq!(
            c.session.responder.unknown_command,
            UnknownCommand::Reply("UNKNOWN".into())
        );
        assert_eq!(c.reconnect.max_attempts, Some(5));
        assert_eq!(c.broker.protocol, Protocol::V5);
        assert_eq!(c.log.level, "debug");
        assert_eq!(c.log.format, LogFormat::Json);
        // A present [broker.tls], even empty, means TLS with the system roots on 8883.
        let c = ok("[broker.tls]\n[session]\nuser_id = \"7\"\n");
        assert_eq!(
            c.broker.tls,
            Some(Tls {
                ca_file: None,
                client_auth: None
            })
        );
        assert_eq!(c.broker.port, 8883);
        let c = ok(&format!("{USER}broker.port = 1883\nbroker.tls = {{}}\n"));
        assert_eq!(c.broker.port, 1883);
    }

    #[test]
    fn mutual_tls_files_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let [ca, cert, key] = ["ca.pem", "cert.pem", "key.pem"].map(|n| {
            let p = dir.path().join(n);
            std::fs::write(&p, "pem").unwrap();
            p
        });
        let content = format!(
            "{USER}[broker.tls]\nca_file = {ca:?}\nclient_cert_file = {cert:?}\n\
             client_key_file = {key:?}\n"
        );
        let c = ok(&content);
        assert_eq!(
            c.broker.tls,
            Some(Tls {
                ca_file: Some(ca),
                client_auth: Some(ClientAuth {
                    cert_file: cert,
                    key_file: key
                }),
            })
        );
        // And they survive the redacted view and a reload of it.
        let shown = c.to_redacted_toml();
        assert_eq!(ok(&shown).to_redacted_toml(), shown);
    }
}
