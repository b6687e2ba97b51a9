//! The journal against the session it journals: every turn of a QoS 2 stream resumes to
//! what the process held, through compactions, SIGKILL inside any write and power loss.

use std::time::{Duration, Instant};

use rumqttc::mqttbytes::QoS as Q4;
use rumqttc::mqttbytes::v4 as b4;

use super::store::MemStore;
use super::*;
use crate::mqtt::broker_side::{events, feed4, inbound4, online4, sent4};
use crate::mqtt::packet::Publish;
use crate::mqtt::session::{Event, Session, SessionConfig};
use crate::vocabulary::{Protocol, QoS};

fn config() -> SessionConfig {
    SessionConfig {
        protocol: Protocol::V311,
        client_id: "c".into(),
        username: None,
        password: None,
        keep_alive: Duration::from_secs(30),
        max_inflight: 4,
        max_incoming_packet: 1 << 16,
        session_expiry: 60,
        will: None,
        manual_acks: true,
        clean_first: false,
        record_changes: true,
    }
}

/// A responder's bookkeeping around a journaled session, as the daemon keeps it.
struct Run {
    session: Session,
    journal: Journal<MemStore>,
    run: RunState,
    changes: Vec<Change>,
    run_changes: Vec<RunChange>,
    now: Instant,
}

impl Run {
    fn new() -> Run {
        let now = Instant::now();
        let session = online4(config(), now);
        let mut journal = Journal::new(MemStore::default(), "c", "127.0.0.1:1883");
        // Small files: many compactions in a short stream.
        journal.compact_at(4096);
        let run = journal.state(session.snapshot());
        Run {
            session,
            journal,
            run,
            changes: Vec::new(),
            run_changes: Vec::new(),
            now,
        }
    }

    fn change(&mut self, change: RunChange) {
        self.run.apply(change.clone());
        self.run_changes.push(change);
    }

    /// What the process holds now.
    fn state(&self) -> RunState {
        RunState {
            session: self.session.snapshot(),
            ..self.run.clone()
        }
    }

    /// The end of a loop turn: what it changed goes to the journal, as the daemon does it.
    fn turn(&mut self) {
        self.session.take_changes(&mut self.changes);
        if self.changes.is_empty() && self.run_changes.is_empty() {
            return;
        }
        if self.journal.wants_snapshot() {
            let state = self.state();
            self.journal.snapshot(&state, self.now);
        } else {
            self.journal.append(
                self.session.counters(),
                &self.changes,
                &self.run_changes,
                self.now,
            );
        }
        self.changes.clear();
        self.run_changes.clear();
    }

    /// One QoS 2 command with packet id `pkid`, answered: every packet of both handshakes
    /// is a turn; `each` sees the run after every turn.
    fn command(&mut self, pkid: u16, each: &mut dyn FnMut(&Run)) {
        let now = self.now;
        feed4(
            &mut self.session,
            inbound4(pkid, Q4::ExactlyOnce, false, "CMD1"),
            now,
        )
        .unwrap();
        let Some(Event::Message(m)) = events(&mut self.session).pop() else {
            panic!("the command surfaces")
        };
        let token = self.session.publish(
            Publish {
                dup: false,
                qos: QoS::ExactlyOnce,
                retain: false,
                pkid: 0,
                topic: "u/CMD1".into(),
                payload: bytes::Bytes::from_static(b"Apple"),
                response_topic: None,
                correlation_data: None,
            },
            now,
        );
        self.change(RunChange::Reply(SavedReply {
            token: token.0,
            message_id: m.id.0,
            command: "CMD1".into(),
        }));
        self.turn();
        each(self);
        let reply = match sent4(&mut self.session).as_slice() {
            [b4::Packet::Publish(p)] => p.pkid,
            other => panic!("the reply goes out: {other:?}"),
        };
        feed4(
            &mut self.session,
            b4::Packet::PubRec(b4::PubRec::new(reply)),
            now,
        )
        .unwrap();
        self.turn();
        each(self);
        let _ = sent4(&mut self.session);
        feed4(
            &mut self.session,
            b4::Packet::PubComp(b4::PubComp::new(reply)),
            now,
        )
        .unwrap();
        assert_eq!(events(&mut self.session), [Event::Delivered(token)]);
        self.session.ack(m.id, now);
        self.change(RunChange::ReplyDone(token.0));
        self.turn();
        each(self);
        let _ = sent4(&mut self.session);
        feed4(
            &mut self.session,
            b4::Packet::PubRel(b4::PubRel::new(pkid)),
            now,
        )
        .unwrap();
        self.turn();
        each(self);
        let _ = sent4(&mut self.session);
    }
}

fn recovered(store: &MemStore) -> Recovered {
    recover(
        std::array::from_fn(|i| store.files[i].as_deref()),
        ["journal.0", "journal.1", "journal.2"],
    )
}

