//! The crash-resume journal (SPEC §5): what a daemon killed mid-run (SIGKILL, power loss)
//! needs to resume the same broker session and UUID and answer what was pending.
//!
//! An append-only log of small records (a command received, a reply handed to the
//! session, an acknowledgement, the UUID, draining): the daemon writes everything a loop
//! turn changed as one frame, in one write (two when it crosses a page boundary), before the packets it guards leave, so the log
//! always runs ahead of the wire and SIGKILL at any instant loses nothing. Three files take
//! turns ([`store`]): each starts with a snapshot of the whole [`RunState`] and goes on with
//! the changes since. Past [`COMPACT_AT`] bytes the daemon starts afresh with a snapshot in
//! a file that is neither the one being written (the newest state: a SIGKILL inside the
//! snapshot's write must find it whole) nor the one last fsynced (the durable state: so
//! must a power loss). fsync runs at most once a second (and once more when the run goes
//! quiet): power loss can undo at most the last second, never leave a state that was not.
//!
//! Recovery ([`recover`]) takes the newest whole snapshot and the whole frames after it; a
//! write cut short or damage after them is a WARN, and resuming goes on from what is whole.

pub mod codec;
pub mod store;

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::mqtt::session::{Change, Counters, SessionState};
use crate::vocabulary::QoS;
use codec::{Kind, Tail};
use store::{DiskStore, FILES, Store};

/// How often the journal is fsynced at most.
const SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// Past this many bytes in the current file, the next write is a snapshot that starts it
/// afresh.
pub const COMPACT_AT: usize = 64 * 1024;

/// A journal older than the broker keeps a session (MQTT 5 session expiry, which the
/// daemon sets to this) is not resumed.
pub const RESUME_WITHIN: Duration = Duration::from_secs(24 * 60 * 60);

/// What a run leaves for its successor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunState {
    /// The client id (names the broker-side session).
    pub client_id: String,
    /// `host:port` of the broker holding the session.
    pub broker: String,
    /// The UUID, once accepted.
    pub uuid: Option<String>,
    /// The completion message had arrived.
    pub draining: bool,
    /// QoS replies were sent at.
    pub qos: QoS,
    /// Replies in flight: which inbound command each answers.
    pub replies: Vec<SavedReply>,
    /// The MQTT session.
    pub session: SessionState,
}

/// A reply in flight and the command it answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedReply {
    /// The session's token for the reply publish.
    pub token: u64,
    /// The session's handle of the inbound command.
    pub message_id: u64,
    /// The command.
    pub command: String,
}

/// A change to the run's part of the state (the session's are [`Change`]s).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunChange {
    /// A reply was handed to the session.
    Reply(SavedReply),
    /// The reply with this token is finished with.
    ReplyDone(u64),
    /// Every reply in flight was forgotten (the broker lost the session).
    RepliesCleared,
    /// The UUID is now this.
    Uuid(Option<String>),
    /// Whether the completion message has arrived.
    Draining(bool),
    /// The QoS replies go out at.
    Qos(QoS),
}

/// What a changes frame holds: the turn's changes and the session's counters after them.
#[derive(Serialize)]
struct ChangesOut<'a> {
    counters: Counters,
    session: &'a [Change],
    run: &'a [RunChange],
}

#[derive(Deserialize)]
struct ChangesIn {
    counters: Counters,
    session: Vec<Change>,
    run: Vec<RunChange>,
}

impl RunState {
    /// A state for `client_id` on `broker`.
    pub fn new(client_id: &str, broker: &str, session: SessionState) -> RunState {
        RunState {
            client_id: client_id.to_owned(),
            broker: broker.to_owned(),
            uuid: None,
            draining: false,
            qos: QoS::ExactlyOnce,
            replies: Vec::new(),
            session,
        }
    }

    /// Carries the state one run change forward.
    pub fn apply(&mut self, change: RunChange) {
        match change {
            RunChange::Reply(reply) => self.replies.push(reply),
            RunChange::ReplyDone(token) => self.replies.retain(|r| r.token != token),
            RunChange::RepliesCleared => self.replies.clear(),
            RunChange::Uuid(uuid) => self.uuid = uuid,
            RunChange::Draining(draining) => self.draining = draining,
            RunChange::Qos(qos) => self.qos = qos,
        }
    }
}

