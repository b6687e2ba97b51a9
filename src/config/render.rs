//! The configuration written out again as TOML with every value resolved and the password
//! redacted: what `check-config` prints ([`Config::to_redacted_toml`]), and what a reload
//! compares to name the keys that need a restart ([`Config::restart_needed`]).

use std::path::Path;
use std::time::Duration;

use super::schema::{Config, UnknownCommand};
use crate::topic::Template;

/// What `check-config` prints instead of a password.
const REDACTED: &str = "<redacted>";

impl Config {
    /// The effective configuration as TOML, secrets redacted (for `check-config`).
    ///
    /// Every key appears with its resolved value (client id filled in, port chosen), except
    /// `password_file`: the password is shown as `"<redacted>"` whatever its origin, and
    /// `unknown_reply`, which only appears when `unknown_command = "reply"`.
    pub fn to_redacted_toml(&self) -> String {
        let b = &self.broker;
        let mut broker = toml::Table::new();
        broker.insert("host".into(), b.host.clone().into());
        broker.insert("port".into(), i64::from(b.port).into());
        broker.insert("protocol".into(), b.protocol.to_string().into());
        broker.insert("client_id".into(), b.client_id.clone().into());
        broker.insert(
            "username".into(),
            b.username.clone().unwrap_or_default().into(),
        );
        let password = if b.password.is_some() { REDACTED } else { "" };
        broker.insert("password".into(), password.into());
        broker.insert("keep_alive_secs".into(), secs(b.keep_alive).into());
        broker.insert(
            "connect_timeout_secs".into(),
            secs(b.connect_timeout).into(),
        );
        broker.insert("max_inflight".into(), i64::from(b.max_inflight).into());
        if let Some(tls) = &b.tls {
            let mut t = toml::Table::new();
            let (cert, key) = match &tls.client_auth {
                Some(auth) => (path_string(&auth.cert_file), path_string(&auth.key_file)),
                None => (String::new(), String::new()),
            };
            let ca = tls.ca_file.as_deref().map(path_string).unwrap_or_default();
            t.insert("ca_file".into(), ca.into());
            t.insert("client_cert_file".into(), cert.into());
            t.insert("client_key_file".into(), key.into());
            broker.insert("tls".into(), t.into());
        }

        let s = &self.session.responder;
        let mut session = toml::Table::new();
        session.insert("user_id".into(), s.user_id.clone().into());
        for (key, template) in [
            ("login_topic", &s.login_topic),
            ("uuid_topic", &s.uuid_topic),
            ("command_topic", &s.command_topic),
            ("reply_topic", &s.reply_topic),
        ] {
            session.insert(key.into(), template.as_str().into());
        }
        session.insert(
            "completion_message".into(),
            s.completion_message.clone().into(),
        );
        session.insert("qos".into(), i64::from(s.qos.as_u8()).into());
        session.insert("login_timeout_secs".into(), secs(s.login_timeout).into());
        session.insert("drain_timeout_secs".into(), secs(s.drain_timeout).into());
        session.insert(
            "max_payload_bytes".into(),
            i64::try_from(s.max_payload_bytes)
                .unwrap_or(i64::MAX)
                .into(),
        );
        session.insert(
            "max_pending".into(),
            i64::try_from(s.max_pending).unwrap_or(i64::MAX).into(),
        );
        match &s.unknown_command {
            UnknownCommand::Ignore => {
                session.insert("unknown_command".into(), "ignore".into());
            }
            UnknownCommand::Reply(reply) => {
                session.insert("unknown_command".into(), "reply".into());
                session.insert("unknown_reply".into(), reply.clone().into());
            }
        }
        let status = self
            .session
            .status_topic
            .as_ref()
            .map(Template::as_str)
            .unwrap_or("");
        session.insert("status_topic".into(), status.into());
        session.insert(
            "status_interval_secs".into(),
            secs(self.session.status_interval).into(),
        );
        let state_dir = self
            .session
            .state_dir
            .as_deref()
            .map(path_string)
            .unwrap_or_default();
        session.insert("state_dir".into(), state_dir.into());

        let mut replies = toml::Table::new();
        for (command, reply) in &self.replies.0 {
            replies.insert(command.clone(), reply.clone().into());
        }

        let r = &self.reconnect;
        let mut reconnect = toml::Table::new();
        let initial_ms = i64::try_from(r.initial_delay.as_millis()).unwrap_or(i64::MAX);
        reconnect.insert("initial_delay_ms".into(), initial_ms.into());
        reconnect.insert("max_delay_secs".into(), secs(r.max_delay).into());
        reconnect.insert(
            "max_attempts".into(),
            i64::from(r.max_attempts.unwrap_or(0)).into(),
        );

        let mut log = toml::Table::new();
        log.insert("level".into(), self.log.level.clone().into());
        log.insert("format".into(), self.log.format.as_str().into());

        let mut root = toml::Table::new();
        root.insert("broker".into(), broker.into());
        root.insert("session".into(), session.into());
        root.insert("replies".into(), replies.into());
        root.insert("reconnect".into(), reconnect.into());
        root.insert("log".into(), log.into());
        // Serialising a table of strings and integers cannot fail; still, no panic here.
        toml::to_string(&root)
            .unwrap_or_else(|e| format!("# the configuration could not be rendered: {e}\n"))
    }

