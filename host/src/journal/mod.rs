//! The host journal: one append-only log of checksummed frames that many writers share, made
//! durable by **group commit** — one `fdatasync` covers every frame written before it, from
//! any writer. It is the first step of issue 15's main lever (commits shared across
//! partitions, so that the fsync count follows the disk, not the partition count); nothing
//! writes through it yet (`BENCHMARKS.md`, journal).
//!
//! Layout: segment files `journal-<first lsn, 20 digits>.log` in one directory. An LSN is a
//! byte position in the concatenation of the segments; a frame's LSN is where it *ends*
//! (what a writer waits for). A frame is `len u32 | crc u32 | stream u64 | synced u64 |
//! payload`, little-endian; the CRC-32 covers `len`, `stream`, `synced` and the payload;
//! `synced` is the journal's durable LSN when the frame was written.
//!
//! Invariants:
//! - [`Journal::sync`] returns `Ok` only once every frame ending at or before its LSN is on
//!   disk (fdatasync of the segment holding it; a full segment is synced before the next one
//!   is started, and the directory after a segment is created or removed);
//! - after a failed write or fsync the journal refuses everything ([`JournalError::Failed`]):
//!   the page cache may have dropped the data, only reopening (recovery) says what is on disk;
//! - recovery ([`Journal::open`]) returns every frame in LSN order and cuts the last segment
//!   at its first frame that fails its check — a torn tail, never acknowledged — unless a
//!   valid frame after it says (by its `synced`) that the bad frame had been made durable:
//!   then it is damage, and opening fails with [`JournalError::Damaged`] naming the segment
//!   and offset. A bad frame in any segment but the last is damage too (each was synced
//!   whole before the next began).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Bytes of a frame before its payload.
pub const FRAME_HEADER_BYTES: usize = 24;
/// The largest payload a frame holds.
pub const FRAME_PAYLOAD_MAX: usize = 64 << 20;

/// How a journal is laid out.
#[derive(Debug, Clone, Copy)]
pub struct JournalConfig {
    /// A segment that reached this size is closed and the next frame starts a new one.
    pub segment_bytes: u64,
}

impl Default for JournalConfig {
    fn default() -> Self {
        Self {
            segment_bytes: 64 << 20,
        }
    }
}

/// One frame read back at recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Where the frame ends.
    pub lsn: u64,
    pub stream: u64,
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JournalError {
    #[error("journal I/O: {0}")]
    Io(String),
    /// Stored frames failed their check where they had been made durable.
    #[error("journal segment {segment} is damaged at offset {offset}: {why}")]
    Damaged {
        segment: String,
        offset: u64,
        why: String,
    },
    /// An earlier write or fsync failed: nothing more is written until the journal is reopened.
    #[error("the journal stopped after a failed write or fsync ({0}); reopen it to recover")]
    Failed(String),
    #[error("a journal frame of {0} bytes is over the {FRAME_PAYLOAD_MAX}-byte limit")]
    TooLarge(usize),
}

fn io(e: std::io::Error) -> JournalError {
    JournalError::Io(e.to_string())
}

/// The segment being written and what is durable.
struct State {
    dir: PathBuf,
    config: JournalConfig,
    /// Segments by first LSN, oldest first; the last is the one written.
    segments: Vec<u64>,
    file: Arc<File>,
    /// The LSN the next frame starts at.
    end: u64,
    /// Every frame ending at or before this is on disk.
    durable: u64,
    /// A writer is in `fdatasync` (the others wait for it, then maybe sync again).
    syncing: bool,
    failed: Option<String>,
}

/// A journal open for appending (see the module docs).
pub struct Journal {
    state: Mutex<State>,
    synced: Condvar,
    /// fdatasyncs made (group commit: fewer than the frames synced).
    syncs: AtomicU64,
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("journal-{first:020}.log"))
}

fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io)
}

fn crc(len: u32, stream: u64, synced: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&len.to_le_bytes());
    h.update(&stream.to_le_bytes());
    h.update(&synced.to_le_bytes());
    h.update(payload);
    h.finalize()
}