/// What [`recover`] found.
#[derive(Debug, Default)]
pub struct Recovered {
    /// The newest whole state, if any.
    pub state: Option<RunState>,
    /// The file it came from.
    pub file: Option<usize>,
    /// The highest epoch in any file: the next snapshot's must be above it.
    pub epoch: u64,
    /// What was wrong with the files (each a WARN).
    pub warnings: Vec<String>,
}

/// Reads the newest whole state out of the files' bytes (`None`: no such file; `names` for
/// the warnings). Never fails: what cannot be read is a warning.
pub fn recover(files: [Option<&[u8]>; FILES], names: [&str; FILES]) -> Recovered {
    let mut found = Recovered::default();
    let mut candidates = Vec::new();
    for (i, bytes) in files.iter().enumerate() {
        let Some(bytes) = bytes else { continue };
        match codec::read(bytes) {
            Err(e) => found.warnings.push(format!("{}: {e}; ignored", names[i])),
            Ok((frames, tail)) => {
                let Some(first) = frames.first() else {
                    // A file created but never written holds only zeros, and no header.
                    found
                        .warnings
                        .push(format!("{}: no whole snapshot; ignored", names[i]));
                    continue;
                };
                found.epoch = found.epoch.max(first.epoch);
                candidates.push((first.epoch, i, frames, tail));
            }
        }
    }
    // Newest first; an unreadable snapshot falls back to the next newest.
    candidates.sort_by_key(|(epoch, ..)| std::cmp::Reverse(*epoch));
    for (_, i, frames, tail) in candidates {
        let name = names[i];
        let mut state: RunState = match postcard::from_bytes(frames[0].body) {
            Ok(state) => state,
            Err(e) => {
                found.warnings.push(format!(
                    "{name}: the snapshot does not decode ({e}); ignored"
                ));
                continue;
            }
        };
        let mut damaged = match tail {
            Tail::Clean => None,
            Tail::Damaged(at) => Some(format!("damaged bytes at offset {at}")),
            Tail::Cut(at) => Some(format!("the file ends at offset {at}, inside a record")),
        };
        for frame in &frames[1..] {
            debug_assert_eq!(frame.kind, Kind::Changes);
            match postcard::from_bytes::<ChangesIn>(frame.body) {
                Ok(changes) => {
                    for change in changes.session {
                        state.session.apply(change);
                    }
                    for change in changes.run {
                        state.apply(change);
                    }
                    state.session.set_counters(changes.counters);
                }
                Err(e) => {
                    damaged = Some(format!("a record that does not decode ({e})"));
                    break;
                }
            }
        }
        if let Some(what) = damaged {
            found.warnings.push(format!(
                "{name}: {what} (a write cut short, or damage); resuming from the whole \
                 records before it"
            ));
        }
        found.state = Some(state);
        found.file = Some(i);
        return found;
    }
    found
}

/// The journal of one client on one broker: recovery, then one write per loop turn.
#[derive(Debug)]
pub struct Journal<S: Store = DiskStore> {
    store: S,
    client_id: String,
    broker: String,
    /// The file being written.
    active: usize,
    /// The file whose content was last fsynced (it holds the durable state).
    durable: Option<usize>,
    epoch: u64,
    /// Where the next frame goes in the active file: on its terminator.
    offset: usize,
    /// [`COMPACT_AT`], smaller in tests.
    compact_at: usize,
    /// A write failed, or none was made yet: the next one must be a snapshot.
    needs_snapshot: bool,
    last_sync: Option<Instant>,
    /// Written since the last fsync.
    unsynced: bool,
    /// A write or sync failed: said once, then kept quiet until one succeeds again.
    failing: bool,
    buf: Vec<u8>,
}

