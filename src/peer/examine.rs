//! `mqtt-responder examine`: the command-line front of [`crate::peer::runner`] — flags into an
//! examination, live progress, the table (or JSON), and the exit code (0 pass, 1 fail).

use std::time::Duration;

use crate::cli::ExamineArgs;
use crate::config::{self, Broker, ClientAuth, ReplyTable, Tls};
use crate::peer::console::{self, Progress};
use crate::peer::runner::{self, Examination};
use crate::protocol::examiner::ExaminerSettings;
use crate::topic::{Template, Var};
use crate::transport::Endpoint;
use crate::vocabulary::Protocol;
use crate::vocabulary::Secret;

/// Runs `examine`; returns the exit code.
pub fn run(args: &ExamineArgs) -> u8 {
    let (endpoint, exam) = match prepare(args) {
        Ok(prepared) => prepared,
        Err(e) => {
            eprintln!("examine: {e}");
            return 2;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("examine: cannot start the async runtime: {e}");
            return 1;
        }
    };
    let addr = endpoint.addr();
    eprintln!(
        "examining {} device(s) on {addr}: {} commands each at QoS {}; waiting for logins on {:?}",
        exam.logins, exam.settings.commands, exam.settings.qos, args.login_topic
    );
    let mut progress = Progress::new(exam.logins, exam.settings.commands);
    let local = tokio::task::LocalSet::new();
    let result = local.block_on(&runtime, async {
        let mut show = |device: usize, note: &_| progress.note(device, note);
        runner::examine(&endpoint, exam, &mut show, None).await
    });
    progress.finish();
    match result {
        Ok(outcome) => {
            if args.json {
                println!("{}", console::json(&outcome));
            } else {
                print!("{}", console::summary(&outcome));
            }
            if outcome.passed() { 0 } else { 1 }
        }
        Err(e) => {
            eprintln!("examine: FAIL: {e}");
            1
        }
    }
}

/// Flags → endpoint and examination; a usage problem is an `Err` with a message.
fn prepare(args: &ExamineArgs) -> Result<(Endpoint, Examination), String> {
    let protocol = args.protocol.into();
    let qos = args.qos;
    let password = match (&args.password, &args.password_file) {
        (Some(p), _) => Some(Secret::new(p.clone())),
        (None, Some(path)) => {
            let content = std::fs::read_to_string(path)
                .map_err(|e| format!("--password-file {}: {e}", path.display()))?;
            Some(Secret::new(config::strip_one_newline(&content).to_owned()))
        }
        (None, None) => None,
    };
    let client_auth =
        args.cert_file
            .clone()
            .zip(args.key_file.clone())
            .map(|(cert_file, key_file)| ClientAuth {
                cert_file,
                key_file,
            });
    let tls = (args.tls || args.ca_file.is_some() || client_auth.is_some()).then(|| Tls {
        ca_file: args.ca_file.clone(),
        client_auth,
    });
    let seed = args.seed.unwrap_or_else(rand::random);
    let client_id = args
        .client_id
        .clone()
        .unwrap_or_else(|| format!("mqtt-responder-examiner-{:08x}", seed as u32));
    let broker = Broker {
        host: args.host.clone(),
        port: args.port.unwrap_or(if tls.is_some() { 8883 } else { 1883 }),
        protocol,
        client_id,
        username: args.username.clone(),
        password,
        keep_alive: Duration::from_secs(30),
        connect_timeout: Duration::from_secs(10),
        max_inflight: 20,
        tls,
    };
    let endpoint = Endpoint::new(&broker).map_err(|e| e.to_string())?;
    let all = [Var::UserId, Var::Uuid, Var::Command];
    let template = |flag: &str, source: &str, allowed: &[Var]| {
        Template::parse(source, allowed).map_err(|e| format!("--{flag} {source:?}: {e}"))
    };
    let replies = if args.replies.is_empty() {
        ReplyTable::seed()
    } else {
        let pairs = args
            .replies
            .iter()
            .map(|r| match r.split_once('=') {
                Some((c, reply)) if !c.is_empty() => Ok((c.to_owned(), reply.to_owned())),
                _ => Err(format!("--reply {r:?}: expected COMMAND=REPLY")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        ReplyTable(pairs)
    };
    let response_topic = match &args.response_topic {
        // Response Topic and Correlation Data are MQTT 5 properties: 3.1.1 cannot carry them.
        Some(_) if protocol != Protocol::V5 => {
            return Err(
                "--response-topic needs --protocol 5 (MQTT 3.1.1 has no Response \
                        Topic)"
                    .to_owned(),
            );
        }
        Some(source) => {
            let response = template("response-topic", source, &all[..2])?;
            // With several devices on one topic each would see the others' responses.
            if args.logins > 1 && !response.uses(Var::UserId) && !response.uses(Var::Uuid) {
                return Err(format!(
                    "--response-topic {source:?}: with --logins > 1 it must use {{user_id}} \
                     or {{uuid}}"
                ));
            }
            Some(response)
        }
        None => None,
    };
    let settings = ExaminerSettings {
        login_topic: template("login-topic", &args.login_topic, &all[..1])?,
        uuid_topic: template("uuid-topic", &args.uuid_topic, &all[..1])?,
        command_topic: template("command-topic", &args.command_topic, &all[..2])?,
        reply_topic: template("reply-topic", &args.reply_topic, &all)?,
        user_id: args.user_id.clone(),
        completion_message: args.completion_message.clone(),
        qos,
        commands: args.commands,
        delay: Duration::from_millis(args.delay_ms),
        window: usize::try_from(args.window).unwrap_or(usize::MAX),
        reply_timeout: Duration::from_secs(10),
        replies,
        seed,
        uuid: None,
        ignore_logins: 0,
        response_topic,
        pause_after: None,
    };
    let exam = Examination {
        connection: broker,
        settings,
        logins: usize::try_from(args.logins).unwrap_or(usize::MAX),
        noise: Vec::new(),
        timeout: Duration::from_secs(args.timeout),
        gate: None,
        progress: None,
    };
    Ok((endpoint, exam))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::prepare;
    use crate::cli::{Cli, Command};

    fn prepared(args: &[&str]) -> Result<Option<String>, String> {
        let cli = Cli::try_parse_from(["mqtt-responder", "examine"].iter().chain(args))
            .map_err(|e| e.to_string())?;
        let Some(Command::Examine(args)) = cli.command else {
            panic!("not examine");
        };
        let (_, exam) = prepare(&args)?;
        Ok(exam.settings.response_topic.map(|t| t.to_string()))
    }

    #[test]
    fn response_topic_needs_mqtt5_and_a_valid_template() {
        assert_eq!(
            prepared(&["--protocol", "5", "--response-topic", "resp/{uuid}"]),
            Ok(Some("resp/{uuid}".to_owned()))
        );
        assert_eq!(prepared(&[]), Ok(None));
        let err = prepared(&["--response-topic", "resp/{uuid}"]).unwrap_err();
        assert!(err.contains("--protocol 5"), "{err}");
        let err = prepared(&["--protocol", "5", "--response-topic", "r/{command}"]).unwrap_err();
        assert!(err.contains("--response-topic"), "{err}");
        let err = prepared(&[
            "--protocol",
            "5",
            "--logins",
            "2",
            "--response-topic",
            "responses",
        ])
        .unwrap_err();
        assert!(err.contains("{user_id} or {uuid}"), "{err}");
    }
}
