//! Unit tests that need the store's insides: a disk that fails its fsync,
//! and the key and record encodings.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use redb::StorageBackend;
use redb::backends::InMemoryBackend;

use super::tables::{compound, decode, lp};
use super::*;

/// An in-memory disk whose fsync fails on demand.
#[derive(Debug)]
struct FlakyDisk {
    inner: InMemoryBackend,
    fail_sync: Arc<AtomicBool>,
}

impl StorageBackend for FlakyDisk {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> Result<(), std::io::Error> {
        if self.fail_sync.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("injected fsync failure"));
        }
        self.inner.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.inner.write(offset, data)
    }
}

fn refusal(i: usize) -> Vec<EventPayload> {
    vec![EventPayload::IssuanceRefused {
        reason: format!("refusal {i}"),
    }]
}

#[test]
fn a_failed_commit_acknowledges_nobody_and_the_store_then_refuses_writes() {
    let fail_sync = Arc::new(AtomicBool::new(false));
    let db = Builder::new()
        .create_with_backend(FlakyDisk {
            inner: InMemoryBackend::new(),
            fail_sync: fail_sync.clone(),
        })
        .unwrap();
    let store = Store::start(Path::new("<memory>"), db, true).unwrap();
    store
        .execute_blocking(Actor::System, |_| Decision::Commit {
            events: refusal(0),
            output: (),
        })
        .unwrap();

    fail_sync.store(true, Ordering::SeqCst);
    let threads: Vec<_> = (1..=8)
        .map(|i| {
            let store = store.clone();
            std::thread::spawn(move || {
                store.execute_blocking(Actor::System, move |_| Decision::Commit {
                    events: refusal(i),
                    output: i,
                })
            })
        })
        .collect();
    for t in threads {
        match t.join().unwrap() {
            Err(ExecError::Storage(why)) => assert!(why.contains("commit failed"), "{why}"),
            other => panic!("acknowledged without a durable commit: {other:?}"),
        }
    }
    fail_sync.store(false, Ordering::SeqCst);
    let later = store.execute_blocking(Actor::System, |_| Decision::Commit {
        events: refusal(99),
        output: (),
    });
    assert!(
        matches!(&later, Err(ExecError::Storage(why)) if why.contains("restarts")),
        "{later:?}"
    );
    assert_eq!(store.group_commit_stats().1, 1);
}

#[test]
fn a_command_that_panics_is_answered_and_the_writer_goes_on() {
    let db = Builder::new()
        .create_with_backend(InMemoryBackend::new())
        .unwrap();
    let store = Store::start(Path::new("<memory>"), db, true).unwrap();
    let r: Result<(), ExecError> =
        store.execute_blocking(Actor::System, |_| panic!("a bug in a command"));
    assert!(matches!(r, Err(ExecError::Storage(_))), "{r:?}");
    let seq = store
        .execute_blocking(Actor::System, |v| Decision::Commit {
            events: refusal(1),
            output: v.head().0,
        })
        .unwrap();
    assert_eq!(seq, 0, "the panicking command wrote nothing");
    assert!(store.verify().is_clean());
}

#[test]
fn length_prefixed_keys_never_match_a_longer_name() {
    let alice = compound("alice", &[1, 2]);
    let alice2 = compound("alice2", &[1, 2]);
    assert!(alice.starts_with(&lp("alice")));
    assert!(!alice2.starts_with(&lp("alice")));
    assert_eq!(lp("ab"), vec![0, 0, 0, 2, b'a', b'b']);
}

#[test]
fn decoding_refuses_trailing_bytes() {
    let mut bytes = postcard::to_stdvec(&CertState::Revoked).unwrap();
    assert_eq!(decode::<CertState>(&bytes), Ok(CertState::Revoked));
    bytes.push(0);
    assert!(decode::<CertState>(&bytes).is_err());
}

/// The projections' bytes are part of the file format (and of the
/// replay-equality guarantee across versions): changing a record type
/// changes these bytes, which must be a deliberate, versioned decision.
#[test]
fn record_encodings_are_stable() {
    let cp = CheckpointRecord {
        sequence: 300,
        head_hash: [0xab; 32],
        time: -1,
        signature: vec![1, 2, 3],
        seq: 301,
    };
    let mut want = vec![0xac, 0x02];
    want.extend_from_slice(&[0xab; 32]);
    want.extend_from_slice(&[0x01, 0x03, 1, 2, 3, 0xad, 0x02]);
    assert_eq!(postcard::to_stdvec(&cp).unwrap(), want);

    let status = CeremonyStatus::Executed { seq: 5 };
    assert_eq!(postcard::to_stdvec(&status).unwrap(), vec![1, 5]);
    assert_eq!(
        postcard::to_stdvec(&CertState::PossiblyIssued).unwrap(),
        vec![2]
    );
    assert_eq!(tables::checkpoint_key(258), [0, 0, 0, 0, 0, 0, 1, 2]);
}