impl Journal<DiskStore> {
    /// The journal of `client_id` on `broker` in `dir`. A state file of the earlier
    /// format (`state.json`) is removed with a WARN: it cannot be resumed.
    pub fn in_dir(dir: &Path, client_id: &str, broker: &str) -> Journal<DiskStore> {
        let legacy = dir.join("state.json");
        if legacy.exists() {
            tracing::warn!(
                "{} is a state file of an earlier version; it cannot be resumed and is \
                 removed",
                legacy.display()
            );
            if let Err(e) = std::fs::remove_file(&legacy) {
                tracing::warn!("cannot remove {}: {e}", legacy.display());
            }
        }
        Journal::new(DiskStore::new(dir), client_id, broker)
    }
}

impl<S: Store> Journal<S> {
    /// The journal of `client_id` on `broker` in `store`.
    pub fn new(store: S, client_id: &str, broker: &str) -> Journal<S> {
        Journal {
            store,
            client_id: client_id.to_owned(),
            broker: broker.to_owned(),
            active: 0,
            durable: None,
            epoch: 0,
            offset: 0,
            compact_at: COMPACT_AT,
            needs_snapshot: true,
            last_sync: None,
            unsynced: false,
            failing: false,
            buf: Vec::with_capacity(4096),
        }
    }

    /// The store, for tests that look at the bytes.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The state a previous process left for this client and broker, if any: not one older
    /// than a session lives, nor one of another client or broker (each with a WARN). The
    /// next snapshot goes into another file, so that this one stays until it is durable.
    pub fn load(&mut self) -> Option<RunState> {
        let mut bytes: [Option<Vec<u8>>; FILES] = Default::default();
        for (i, slot) in bytes.iter_mut().enumerate() {
            match self.store.read(i) {
                Ok(b) => *slot = b,
                Err(e) => tracing::warn!("cannot read {}: {e}; ignored", self.store.name(i)),
            }
        }
        let names: [String; FILES] = std::array::from_fn(|i| self.store.name(i));
        let found = recover(
            std::array::from_fn(|i| bytes[i].as_deref()),
            std::array::from_fn(|i| names[i].as_str()),
        );
        for warning in &found.warnings {
            tracing::warn!("{warning}");
        }
        self.epoch = found.epoch;
        let (state, file) = (found.state?, found.file?);
        self.active = file;
        self.durable = Some(file);
        let name = &names[file];
        let age = self
            .store
            .modified(file)
            .and_then(|m| SystemTime::now().duration_since(m).ok());
        if let Some(age) = age.filter(|age| *age > RESUME_WITHIN) {
            // The broker's half of the session expires after as long (MQTT 5), and a
            // 3.1.1 broker that keeps it for ever would have us answer a stale UUID. A
            // clock that says the file was written in the future (a Raspberry Pi without a
            // real-time clock before NTP has set it) is no reason to start fresh.
            tracing::warn!(
                "{name} was written {} h ago, longer than a session lives ({} h); starting \
                 fresh",
                age.as_secs() / 3600,
                RESUME_WITHIN.as_secs() / 3600
            );
            return None;
        }
        if state.client_id != self.client_id || state.broker != self.broker {
            tracing::warn!(
                "{name} belongs to client {} on {}, not {} on {}; starting fresh",
                state.client_id,
                state.broker,
                self.client_id,
                self.broker
            );
            return None;
        }
        Some(state)
    }

    /// Whether the next write should be a [`Journal::snapshot`] rather than changes.
    pub fn wants_snapshot(&self) -> bool {
        self.needs_snapshot || self.offset > self.compact_at
    }

    /// Compacts past `bytes` instead of [`COMPACT_AT`] (tests that want many compactions).
    #[cfg(test)]
    pub fn compact_at(&mut self, bytes: usize) {
        self.compact_at = bytes;
    }

    /// A state for this journal's client and broker around `session`, the rest empty.
    pub fn state(&self, session: SessionState) -> RunState {
        RunState::new(&self.client_id, &self.broker, session)
    }

