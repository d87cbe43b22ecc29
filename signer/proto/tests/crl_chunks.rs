//! Splitting a large CRL's entries into frames: every chunk's frame fits
//! well under `MAX_PAYLOAD` whatever the entries, the chunks are the entries
//! in order, and a CRL that fits one frame stays one chunk.

use castellan_proto::frame::MAX_PAYLOAD;
use castellan_proto::*;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

fn entry(serial_len: usize, revoked_at: i64, invalidity: Option<i64>) -> CrlEntry {
    CrlEntry {
        serial: vec![0xa5; serial_len],
        revoked_at,
        reason: Some(RevocationReason::AaCompromise),
        invalidity_date: invalidity,
    }
}

fn stage_frame_len(entries: &[CrlEntry]) -> usize {
    encode_frame(&RequestFrame {
        id: u64::MAX,
        request: Request::StageCrlEntries(CrlChunk {
            issuer: "x".repeat(63),
            crl_number: u64::MAX,
            offset: u64::MAX,
            entries: entries.to_vec().into(),
        }),
    })
    .expect("a chunk's frame encodes")
    .len()
}

fn chunk(entries: CrlEntryList) -> Vec<u8> {
    encode_frame(&RequestFrame {
        id: 7,
        request: Request::StageCrlEntries(CrlChunk {
            issuer: "issuing".into(),
            crl_number: 9,
            offset: 100,
            entries,
        }),
    })
    .expect("a chunk's frame encodes")
}

#[test]
fn a_shared_range_travels_exactly_as_a_copy_of_it_would() {
    let all: Vec<CrlEntry> = (0..300)
        .map(|i| {
            entry(
                1 + (i % 20) as usize,
                1_767_000_000 + i,
                (i % 3 == 0).then_some(i),
            )
        })
        .collect();
    let shared = std::sync::Arc::new(all.clone());
    for (from, to) in [(0, 300), (100, 250), (299, 300), (7, 7)] {
        let range = CrlEntryList::shared(shared.clone(), from..to);
        let copy = CrlEntryList::from(all[from..to].to_vec());
        assert_eq!(range, copy);
        let frame = chunk(range);
        assert_eq!(frame, chunk(copy), "{from}..{to}");
        match decode_frame::<RequestFrame>(&frame)
            .expect("decodes")
            .request
        {
            Request::StageCrlEntries(c) => assert_eq!(&c.entries[..], &all[from..to]),
            other => panic!("decoded as {other:?}"),
        }
    }
    // A range beyond the list is cut at its end.
    assert_eq!(CrlEntryList::shared(shared.clone(), 250..400).len(), 50);
    assert!(CrlEntryList::shared(shared, 400..500).is_empty());
}

#[test]
fn a_crl_that_fits_one_frame_is_one_chunk_and_an_empty_one_too() {
    let entries: Vec<CrlEntry> = (0..1000).map(|i| entry(16, i, None)).collect();
    assert_eq!(crl_chunks(&entries), vec![&entries[..]]);
    assert_eq!(crl_chunks(&[]), vec![&[][..]]);
}

#[test]
fn the_largest_entries_the_signer_accepts_still_fit_a_frame_per_chunk() {
    // 20-octet serials and the longest varints: the worst a real CRL sends.
    let entries: Vec<CrlEntry> = (0..450_000)
        .map(|i| entry(20, i64::MIN + i, Some(i64::MAX - i)))
        .collect();
    let chunks = crl_chunks(&entries);
    assert!(chunks.len() >= 3, "{} chunks", chunks.len());
    let mut rejoined = Vec::new();
    for c in &chunks {
        assert!(!c.is_empty());
        assert!(c.len() <= CRL_CHUNK_ENTRIES);
        let len = stage_frame_len(c);
        assert!(
            len <= CRL_CHUNK_OCTETS + 1024,
            "a chunk of {} entries takes {len} octets",
            c.len()
        );
        assert!(len < MAX_PAYLOAD as usize / 2 + 1024);
        rejoined.extend_from_slice(c);
    }
    assert_eq!(rejoined, entries, "the chunks are the entries, in order");
}

#[test]
fn typical_entries_are_split_by_count() {
    let entries: Vec<CrlEntry> = (0..450_000)
        .map(|i| entry(16, 1_767_000_000 + i, None))
        .collect();
    let sizes: Vec<usize> = crl_chunks(&entries).iter().map(|c| c.len()).collect();
    assert_eq!(sizes, vec![200_000, 200_000, 50_000]);
}

#[test]
fn an_entry_larger_than_a_chunk_travels_alone() {
    let entries = vec![
        entry(3, 0, None),
        entry(CRL_CHUNK_OCTETS + 10, 0, None),
        entry(3, 0, None),
    ];
    let sizes: Vec<usize> = crl_chunks(&entries).iter().map(|c| c.len()).collect();
    assert_eq!(sizes, vec![1, 1, 1]);
}

fn any_entry() -> impl Strategy<Value = CrlEntry> {
    (
        vec(any::<u8>(), 0..300),
        any::<i64>(),
        option::of(proptest::sample::select(RevocationReason::ALL.to_vec())),
        option::of(any::<i64>()),
    )
        .prop_map(|(serial, revoked_at, reason, invalidity_date)| CrlEntry {
            serial,
            revoked_at,
            reason,
            invalidity_date,
        })
}

proptest! {
    #[test]
    fn the_encoded_length_of_an_entry_is_exact(e in any_entry()) {
        prop_assert_eq!(
            crl_entry_encoded_len(&e),
            postcard::to_stdvec(&e).expect("encode").len()
        );
    }
}
