//! The crash-resume state file (SPEC §5): what a daemon killed mid-run (SIGKILL, power loss)
//! needs to resume the same broker session and UUID and answer what was pending.
//!
//! One small JSON document under `session.state_dir`, replaced atomically (write a temporary
//! file, rename it over the old one). The daemon saves it before it writes the packets a
//! change guards, so the file always runs ahead of the wire; a plain write survives SIGKILL,
//! and the file is fsynced at most once a second: a save that skipped the fsync leaves one
//! due ([`StateFile::sync_due`]) that the daemon's timer carries out, so power loss can undo
//! at most the last second, also when the run goes quiet right after it.
//!
//! [`Journal`] is the policy over the file: what to resume and when a save is due.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::mqtt::session::SessionState;
use crate::vocabulary::QoS;

/// Format version; a file of another version is ignored (with a warning).
const VERSION: u32 = 1;

/// How often the file is fsynced at most.
const SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// What a run leaves for its successor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunState {
    /// Format version.
    pub version: u32,
    /// The client id (names the broker-side session).
    pub client_id: String,
    /// `host:port` of the broker holding the session.
    pub broker: String,
    /// The UUID, once accepted.
    pub uuid: Option<String>,
    /// The completion message had arrived.
    pub draining: bool,
    /// QoS replies were sent at (a file with another number is not a state file).
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

/// Why the file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: io::Error,
    },
    /// The content is not a state file of this version.
    #[error("{path}: not a usable state file ({reason})")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// The state file in a directory.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    tmp: PathBuf,
    last_sync: Option<Instant>,
    /// The file on disk was replaced without an fsync since the last one.
    unsynced: bool,
}

impl StateFile {
    /// `dir/state.json`.
    pub fn new(dir: &Path) -> StateFile {
        StateFile {
            path: dir.join("state.json"),
            tmp: dir.join("state.json.tmp"),
            last_sync: None,
            unsynced: false,
        }
    }

    /// The file's path, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How long ago the file was last written (by its modification time); `None` when
    /// there is none, or the clock says it was written in the future (a Raspberry Pi
    /// without a real-time clock before NTP has set it).
    pub fn age(&self) -> Option<Duration> {
        let modified = fs::metadata(&self.path).and_then(|m| m.modified()).ok()?;
        std::time::SystemTime::now().duration_since(modified).ok()
    }

    /// The saved state, `None` when there is none.
    pub fn load(&self) -> Result<Option<RunState>, StateError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(self.io(source)),
        };
        let state: RunState = serde_json::from_str(&text).map_err(|e| StateError::Invalid {
            path: self.path.display().to_string(),
            reason: e.to_string(),
        })?;
        if state.version != VERSION {
            return Err(StateError::Invalid {
                path: self.path.display().to_string(),
                reason: format!("version {}, expected {VERSION}", state.version),
            });
        }
        Ok(Some(state))
    }

    /// Replaces the file with `state` (write, fsync at most once a second, rename).
    pub fn save(&mut self, state: &RunState) -> Result<(), StateError> {
        let json = serde_json::to_vec(state).map_err(|e| StateError::Invalid {
            path: self.path.display().to_string(),
            reason: e.to_string(),
        })?;
        let sync = self.last_sync.is_none_or(|t| t.elapsed() >= SYNC_INTERVAL);
        let mut file = File::create(&self.tmp).map_err(|e| self.io(e))?;
        file.write_all(&json).map_err(|e| self.io(e))?;
        if sync {
            file.sync_data().map_err(|e| self.io(e))?;
        }
        drop(file);
        fs::rename(&self.tmp, &self.path).map_err(|e| self.io(e))?;
        if sync {
            self.sync_dir()?;
            self.last_sync = Some(Instant::now());
        }
        self.unsynced = !sync;
        Ok(())
    }

    /// When the fsync a throttled save skipped is due; `None` when the disk is current.
    pub fn sync_due(&self) -> Option<Instant> {
        self.unsynced.then(|| {
            self.last_sync
                .map_or_else(Instant::now, |t| t + SYNC_INTERVAL)
        })
    }

    /// Carries out the fsync a throttled save skipped (nothing when none is owed).
    pub fn sync(&mut self) -> Result<(), StateError> {
        if !self.unsynced {
            return Ok(());
        }
        // Whatever the outcome, the next try is a second away: a failing disk must not
        // have the daemon's timer retry in a busy loop.
        self.last_sync = Some(Instant::now());
        File::open(&self.path)
            .and_then(|f| f.sync_data())
            .map_err(|e| self.io(e))?;
        self.sync_dir()?;
        self.unsynced = false;
        Ok(())
    }

    /// The rename (or removal) itself reaches the disk with the directory.
    fn sync_dir(&self) -> Result<(), StateError> {
        match self.path.parent() {
            Some(dir) => File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| self.io(e)),
            None => Ok(()),
        }
    }

    /// Removes the file, durably: the next run starts fresh, also after a power loss.
    pub fn clear(&mut self) -> Result<(), StateError> {
        match fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.io(e)),
        }
        self.unsynced = false;
        self.sync_dir()
    }

    fn io(&self, source: io::Error) -> StateError {
        StateError::Io {
            path: self.path.display().to_string(),
            source,
        }
    }
}