#[test]
fn every_turn_of_a_stream_resumes_to_what_the_process_held_through_compactions() {
    let mut run = Run::new();
    run.change(RunChange::Uuid(Some("u".into())));
    run.turn();
    let mut turns = 0;
    let mut epochs = std::collections::BTreeSet::new();
    for i in 0..1500u16 {
        run.command(i % 100 + 1, &mut |run: &Run| {
            let found = recovered(run.journal.store());
            assert!(found.warnings.is_empty(), "{:?}", found.warnings);
            assert_eq!(found.state.as_ref(), Some(&run.state()));
            epochs.insert(found.epoch);
            turns += 1;
        });
        // A second passes now and then: the journal is fsynced.
        if i % 300 == 0 {
            run.now += SYNC_INTERVAL;
        }
    }
    assert_eq!(turns, 6000);
    assert!(epochs.len() > 20, "compacted {} times", epochs.len());
    for file in run.journal.store().files.iter().flatten() {
        assert!(
            file.len() <= store::PREALLOCATED,
            "no file grew: {}",
            file.len()
        );
    }
}

/// Cuts the last write that turned `before` into `after` at every byte, as SIGKILL inside
/// it or a power loss does: each cut resumes the state before that turn (with a WARN once
/// the cut changed a byte), or after it once the frame is whole.
fn assert_every_cut_resumes(
    (before_store, before): (&MemStore, &RunState),
    (after_store, after): (&MemStore, &RunState),
) {
    let (file, offset, len) = after_store.last_write.unwrap();
    let empty = Vec::new();
    let old = before_store.files[file].as_ref().unwrap_or(&empty);
    let new = after_store.files[file].as_ref().unwrap();
    for cut in 0..len {
        let mut torn = before_store.clone();
        let bytes = torn.files[file].get_or_insert_with(|| vec![0; store::PREALLOCATED]);
        bytes[offset..offset + cut].copy_from_slice(&new[offset..offset + cut]);
        let found = recovered(&torn);
        let frame = offset..offset + len - codec::TERMINATOR.len();
        if torn.files[file].as_ref().unwrap()[frame.clone()] == new[frame] {
            // The frame is whole (the old bytes after the cut happen to be the new ones).
            assert_eq!(found.state.as_ref(), Some(after), "cut at {cut}");
            continue;
        }
        assert_eq!(found.state.as_ref(), Some(before), "cut at {cut}");
        if offset > 0 {
            // A cut inside a frame appended to a file is seen (the old terminator is
            // overwritten); one that stops before it changed a byte is not.
            let changed = old.get(offset..offset + cut) != Some(&new[offset..offset + cut]);
            assert_eq!(
                !found.warnings.is_empty(),
                changed,
                "cut at {cut}: {:?}",
                found.warnings
            );
        }
    }
    assert_eq!(recovered(after_store).state.as_ref(), Some(after));
}

#[test]
fn a_write_cut_short_anywhere_resumes_the_turn_before_it_with_a_warning() {
    let mut run = Run::new();
    run.change(RunChange::Uuid(Some("u".into())));
    run.turn();
    for pkid in 1..=3 {
        run.command(pkid, &mut |_| {});
    }
    let mut before = (run.journal.store().clone(), run.state());
    let mut turns = Vec::new();
    run.command(4, &mut |run: &Run| {
        let after = (run.journal.store().clone(), run.state());
        turns.push((before.clone(), after.clone()));
        before = after;
    });
    for ((before_store, before), (after_store, after)) in &turns {
        assert_every_cut_resumes((before_store, before), (after_store, after));
    }
}

#[test]
fn a_compaction_cut_short_anywhere_resumes_the_state_before_it() {
    let mut run = Run::new();
    run.change(RunChange::Uuid(Some("u".into())));
    run.turn();
    let mut before = (run.journal.store().clone(), run.state());
    let mut compactions = Vec::new();
    for i in 0..400u16 {
        run.command(i % 100 + 1, &mut |run: &Run| {
            let after = (run.journal.store().clone(), run.state());
            if after.0.last_write.is_some_and(|(_, offset, _)| offset == 0) {
                compactions.push((before.clone(), after.clone()));
            }
            before = after;
        });
        // Syncs now and then: compactions go into the file being written and into the
        // other one.
        if i % 50 == 0 {
            run.now += SYNC_INTERVAL;
        }
    }
    let files: std::collections::BTreeSet<usize> = compactions
        .iter()
        .map(|(_, (store, _))| store.last_write.unwrap().0)
        .collect();
    assert!(
        compactions.len() >= 4 && files.len() >= 2,
        "{} compactions",
        compactions.len()
    );
    for ((before_store, before), (after_store, after)) in compactions.iter().take(6) {
        assert_every_cut_resumes((before_store, before), (after_store, after));
    }
}