    /// Writes what a loop turn changed, as one frame (one write per page it touches).
    pub fn append(
        &mut self,
        counters: Counters,
        session: &[Change],
        run: &[RunChange],
        now: Instant,
    ) {
        self.buf.clear();
        let changes = ChangesOut {
            counters,
            session,
            run,
        };
        let encoded = codec::write_frame(&mut self.buf, Kind::Changes, self.epoch, |out| {
            *out = postcard::to_extend(&changes, std::mem::take(out))?;
            Ok::<(), postcard::Error>(())
        });
        if let Err(e) = encoded {
            self.failed("encode a record", &e.to_string());
            return;
        }
        self.buf.extend_from_slice(&codec::TERMINATOR);
        self.write(self.active, now);
    }

    /// Starts a file afresh with the whole `state`: one that holds neither the newest state
    /// (the file being written) nor the durable one.
    pub fn snapshot(&mut self, state: &RunState, now: Instant) {
        let target = (0..FILES)
            .find(|i| *i != self.active && Some(*i) != self.durable)
            .unwrap_or_default();
        self.buf.clear();
        codec::write_header(&mut self.buf);
        let encoded = codec::write_frame(&mut self.buf, Kind::Snapshot, self.epoch + 1, |out| {
            *out = postcard::to_extend(state, std::mem::take(out))?;
            Ok::<(), postcard::Error>(())
        });
        if let Err(e) = encoded {
            self.failed("encode the snapshot", &e.to_string());
            return;
        }
        self.buf.extend_from_slice(&codec::TERMINATOR);
        self.epoch += 1;
        self.active = target;
        self.offset = 0;
        self.write(target, now);
        if !self.failing {
            self.needs_snapshot = false;
        }
    }

    /// Writes `self.buf` (ending in the terminator) at the active offset of `file`; fsyncs
    /// when a second has passed since the last fsync, else leaves one due.
    fn write(&mut self, file: usize, now: Instant) {
        if let Err(e) = self.store.write_at(file, self.offset as u64, &self.buf) {
            self.failed("write", &format!("{}: {e}", self.store.name(file)));
            return;
        }
        self.offset += self.buf.len() - codec::TERMINATOR.len();
        self.unsynced = true;
        if self.last_sync.is_none_or(|t| now >= t + SYNC_INTERVAL) {
            self.sync(now);
        } else if std::mem::take(&mut self.failing) {
            tracing::info!("journal {} written again", self.store.name(file));
        }
    }

    /// When the fsync a throttled write left owed is due; `None` when the disk is current.
    pub fn sync_due(&self) -> Option<Instant> {
        self.unsynced
            .then(|| self.last_sync.map_or(Instant::now(), |t| t + SYNC_INTERVAL))
    }

    /// Makes what was written durable (nothing when nothing is owed).
    pub fn sync(&mut self, now: Instant) {
        if !self.unsynced {
            return;
        }
        // Whatever the outcome, the next try is a second away: a failing disk must not
        // have the daemon's timer retry in a busy loop.
        self.last_sync = Some(now);
        match self.store.sync(self.active) {
            Ok(()) => {
                self.unsynced = false;
                self.durable = Some(self.active);
                if std::mem::take(&mut self.failing) {
                    tracing::info!("journal {} written again", self.store.name(self.active));
                }
            }
            Err(e) => {
                let what = format!("{}: {e}", self.store.name(self.active));
                self.failed("sync", &what);
            }
        }
    }

    /// A write, encode or sync failed: an ERROR once, until one succeeds again; the next
    /// write is a snapshot, as a frame may be missing from the file.
    fn failed(&mut self, what: &str, why: &str) {
        self.needs_snapshot = true;
        if !std::mem::replace(&mut self.failing, true) {
            tracing::error!(
                "cannot {what} the crash-resume journal ({why}); answering on, but a crash \
                 now would not resume this run"
            );
        }
    }

    /// Removes the files: the run completed, the next one starts fresh.
    pub fn clear(&mut self) {
        if let Err(e) = self.store.remove() {
            tracing::error!(
                "cannot remove the crash-resume journal {}: {e}; the next run may resume \
                 this one",
                self.store.name(0)
            );
        }
        self.unsynced = false;
        self.needs_snapshot = true;
        self.durable = None;
    }
}

#[cfg(test)]
mod tests;
