//! The app's pure helpers, and the whole app driven in memory: a broker's side of the
//! conversation fed to its session, the journal in a [`MemStore`], a crash and a resume.

use super::*;

#[test]
fn connack_refusals_of_the_will_are_told_apart() {
    assert_eq!(
        will_trouble(WILL_RETAIN_REFUSED),
        Some(WillTrouble::RetainRefused)
    );
    assert_eq!(
        will_trouble(WILL_QOS_REFUSED),
        Some(WillTrouble::QosRefused)
    );
    assert_eq!(will_trouble("banned"), None);
}

#[test]
fn the_online_record_is_sent_again_when_the_uuid_or_then_the_qos_changes() {
    let q = |n| Some(QoS::try_from(n).unwrap());
    assert!(
        !online_stale(None, true, q(2)),
        "nothing sent: the refresh decides"
    );
    assert!(
        !online_stale(Some((false, None)), false, q(2)),
        "QoS alone waits"
    );
    assert!(
        online_stale(Some((false, None)), true, q(2)),
        "the UUID arrived"
    );
    assert!(!online_stale(Some((true, q(2))), true, q(2)));
    assert!(
        online_stale(Some((true, q(2))), true, q(1)),
        "a SUBACK lowered it"
    );
    assert!(online_stale(Some((true, None)), true, q(0)), "now known");
}

// --- the whole app in memory ---

use std::path::Path;

use rumqttc::mqttbytes::QoS as Q4;
use rumqttc::mqttbytes::v4 as b4;

use crate::daemon::state::store::MemStore;
use crate::mqtt::broker_side::{connack4, feed4, sent4};

const CONFIG: &str = "[broker]\nhost = \"127.0.0.1\"\nclient_id = \"daemon-1\"\n\
                      [session]\nuser_id = \"u1\"\nqos = 2\nstatus_topic = \"\"\n\
                      [replies]\nCMD1 = \"Apple\"\n";
const UUID: &str = "3f1c9c1e-0d2b-4d55-9b8a-6f0e6c1d2a77";

/// The daemon's app and session with the journal in memory, driven as the driver does.
struct InMemory {
    app: ResponderApp<MemStore>,
    session: Session,
    now: Instant,
}

impl InMemory {
    /// A process starting on `store`: it resumes what the journal holds, if anything.
    fn start(store: MemStore) -> InMemory {
        let now = Instant::now();
        let config = config::from_toml(Path::new("mem.toml"), CONFIG).expect("valid config");
        let mut app = ResponderApp::<MemStore>::new(&config, None, now);
        let mut session_config = super::super::session_config(&config, app.presence.as_ref());
        session_config.record_changes = true;
        let mut journal = Journal::new(store, &config.broker.client_id, "127.0.0.1:1883");
        let session = match journal.load() {
            Some(state) => {
                let mut session = Session::restore(session_config, state.session.clone(), now);
                app.restore(&state, &mut session);
                session
            }
            None => Session::new(session_config, now),
        };
        app.journal = Some(journal);
        InMemory { app, session, now }
    }

    /// What SIGKILL leaves: the journal's files as the page cache holds them.
    fn kill(self) -> MemStore {
        self.app.journal.as_ref().unwrap().store().clone()
    }

    /// One pass of the driver's loop: events to the app, the journal, then the wire.
    fn turn(&mut self) -> Vec<b4::Packet> {
        while let Some(event) = self.session.poll_event() {
            if event == Event::Purged {
                // The 3.1.1 connection that only cleared the old session: connect again.
                self.session.handle_transport_down();
                self.session.handle_transport_up(self.now);
                continue;
            }
            self.app.handle_event(event, &mut self.session, self.now);
        }
        self.app.before_transmit(&mut self.session, self.now);
        let sent = sent4(&mut self.session);
        self.app.after_transmit();
        sent
    }

    fn feed(&mut self, packet: b4::Packet) -> Vec<b4::Packet> {
        feed4(&mut self.session, packet, self.now).expect("the broker's packet is taken");
        self.turn()
    }