impl RunState {
    /// A state for `client_id` on `broker`.
    pub fn new(client_id: &str, broker: &str, session: SessionState) -> RunState {
        RunState {
            version: VERSION,
            client_id: client_id.to_owned(),
            broker: broker.to_owned(),
            uuid: None,
            draining: false,
            qos: QoS::ExactlyOnce,
            replies: Vec::new(),
            session,
        }
    }
}

/// A state file older than the broker keeps a session (MQTT 5 session expiry, which the
/// daemon sets to this) is not resumed.
pub const RESUME_WITHIN: Duration = Duration::from_secs(24 * 60 * 60);

/// The journal policy over the [`StateFile`]: what to resume, when a save is due, and
/// saying once (not per save) that the file cannot be written.
#[derive(Debug)]
pub struct Journal {
    file: StateFile,
    client_id: String,
    broker: String,
    saved_uuid: Option<String>,
    saved_draining: bool,
    /// A save failed: said once, then kept quiet until one succeeds again.
    failing: bool,
}

impl Journal {
    /// The journal of `client_id` on `broker` in `dir`.
    pub fn new(dir: &Path, client_id: &str, broker: &str) -> Journal {
        Journal {
            file: StateFile::new(dir),
            client_id: client_id.to_owned(),
            broker: broker.to_owned(),
            saved_uuid: None,
            saved_draining: false,
            failing: false,
        }
    }

    /// The state a previous process left for this client and broker, if any: not one older
    /// than a session lives, nor one of another client or broker (each with a WARN).
    pub fn load(&self) -> Option<RunState> {
        match self.file.load() {
            Ok(Some(_)) if self.file.age().is_some_and(|age| age > RESUME_WITHIN) => {
                // The broker's half of the session expires after as long (MQTT 5), and a
                // 3.1.1 broker that keeps it for ever would have us answer a stale UUID.
                tracing::warn!(
                    "{} was written {} h ago, longer than a session lives ({} h); starting \
                     fresh",
                    self.file.path().display(),
                    self.file.age().unwrap_or_default().as_secs() / 3600,
                    RESUME_WITHIN.as_secs() / 3600
                );
                None
            }
            Ok(Some(state)) if state.client_id == self.client_id && state.broker == self.broker => {
                Some(state)
            }
            Ok(Some(state)) => {
                tracing::warn!(
                    "{} belongs to client {} on {}, not {} on {}; starting fresh",
                    self.file.path().display(),
                    state.client_id,
                    state.broker,
                    self.client_id,
                    self.broker
                );
                None
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!("ignoring the state file: {e}; starting fresh");
                None
            }
        }
    }

    /// Whether what the file holds is out of date: the session changed (`session_dirty`),
    /// or the UUID, or whether the run is draining.
    pub fn is_stale(&self, session_dirty: bool, uuid: Option<&str>, draining: bool) -> bool {
        session_dirty || self.saved_uuid.as_deref() != uuid || self.saved_draining != draining
    }

    /// A state for this journal's client and broker around `session`, the rest empty.
    pub fn state(&self, session: SessionState) -> RunState {
        RunState::new(&self.client_id, &self.broker, session)
    }

    /// Saves `state`; a failure is an ERROR once, until a save succeeds again.
    pub fn save(&mut self, state: &RunState) {
        match self.file.save(state) {
            Ok(()) => {
                self.saved_uuid.clone_from(&state.uuid);
                self.saved_draining = state.draining;
                if std::mem::take(&mut self.failing) {
                    tracing::info!("state file {} written again", self.file.path().display());
                }
            }
            Err(e) => {
                if !std::mem::replace(&mut self.failing, true) {
                    tracing::error!(
                        "cannot write the state file: {e}; answering on, but a crash now \
                         would not resume this run"
                    );
                }
            }
        }
    }