#[test]
fn garbage_after_the_last_record_is_a_warning_and_what_is_whole_resumes() {
    let mut run = Run::new();
    run.change(RunChange::Uuid(Some("u".into())));
    run.turn();
    run.command(1, &mut |_| {});
    let state = run.state();
    let mut store = run.journal.store().clone();
    let (file, offset, len) = store.last_write.unwrap();
    let end = offset + len - codec::TERMINATOR.len();
    store.files[file].as_mut().unwrap()[end..end + 8].copy_from_slice(b"garbage!");
    let found = recovered(&store);
    assert_eq!(found.state, Some(state));
    assert!(
        found.warnings[0].contains("damaged bytes at offset")
            && found.warnings[0].contains("resuming"),
        "{:?}",
        found.warnings
    );
}

#[test]
fn after_a_power_loss_the_state_is_the_last_synced_one_or_newer() {
    let mut run = Run::new();
    run.change(RunChange::Uuid(Some("u".into())));
    run.turn();
    // Every state the process held, in order, and the index of the last one synced.
    assert_eq!(run.journal.sync_due(), None, "the first write syncs");
    let mut history: Vec<RunState> = vec![run.state()];
    let mut synced_at = vec![true];
    for i in 0..400u16 {
        run.command(i % 50 + 1, &mut |run: &Run| {
            history.push(run.state());
            synced_at.push(run.journal.sync_due().is_none());
        });
        if i % 37 == 0 {
            run.now += SYNC_INTERVAL;
        }
        let lost = run.journal.store().power_loss();
        let found = recovered(&lost);
        assert!(found.warnings.is_empty(), "{:?}", found.warnings);
        let state = found.state.expect("a state survives");
        let last_synced = synced_at.iter().rposition(|s| *s).unwrap_or_default();
        let at = history
            .iter()
            .rposition(|h| *h == state)
            .expect("a state the process held");
        assert!(
            at >= last_synced,
            "turn {at} resumed, {last_synced} was synced"
        );
    }
}

#[test]
fn load_refuses_another_client_and_resumes_its_own() {
    let mut run = Run::new();
    run.change(RunChange::Uuid(Some("u".into())));
    run.turn();
    run.command(1, &mut |_| {});
    let store = run.journal.store().clone();
    let mut own = Journal::new(store.clone(), "c", "127.0.0.1:1883");
    assert_eq!(own.load(), Some(run.state()));
    // The next snapshot goes to another file, leaving this one until it is durable.
    let from = recovered(&store).file.unwrap();
    own.snapshot(&run.state(), run.now);
    assert_ne!(own.store().last_write.unwrap().0, from);
    assert_eq!(
        Journal::new(store.clone(), "other", "127.0.0.1:1883").load(),
        None
    );
    assert_eq!(Journal::new(store, "c", "127.0.0.1:1884").load(), None);
}

#[test]
fn a_qos_that_is_not_0_1_or_2_does_not_decode() {
    let mut state = RunState::new("c", "b", SessionState::default());
    state.qos = QoS::AtLeastOnce;
    let mut bytes = postcard::to_allocvec(&state).unwrap();
    let at = bytes.iter().rposition(|b| *b == 1).unwrap();
    bytes[at] = 7;
    let err = postcard::from_bytes::<RunState>(&bytes).unwrap_err();
    assert!(err.to_string().contains("QoS") || matches!(err, postcard::Error::SerdeDeCustom));
}

#[test]
fn the_disk_store_keeps_its_size_and_clears_durably() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("state.json"), b"{}").unwrap();
    let mut journal = Journal::in_dir(dir.path(), "c", "b");
    assert!(
        !dir.path().join("state.json").exists(),
        "the old format is removed"
    );
    assert_eq!(journal.load(), None);
    let state = journal.state(SessionState::default());
    let now = Instant::now();
    journal.snapshot(&state, now);
    for _ in 0..100 {
        journal.append(Counters::default(), &[], &[RunChange::Draining(true)], now);
    }
    let size = |i| std::fs::metadata(dir.path().join(format!("journal.{i}"))).map(|m| m.len());
    let sizes: Vec<u64> = (0..3).filter_map(|i| size(i).ok()).collect();
    assert_eq!(
        sizes,
        [store::PREALLOCATED as u64],
        "one file, at its preallocated size"
    );
    let mut again = Journal::in_dir(dir.path(), "c", "b");
    let mut expected = state.clone();
    expected.draining = true;
    assert_eq!(again.load(), Some(expected));
    journal.clear();
    assert!((0..3).all(|i| size(i).is_err()));
    assert_eq!(Journal::in_dir(dir.path(), "c", "b").load(), None);
}