    /// The broker's side of what the daemon `sent`, until the daemon has nothing more to
    /// say: acknowledgements for its publishes, SUBACKs, PUBRELs for its PUBRECs. Returns the
    /// publishes it made.
    fn broker(&mut self, mut sent: Vec<b4::Packet>) -> Vec<b4::Publish> {
        let mut publishes = Vec::new();
        for _ in 0..50 {
            let Some(packet) = sent.pop() else {
                return publishes;
            };
            let answer = match packet {
                b4::Packet::Publish(p) => {
                    let answer = match p.qos {
                        Q4::AtMostOnce => None,
                        Q4::AtLeastOnce => Some(b4::Packet::PubAck(b4::PubAck::new(p.pkid))),
                        Q4::ExactlyOnce => Some(b4::Packet::PubRec(b4::PubRec::new(p.pkid))),
                    };
                    publishes.push(p);
                    answer
                }
                b4::Packet::PubRel(r) => Some(b4::Packet::PubComp(b4::PubComp::new(r.pkid))),
                b4::Packet::PubRec(r) => Some(b4::Packet::PubRel(b4::PubRel::new(r.pkid))),
                b4::Packet::Subscribe(s) => Some(b4::Packet::SubAck(b4::SubAck::new(
                    s.pkid,
                    s.filters
                        .iter()
                        .map(|_| b4::SubscribeReasonCode::Success(Q4::ExactlyOnce))
                        .collect(),
                ))),
                _ => None,
            };
            if let Some(answer) = answer {
                let mut more = self.feed(answer);
                more.append(&mut sent);
                sent = more;
            }
        }
        panic!("the conversation does not end: {sent:?}");
    }
}

fn to_daemon(topic: &str, pkid: u16, dup: bool, payload: &str) -> b4::Packet {
    let mut p = b4::Publish::new(topic, Q4::ExactlyOnce, payload.as_bytes().to_vec());
    p.pkid = pkid;
    p.dup = dup;
    b4::Packet::Publish(p)
}

fn said(publishes: &[b4::Publish]) -> Vec<(String, String, bool)> {
    publishes
        .iter()
        .map(|p| {
            let payload = String::from_utf8_lossy(&p.payload).into_owned();
            (p.topic.clone(), payload, p.dup)
        })
        .collect()
}

#[test]
fn the_app_in_memory_is_killed_with_a_reply_in_flight_and_resumes_answering_once() {
    let mut daemon = InMemory::start(MemStore::default());
    daemon.session.handle_transport_up(daemon.now);
    let connect = daemon.turn();
    assert!(matches!(connect.as_slice(), [b4::Packet::Connect(c)] if c.clean_session));
    let purge = daemon.feed(connack4(b4::ConnectReturnCode::Success, false));
    let sent = daemon.feed(connack4(b4::ConnectReturnCode::Success, false));
    assert!(
        purge
            .iter()
            .chain(&sent)
            .any(|p| matches!(p, b4::Packet::Connect(c) if !c.clean_session))
    );
    let sent = sent
        .into_iter()
        .filter(|p| !matches!(p, b4::Packet::Connect(_)))
        .collect();
    let login = daemon.broker(sent);
    assert_eq!(said(&login), [("login".into(), "u1".into(), false)]);
    let sent = daemon.feed(to_daemon("u1/UUID", 1, false, UUID));
    assert!(daemon.broker(sent).is_empty());

    // A command; its reply goes out, and the process dies before the broker answers it.
    let sent = daemon.feed(to_daemon(UUID, 2, false, "CMD1"));
    let reply = match sent.as_slice() {
        [b4::Packet::Publish(p)] => p.clone(),
        other => panic!("the reply: {other:?}"),
    };
    assert_eq!(
        said(std::slice::from_ref(&reply)),
        [(format!("{UUID}/CMD1"), "Apple".into(), false)]
    );
    let store = daemon.kill();

    // The next process resumes the broker session: no login, the reply again (DUP, same
    // packet id), the broker's redelivery of the command suppressed.
    let mut daemon = InMemory::start(store);
    daemon.session.handle_transport_up(daemon.now);
    let connect = daemon.turn();
    assert!(matches!(connect.as_slice(), [b4::Packet::Connect(c)] if !c.clean_session));
    let mut sent = daemon.feed(connack4(b4::ConnectReturnCode::Success, true));
    let resumed = sent.clone();
    // Right after CONNACK the broker redelivers what the daemon has not acknowledged.
    sent.extend(daemon.feed(to_daemon(UUID, 2, true, "CMD1")));
    let publishes = daemon.broker(sent);
    assert_eq!(
        said(&publishes),
        [(format!("{UUID}/CMD1"), "Apple".into(), true)],
        "{resumed:?}"
    );
    assert!(matches!(&resumed[..], [b4::Packet::Publish(p)] if p.pkid == reply.pkid));
    assert_eq!(daemon.app.answered(), 1);

    // The completion message ends the run, and the journal with it.
    let sent = daemon.feed(to_daemon(UUID, 3, false, "Well done my IoT!"));
    let last = daemon.broker(sent);
    assert!(daemon.app.wants_disconnect(), "{last:?}");
    daemon
        .app
        .finish_journal(Outcome::Completed, &mut daemon.session);
    let store = daemon.kill();
    assert!(
        store.files.iter().all(Option::is_none),
        "a completed run clears the journal"
    );
}