    /// Removes the file: the run completed.
    pub fn clear(&mut self) {
        if let Err(e) = self.file.clear() {
            tracing::error!("cannot remove the state file: {e}; the next run may resume this one");
        }
    }

    /// When an fsync that a throttled save left owed is due.
    pub fn sync_due(&self) -> Option<Instant> {
        self.file.sync_due()
    }

    /// Carries out an fsync a throttled save left owed.
    pub fn sync(&mut self) {
        if let Err(e) = self.file.sync() {
            if !std::mem::replace(&mut self.failing, true) {
                tracing::error!(
                    "cannot sync the state file: {e}; answering on, but a power loss now \
                     would not resume this run"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::session::{Session, SessionConfig};
    use crate::vocabulary::{Protocol, QoS};

    fn state() -> RunState {
        let config = SessionConfig {
            protocol: Protocol::V311,
            client_id: "c".into(),
            username: None,
            password: None,
            keep_alive: Duration::from_secs(30),
            max_inflight: 20,
            max_incoming_packet: 1 << 16,
            session_expiry: 60,
            will: None,
            manual_acks: true,
            clean_first: true,
        };
        let mut session = Session::new(config, Instant::now());
        session.publish(
            crate::mqtt::packet::Publish {
                dup: false,
                qos: QoS::ExactlyOnce,
                retain: false,
                pkid: 0,
                topic: "u/CMD1".into(),
                payload: bytes::Bytes::from_static(b"Apple"),
                response_topic: None,
                correlation_data: None,
            },
            Instant::now(),
        );
        let mut state = RunState::new("c", "127.0.0.1:1883", session.snapshot());
        state.uuid = Some("u".into());
        state.replies.push(SavedReply {
            token: 1,
            message_id: 7,
            command: "CMD1".into(),
        });
        state
    }

    #[test]
    fn saves_loads_and_clears() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = StateFile::new(dir.path());
        assert!(file.load().unwrap().is_none());
        let state = state();
        let before = Instant::now();
        file.save(&state).unwrap();
        assert_eq!(file.sync_due(), None, "the first save is fsynced at once");
        file.save(&state).unwrap();
        // The second, within the second, is not: its fsync is due a second after the first
        // (unless this machine took a whole second between the two).
        if before.elapsed() < SYNC_INTERVAL {
            let due = file
                .sync_due()
                .expect("a throttled save leaves an fsync due");
            assert!(due >= before + SYNC_INTERVAL && due <= Instant::now() + SYNC_INTERVAL);
        }
        file.sync().unwrap();
        assert_eq!(file.sync_due(), None);
        file.sync().unwrap();
        // An fsync that fails is tried again a second later, not at once.
        file.save(&state).unwrap();
        file.save(&state).unwrap();
        if file.sync_due().is_some() {
            fs::remove_file(file.path()).unwrap();
            let failed_at = Instant::now();
            assert!(file.sync().is_err());
            let due = file.sync_due().expect("still owed");
            assert!(due >= failed_at + SYNC_INTERVAL, "retried a second later");
            file.save(&state).unwrap();
        }
        assert_eq!(file.load().unwrap(), Some(state));
        assert!(!dir.path().join("state.json.tmp").exists());
        file.clear().unwrap();
        file.clear().unwrap();
        assert!(file.load().unwrap().is_none());
    }

    #[test]
    fn garbage_and_other_versions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::new(dir.path());
        fs::write(file.path(), b"{not json").unwrap();
        assert!(matches!(file.load(), Err(StateError::Invalid { .. })));
        let mut other = state();
        other.version = 99;
        fs::write(file.path(), serde_json::to_vec(&other).unwrap()).unwrap();
        let err = file.load().unwrap_err().to_string();
        assert!(err.contains("version 99"), "{err}");
    }

    #[test]
    fn a_qos_that_is_not_0_1_or_2_is_refused_not_read_as_2() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::new(dir.path());
        let mut json: serde_json::Value = serde_json::to_value(state()).unwrap();
        json["qos"] = 7.into();
        fs::write(file.path(), serde_json::to_vec(&json).unwrap()).unwrap();
        let err = file.load().unwrap_err().to_string();
        assert!(err.contains("QoS 7 is not 0, 1 or 2"), "{err}");
    }
}
