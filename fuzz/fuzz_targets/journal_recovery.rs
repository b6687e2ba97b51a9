//! Arbitrary bytes as the crash-resume journal's three files into `daemon::state::recover`.
//!
//! Invariants: it never panics (damage of any kind is a warning); what it recovers, written
//! again as a snapshot, recovers to itself. The seed corpus can hold real journals (a run
//! with `state_dir` killed mid-stream), so that mutations start from whole frames.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqtt_responder::daemon::state::store::MemStore;
use mqtt_responder::daemon::state::{Journal, recover};

const NAMES: [&str; 3] = ["journal.0", "journal.1", "journal.2"];

fuzz_target!(|data: &[u8]| {
    // The first three bytes say where the first two files end and which files exist.
    let (head, rest) = data.split_at(data.len().min(3));
    let at = |i: usize| usize::from(head.get(i).copied().unwrap_or(0)) * rest.len() / 256;
    let (first, second) = (at(0).min(at(1)), at(0).max(at(1)));
    let flags = head.get(2).copied().unwrap_or(7);
    let parts = [&rest[..first], &rest[first..second], &rest[second..]];
    let files = std::array::from_fn(|i| (flags >> i & 1 != 0).then_some(parts[i]));
    let found = recover(files, NAMES);
    let Some(state) = found.state else {
        return;
    };
    let mut journal = Journal::new(MemStore::default(), &state.client_id, &state.broker);
    journal.snapshot(&state, std::time::Instant::now());
    let store = journal.store();
    let again = recover(std::array::from_fn(|i| store.files[i].as_deref()), NAMES);
    assert!(again.warnings.is_empty(), "{:?}", again.warnings);
    assert_eq!(again.state.as_ref(), Some(&state));
});