    /// The keys that differ from `new` and cannot change without a reconnect or a restart:
    /// everything but `[replies]` and `log.level`, which a reload applies in place. A changed
    /// password is named by key, never by value.
    pub fn restart_needed(&self, new: &Config) -> Vec<String> {
        fn flatten(prefix: &str, table: &toml::Table, out: &mut Vec<(String, toml::Value)>) {
            for (key, value) in table {
                let key = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                match value {
                    toml::Value::Table(t) => flatten(&key, t, out),
                    v => out.push((key, v.clone())),
                }
            }
        }
        let keys = |c: &Config| {
            let mut out = Vec::new();
            if let Ok(table) = c.to_redacted_toml().parse::<toml::Table>() {
                flatten("", &table, &mut out);
            }
            out.retain(|(k, _)| !k.starts_with("replies.") && k != "log.level");
            out
        };
        let (old, new_keys) = (keys(self), keys(new));
        let mut changed: Vec<String> = old
            .iter()
            .filter(|(k, v)| new_keys.iter().find(|(nk, _)| nk == k).map(|(_, nv)| nv) != Some(v))
            .map(|(k, _)| k.clone())
            .collect();
        for (k, _) in &new_keys {
            if !old.iter().any(|(ok, _)| ok == k) {
                changed.push(k.clone());
            }
        }
        if self.broker.password != new.broker.password
            && !changed.iter().any(|k| k == "broker.password")
        {
            changed.push("broker.password".to_owned());
        }
        changed
    }
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

fn path_string(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use crate::config::testing::*;

    #[test]
    fn reload_names_the_keys_that_need_a_restart() {
        let base = ok(&format!(
            "{USER}[replies]\nA = \"1\"\n[log]\nlevel = \"info\"\n"
        ));
        let same = ok(&format!(
            "{USER}[replies]\nB = \"2\"\n[log]\nlevel = \"debug\"\n"
        ));
        assert_eq!(base.restart_needed(&same), Vec::<String>::new());
        let changed = ok(&format!(
            "{USER_LOGIN}broker.port = 1884\nbroker.password = \"{SECRET}\"\nsession.qos = 1\n\
             [broker.tls]\n[log]\nformat = \"json\"\n"
        ));
        let keys = base.restart_needed(&changed);
        for key in [
            "broker.port",
            "broker.password",
            "broker.tls.ca_file",
            "session.qos",
            "log.format",
        ] {
            assert!(keys.iter().any(|k| k == key), "{key} missing from {keys:?}");
        }
        assert!(!keys.iter().any(|k| k.contains(SECRET)));
    }

    #[test]
    fn the_redacted_view_is_complete_and_loads_back() {
        let c = load_env(
            USER,
            &[
                ("MQTT_RESPONDER__BROKER__USERNAME", "pi"),
                ("MQTT_RESPONDER__SESSION__UNKNOWN_COMMAND", "reply"),
                ("STATE_DIRECTORY", "/var/lib/x"),
            ],
        )
        .unwrap();
        let shown = c.to_redacted_toml();
        for line in [
            "[broker]",
            "host = \"localhost\"",
            "port = 1883",
            "protocol = \"3.1.1\"",
            "client_id = \"mqtt-responder-2547841\"",
            "username = \"pi\"",
            "password = \"\"",
            "keep_alive_secs = 30",
            "connect_timeout_secs = 10",
            "max_inflight = 20",
            "[session]",
            "user_id = \"2547841\"",
            "login_topic = \"login\"",
            "uuid_topic = \"{user_id}/UUID\"",
            "command_topic = \"{uuid}\"",
            "reply_topic = \"{uuid}/{command}\"",
            "completion_message = \"Well done my IoT!\"",
            "qos = 2",
            "login_timeout_secs = 30",
            "drain_timeout_secs = 5",
            "max_payload_bytes = 65536",
            "max_pending = 1000",
            "unknown_command = \"reply\"",
            "unknown_reply = \"UNKNOWN\"",
            "status_topic = \"{user_id}/status\"",
            "status_interval_secs = 60",
            "state_dir = \"/var/lib/x\"",
            "[replies]",
            "CMD7 = \"Toy\"",
            "[reconnect]",
            "initial_delay_ms = 500",
            "max_delay_secs = 60",
            "max_attempts = 0",
            "[log]",
            "level = \"info\"",
            "format = \"auto\"",
        ] {
            assert!(
                shown.lines().any(|l| l == line),
                "{line:?} missing in\n{shown}"
            );
        }
        assert!(!shown.contains("tls"), "{shown}");
        assert_eq!(ok(&shown).to_redacted_toml(), shown);
    }
}
