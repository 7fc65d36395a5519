//! The journal's contract: frames back in order after reopening, segments rolled and
//! released, a torn tail cut, damage where a frame was durable refused, and writers that
//! sync together sharing fsyncs.

use super::*;

fn small() -> JournalConfig {
    JournalConfig { segment_bytes: 256 }
}

fn payload(i: u64) -> Vec<u8> {
    format!("record {i}").into_bytes()
}

fn reopen(dir: &Path) -> (Journal, Vec<Frame>) {
    Journal::open(dir, small()).unwrap()
}

/// Flips one byte of the frame ending at `lsn` (of `len` payload bytes) on disk.
fn damage(dir: &Path, lsn: u64, len: usize) {
    let first = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_prefix("journal-")?
                .strip_suffix(".log")?
                .parse::<u64>()
                .ok()
        })
        .filter(|first| *first < lsn)
        .max()
        .unwrap();
    let path = segment_path(dir, first);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = (lsn - first) as usize - len - 1;
    bytes[at] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();
}

/// Every frame written comes back after reopening, in order, with its stream and LSN, over
/// several segments; a reopened journal appends after the last frame; released segments
/// are gone and the rest still read.
#[test]
fn frames_come_back_in_order_over_segments_and_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let (j, frames) = reopen(dir.path());
    assert!(frames.is_empty());
    let mut written = Vec::new();
    for i in 0..40 {
        let lsn = j.append_durable(i % 3, &payload(i)).unwrap();
        written.push(Frame {
            lsn,
            stream: i % 3,
            payload: payload(i),
        });
    }
    assert!(j.segments().len() > 3, "{:?}", j.segments());
    assert_eq!(j.durable(), written.last().unwrap().lsn);
    drop(j);
    let (j, frames) = reopen(dir.path());
    assert_eq!(frames, written);
    let lsn = j.append_durable(7, b"after").unwrap();
    drop(j);
    let (j, frames) = reopen(dir.path());
    assert_eq!(frames.len(), 41);
    assert_eq!(
        frames.last().unwrap(),
        &Frame {
            lsn,
            stream: 7,
            payload: b"after".to_vec()
        }
    );
    // Release everything before frame 20: whole segments ending at or before it go.
    let cut = written[20].lsn;
    let before = j.segments();
    j.release(cut).unwrap();
    let after = j.segments();
    assert!(after.len() < before.len(), "{before:?} → {after:?}");
    assert!(after[0] <= cut);
    drop(j);
    let (_, frames) = reopen(dir.path());
    assert!(frames.iter().all(|f| f.lsn > after[0]));
    let needed: Vec<&Frame> = written.iter().filter(|f| f.lsn > cut).collect();
    assert!(
        needed.iter().all(|f| frames.contains(f)),
        "a frame after the cut is gone"
    );
    assert_eq!(frames.last().unwrap().lsn, lsn);
}

/// A crash that tore frames written after the last sync: the journal reopens at the last
/// intact frame before the tear, dropping the torn one and any written after it (none of
/// them was durable, so none was acknowledged), and appends from there.
#[test]
fn a_torn_tail_is_cut_at_its_first_bad_frame() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(dir.path(), JournalConfig::default()).unwrap();
    let a = j.append_durable(1, b"durable").unwrap();
    let b = j.append(1, b"torn").unwrap();
    let _c = j.append(1, b"after the tear").unwrap();
    drop(j);
    damage(dir.path(), b, b"torn".len());
    let (j, frames) = Journal::open(dir.path(), JournalConfig::default()).unwrap();
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].lsn, a);
    let next = j.append_durable(2, b"next").unwrap();
    assert_eq!(next, a + (FRAME_HEADER_BYTES + 4) as u64);
    drop(j);
    let (_, frames) = Journal::open(dir.path(), JournalConfig::default()).unwrap();
    assert_eq!(frames.len(), 2);
    assert_eq!(frames[1].payload, b"next");
    // A tail shorter than a frame header is cut too.
    let path = segment_path(dir.path(), 0);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(&[1, 2, 3]);
    std::fs::write(&path, bytes).unwrap();
    let (_, frames) = Journal::open(dir.path(), JournalConfig::default()).unwrap();
    assert_eq!(frames.len(), 2);
}