fn encode(stream: u64, synced: u64, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = Vec::with_capacity(FRAME_HEADER_BYTES + payload.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc(len, stream, synced, payload).to_le_bytes());
    out.extend_from_slice(&stream.to_le_bytes());
    out.extend_from_slice(&synced.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// A frame that passes its check at `at` of `bytes`: (stream, synced, payload, its length).
fn decode(bytes: &[u8], at: usize) -> Option<(u64, u64, &[u8], usize)> {
    let header = bytes.get(at..at + FRAME_HEADER_BYTES)?;
    let word = |i: usize| u32::from_le_bytes(header[i..i + 4].try_into().unwrap());
    let long = |i: usize| u64::from_le_bytes(header[i..i + 8].try_into().unwrap());
    let (len, stored, stream, synced) = (word(0), word(4), long(8), long(16));
    if len as usize > FRAME_PAYLOAD_MAX {
        return None;
    }
    let start = at + FRAME_HEADER_BYTES;
    let payload = bytes.get(start..start + len as usize)?;
    (crc(len, stream, synced, payload) == stored).then_some((
        stream,
        synced,
        payload,
        FRAME_HEADER_BYTES + len as usize,
    ))
}

/// The frames of one segment starting at LSN `first`, and where its valid part ends. `last`:
/// the segment being written at the crash (a bad frame may be a torn tail there).
fn scan(path: &Path, first: u64, last: bool, frames: &mut Vec<Frame>) -> Result<u64, JournalError> {
    let bytes = std::fs::read(path).map_err(io)?;
    let damaged = |offset: usize, why: String| JournalError::Damaged {
        segment: path.display().to_string(),
        offset: offset as u64,
        why,
    };
    let mut at = 0;
    while at < bytes.len() {
        let Some((stream, synced, payload, n)) = decode(&bytes, at) else {
            if !last {
                return Err(damaged(at, "a frame fails its check".into()));
            }
            // A torn tail unless a later frame says this one was durable.
            let bad = first + at as u64;
            if let Some(later) = (at + 1..bytes.len())
                .filter_map(|i| decode(&bytes, i).map(|(_, synced, _, _)| synced))
                .find(|synced| *synced > bad)
            {
                return Err(damaged(
                    at,
                    format!("a frame fails its check though a later one says the journal was durable to {later}"),
                ));
            }
            return Ok(bad);
        };
        let lsn = first + (at + n) as u64;
        if synced > lsn - n as u64 {
            return Err(damaged(
                at,
                format!("a frame claims the journal durable to {synced}, past its own start"),
            ));
        }
        frames.push(Frame {
            lsn,
            stream,
            payload: payload.to_vec(),
        });
        at += n;
    }
    Ok(first + at as u64)
}

impl Journal {
    /// Opens (or creates) the journal in `dir`: every frame stored, in LSN order, and the
    /// journal ready to append after the last one (a torn tail cut off; see the module docs).
    pub fn open(dir: &Path, config: JournalConfig) -> Result<(Self, Vec<Frame>), JournalError> {
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut segments: Vec<u64> = std::fs::read_dir(dir)
            .map_err(io)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_prefix("journal-")?
                    .strip_suffix(".log")?
                    .parse()
                    .ok()
            })
            .collect();
        segments.sort_unstable();
        let mut frames = Vec::new();
        let mut end = segments.first().copied().unwrap_or(0);
        for (i, &first) in segments.iter().enumerate() {
            if first != end {
                return Err(JournalError::Damaged {
                    segment: segment_path(dir, first).display().to_string(),
                    offset: 0,
                    why: format!("the segment before it ends at {end}"),
                });
            }
            end = scan(
                &segment_path(dir, first),
                first,
                i + 1 == segments.len(),
                &mut frames,
            )?;
        }
        if segments.is_empty() {
            segments.push(0);
        }
        let current = *segments.last().expect("one segment");
        let path = segment_path(dir, current);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io)?;
        // Cut the torn tail, and make the cut (and a new file) durable before appending.
        file.set_len(end - current).map_err(io)?;
        file.sync_all().map_err(io)?;
        sync_dir(dir)?;
        let mut file = file;
        std::io::Seek::seek(&mut file, std::io::SeekFrom::End(0)).map_err(io)?;
        let state = State {
            dir: dir.to_path_buf(),
            config,
            segments,
            file: Arc::new(file),
            end,
            durable: end,
            syncing: false,
            failed: None,
        };
        Ok((
            Self {
                state: Mutex::new(state),
                synced: Condvar::new(),
                syncs: AtomicU64::new(0),
            },
            frames,
        ))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("poisoned")
    }

    /// Writes one frame of `stream` (not yet durable: see [`Self::sync`]); returns its LSN.
    pub fn append(&self, stream: u64, payload: &[u8]) -> Result<u64, JournalError> {
        if payload.len() > FRAME_PAYLOAD_MAX {
            return Err(JournalError::TooLarge(payload.len()));
        }
        let mut s = self.lock();
        if let Some(why) = &s.failed {
            return Err(JournalError::Failed(why.clone()));
        }
        let frame = encode(stream, s.durable, payload);
        let first = *s.segments.last().expect("one segment");
        if s.end > first && s.end - first + frame.len() as u64 > s.config.segment_bytes {
            self.roll(&mut s)?;
        }
        if let Err(e) = (&*s.file).write_all(&frame) {
            s.failed = Some(e.to_string());
            return Err(io(e));
        }
        s.end += frame.len() as u64;
        Ok(s.end)
    }

    /// Closes the current segment (synced whole first) and starts the next at the end.
    fn roll(&self, s: &mut State) -> Result<(), JournalError> {
        let fail = |s: &mut State, e: std::io::Error| {
            s.failed = Some(e.to_string());
            io(e)
        };
        if let Err(e) = s.file.sync_data() {
            return Err(fail(s, e));
        }
        s.durable = s.end;
        let path = segment_path(&s.dir, s.end);
        let file = match OpenOptions::new().create_new(true).write(true).open(&path) {
            Ok(f) => f,
            Err(e) => return Err(fail(s, e)),
        };
        s.file = Arc::new(file);
        s.segments.push(s.end);
        sync_dir(&s.dir).inspect_err(|e| s.failed = Some(e.to_string()))?;
        self.synced.notify_all();
        Ok(())
    }

    /// Returns once every frame ending at or before `lsn` is durable. Writers that call it
    /// together share one fdatasync: the first syncs everything written so far while the
    /// others wait, and a writer whose frame came after that sync began syncs again.
    pub fn sync(&self, lsn: u64) -> Result<(), JournalError> {
        let mut s = self.lock();
        loop {
            if let Some(why) = &s.failed {
                return Err(JournalError::Failed(why.clone()));
            }
            if s.durable >= lsn {
                return Ok(());
            }
            if s.syncing {
                s = self.synced.wait(s).expect("poisoned");
                continue;
            }
            s.syncing = true;
            let (file, target) = (Arc::clone(&s.file), s.end);
            drop(s);
            let synced = file.sync_data();
            self.syncs.fetch_add(1, Ordering::Relaxed);
            s = self.lock();
            s.syncing = false;
            match synced {
                Ok(()) => s.durable = s.durable.max(target),
                Err(e) => s.failed = Some(e.to_string()),
            }
            self.synced.notify_all();
        }
    }

    /// [`Self::append`], then [`Self::sync`] to its LSN.
    pub fn append_durable(&self, stream: u64, payload: &[u8]) -> Result<u64, JournalError> {
        let lsn = self.append(stream, payload)?;
        self.sync(lsn)?;
        Ok(lsn)
    }

    /// fdatasyncs made so far by [`Self::sync`].
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// Every frame ending at or before this is durable.
    pub fn durable(&self) -> u64 {
        self.lock().durable
    }

    /// Removes the segments that end at or before `lsn` (their frames are no longer needed),
    /// never the one being written.
    pub fn release(&self, lsn: u64) -> Result<(), JournalError> {
        let mut s = self.lock();
        let mut removed = false;
        while s.segments.len() > 1 && s.segments[1] <= lsn {
            let first = s.segments.remove(0);
            std::fs::remove_file(segment_path(&s.dir, first)).map_err(io)?;
            removed = true;
        }
        if removed {
            sync_dir(&s.dir)?;
        }
        Ok(())
    }

    /// The segments kept, by first LSN.
    pub fn segments(&self) -> Vec<u64> {
        self.lock().segments.clone()
    }
}

#[cfg(test)]
mod tests;