#[test]
fn after_a_failed_commit_the_store_says_it_is_not_writable_though_reads_still_start() {
    let fail_sync = Arc::new(AtomicBool::new(false));
    let db = Builder::new()
        .create_with_backend(FlakyDisk {
            inner: InMemoryBackend::new(),
            fail_sync: fail_sync.clone(),
        })
        .unwrap();
    let store = Store::start(Path::new("<memory>"), db, true).unwrap();
    store
        .execute_blocking(Actor::System, |_| Decision::Commit {
            events: refusal(0),
            output: (),
        })
        .unwrap();
    assert_eq!(store.writable(), Ok(()));
    fail_sync.store(true, Ordering::SeqCst);
    let r = store.execute_blocking(Actor::System, |_| Decision::Commit {
        events: refusal(1),
        output: (),
    });
    assert!(matches!(r, Err(ExecError::Storage(_))), "{r:?}");
    fail_sync.store(false, Ordering::SeqCst);
    assert!(store.read().is_ok());
    let why = store
        .writable()
        .expect_err("a failed store is not writable");
    assert!(why.contains("restart"), "{why}");
    assert!(why.contains("repairs"), "{why}");
    let later = store.execute_blocking(Actor::System, |_| Decision::Commit {
        events: refusal(2),
        output: (),
    });
    assert!(later.is_err());
}

#[test]
fn the_signers_last_checkpoint_is_compared_with_the_log_even_when_only_its_digest_is_known() {
    use castellan_proto::{CheckpointRequest, LastSignedCheckpoint, checkpoint_message};
    let db = Builder::new()
        .create_with_backend(InMemoryBackend::new())
        .unwrap();
    let store = Store::start(Path::new("<memory>"), db, true).unwrap();
    for i in 0..4 {
        store
            .execute_blocking(Actor::System, move |_| Decision::Commit {
                events: refusal(i),
                output: (),
            })
            .unwrap();
    }
    let (count, head) = store.read().unwrap().head();
    assert_eq!(count, 4);
    let time = 1_767_500_000;
    let signed = CheckpointRequest {
        sequence: 3,
        head_hash: head,
        time,
    };
    let digest = |c: &CheckpointRequest| -> [u8; 32] {
        ring::digest::digest(&ring::digest::SHA256, &checkpoint_message(c))
            .as_ref()
            .try_into()
            .unwrap()
    };
    // Journaled 40 s after the checkpoint's time (a slow token), never
    // recorded in the log (the daemon stopped first), and the signer
    // restarted since: only the digest and the journal time are known.
    let digest_only = |c: &CheckpointRequest| LastSignedCheckpoint {
        sequence: c.sequence,
        message_sha256: digest(c),
        request: None,
        journaled_ms: (time + 40) * 1000 + 250,
    };
    let known = |c: &CheckpointRequest| LastSignedCheckpoint {
        request: Some(*c),
        ..digest_only(c)
    };
    let matches = SignerCheckpointCheck::Matches { sequence: 3 };
    assert_eq!(store.compare_with_signer(&digest_only(&signed)), matches);
    assert_eq!(store.compare_with_signer(&known(&signed)), matches);

    let other = CheckpointRequest {
        head_hash: [7; 32],
        ..signed
    };
    for last in [digest_only(&other), known(&other)] {
        let check = store.compare_with_signer(&last);
        assert!(
            matches!(check, SignerCheckpointCheck::Differs { sequence: 3, .. }),
            "{check:?}"
        );
        assert!(check.is_failure());
    }

    let beyond = CheckpointRequest {
        sequence: 9,
        ..signed
    };
    let check = store.compare_with_signer(&digest_only(&beyond));
    assert_eq!(
        check,
        SignerCheckpointCheck::LogBehind {
            sequence: 9,
            events: 4
        }
    );
    assert!(
        check
            .message()
            .contains("the signer checkpointed event 9, but the event log ends at event 3"),
        "{}",
        check.message()
    );
}