/// A bad frame that a later frame says was durable is damage, not a torn tail: opening
/// refuses, naming the segment and offset, instead of silently dropping acknowledged frames.
#[test]
fn a_bad_frame_that_was_durable_is_damage() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(dir.path(), JournalConfig::default()).unwrap();
    j.append_durable(1, b"first").unwrap();
    let acked = j.append_durable(1, b"acknowledged").unwrap();
    j.append_durable(1, b"later").unwrap();
    drop(j);
    damage(dir.path(), acked, b"acknowledged".len());
    let e = Journal::open(dir.path(), JournalConfig::default())
        .err()
        .expect("damage refused");
    let JournalError::Damaged {
        segment, offset, ..
    } = &e
    else {
        panic!("{e}");
    };
    assert!(segment.ends_with("journal-00000000000000000000.log"), "{e}");
    assert_eq!(*offset, (FRAME_HEADER_BYTES + 5) as u64, "{e}");
}

/// A bad frame in a segment that is not the last is damage (each was synced whole before
/// the next began), wherever it is.
#[test]
fn a_bad_frame_in_a_closed_segment_is_damage() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = reopen(dir.path());
    let mut lsns = Vec::new();
    for i in 0..20 {
        lsns.push(j.append(1, &payload(i)).unwrap());
    }
    j.sync(*lsns.last().unwrap()).unwrap();
    assert!(j.segments().len() >= 3);
    drop(j);
    // The last frame of the first segment.
    let second = reopen(dir.path()).0.segments()[1];
    let i = lsns.iter().rposition(|l| *l <= second).unwrap();
    damage(dir.path(), lsns[i], payload(i as u64).len());
    assert!(matches!(
        Journal::open(dir.path(), small()),
        Err(JournalError::Damaged { .. })
    ));
}

/// Writers that sync at the same time share fsyncs: every frame is durable when its
/// writer's sync returns, and the journal made fewer fsyncs than it took frames.
#[test]
fn writers_syncing_together_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(dir.path(), JournalConfig::default()).unwrap();
    let j = Arc::new(j);
    const WRITERS: u64 = 8;
    const EACH: u64 = 100;
    let threads: Vec<_> = (0..WRITERS)
        .map(|w| {
            let j = Arc::clone(&j);
            std::thread::spawn(move || {
                for i in 0..EACH {
                    let lsn = j.append_durable(w, &payload(i)).unwrap();
                    assert!(j.durable() >= lsn);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let syncs = j.syncs();
    assert!(
        syncs < WRITERS * EACH,
        "{syncs} fsyncs for {} frames",
        WRITERS * EACH
    );
    drop(j);
    let (_, frames) = Journal::open(dir.path(), JournalConfig::default()).unwrap();
    assert_eq!(frames.len() as u64, WRITERS * EACH);
    for w in 0..WRITERS {
        let mine: Vec<_> = frames
            .iter()
            .filter(|f| f.stream == w)
            .map(|f| f.payload.clone())
            .collect();
        assert_eq!(mine, (0..EACH).map(payload).collect::<Vec<_>>());
    }
}

/// A frame over the size limit is refused before anything is written.
#[test]
fn an_oversized_frame_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(dir.path(), JournalConfig::default()).unwrap();
    let big = vec![0u8; FRAME_PAYLOAD_MAX + 1];
    assert_eq!(
        j.append(1, &big),
        Err(JournalError::TooLarge(FRAME_PAYLOAD_MAX + 1))
    );
    assert_eq!(j.append_durable(1, b"ok").unwrap(), 26);
}
