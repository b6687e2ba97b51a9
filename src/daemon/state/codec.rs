//! The journal's bytes: a file header, then frames, then a terminator.
//!
//! ```text
//! file     = magic "MQRJ" | version u16 LE | 2 reserved bytes | frame* | 0u32
//! frame    = len u32 LE | crc32 u32 LE | epoch u64 LE | kind u8 | body (len - 1 bytes)
//! ```
//!
//! The CRC covers the epoch, the kind and the body. The first frame of a file is a snapshot;
//! the frames after it carry its epoch. Every write ends with the terminator (a zero length)
//! and the next write starts on it, so a whole file always ends in one: anything else where
//! a frame should start is a write cut short (SIGKILL in a large write, power loss) or
//! damage, and what comes before it is still whole.

/// Identifies a journal file.
const MAGIC: &[u8; 4] = b"MQRJ";
/// Format version; a file of another version is not read.
pub const VERSION: u16 = 2;
/// Bytes before the first frame.
pub const HEADER_LEN: usize = 8;
/// Bytes of a frame before its body.
const FRAME_HEAD: usize = 17;
/// The zero length that ends what has been written.
pub const TERMINATOR: [u8; 4] = [0; 4];

/// What a frame holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The whole state: every file starts with one.
    Snapshot = 0,
    /// What changed since the frame before.
    Changes = 1,
}

/// Appends the file header to `out`.
pub fn write_header(out: &mut Vec<u8>) {
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&[0, 0]);
}

/// Appends a frame of `kind` and `epoch` to `out`, its body written by `body` (which
/// appends to the vector it is given).
pub fn write_frame<E>(
    out: &mut Vec<u8>,
    kind: Kind,
    epoch: u64,
    body: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
) -> Result<(), E> {
    let start = out.len();
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&epoch.to_le_bytes());
    out.push(kind as u8);
    body(out)?;
    let len = u32::try_from(out.len() - start - (FRAME_HEAD - 1)).unwrap_or(u32::MAX);
    let crc = crc32fast::hash(&out[start + 8..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// A whole frame read back.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Its epoch.
    pub epoch: u64,
    /// Its kind.
    pub kind: Kind,
    /// Its body.
    pub body: &'a [u8],
}

/// How the frames of a file ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Tail {
    /// On the terminator: the file is whole.
    Clean,
    /// On bytes that are not a whole frame of the file's epoch, at this offset.
    Damaged(usize),
    /// The file ends without a terminator, at this offset.
    Cut(usize),
}

/// Why a file is not a journal at all.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotAJournal {
    /// Too short, or the wrong magic.
    #[error("not a journal file")]
    Magic,
    /// Another format version.
    #[error("journal format version {0}, expected {VERSION}")]
    Version(u16),
}

/// Reads a file's frames: the whole ones from the start that share the first one's epoch,
/// and how they ended.
pub fn read(bytes: &[u8]) -> Result<(Vec<Frame<'_>>, Tail), NotAJournal> {
    if bytes.len() < HEADER_LEN || &bytes[..4] != MAGIC {
        return Err(NotAJournal::Magic);
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if version != VERSION {
        return Err(NotAJournal::Version(version));
    }
    let mut frames: Vec<Frame<'_>> = Vec::new();
    let mut at = HEADER_LEN;
    loop {
        let Some(len) = bytes.get(at..at + 4) else {
            return Ok((frames, Tail::Cut(at)));
        };
        let len = u32::from_le_bytes(len.try_into().unwrap_or_default()) as usize;
        if len == 0 {
            return Ok((frames, Tail::Clean));
        }
        let end = at.saturating_add(FRAME_HEAD - 1).saturating_add(len);
        let Some(frame) = bytes.get(at..end) else {
            return Ok((frames, Tail::Damaged(at)));
        };
        let crc = u32::from_le_bytes(frame[4..8].try_into().unwrap_or_default());
        let epoch = u64::from_le_bytes(frame[8..16].try_into().unwrap_or_default());
        let kind = match frame[16] {
            0 => Kind::Snapshot,
            1 => Kind::Changes,
            _ => return Ok((frames, Tail::Damaged(at))),
        };
        let in_epoch = frames.first().map_or(kind == Kind::Snapshot, |first| {
            first.epoch == epoch && kind == Kind::Changes
        });
        if crc32fast::hash(&frame[8..]) != crc || !in_epoch {
            return Ok((frames, Tail::Damaged(at)));
        }
        frames.push(Frame {
            epoch,
            kind,
            body: &frame[FRAME_HEAD..],
        });
        at = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(frames: &[(Kind, u64, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        write_header(&mut out);
        for (kind, epoch, body) in frames {
            write_frame(&mut out, *kind, *epoch, |out| {
                out.extend_from_slice(body);
                Ok::<(), ()>(())
            })
            .unwrap();
        }
        out.extend_from_slice(&TERMINATOR);
        out
    }

    #[test]
    fn frames_read_back_up_to_the_terminator() {
        let mut bytes = file(&[
            (Kind::Snapshot, 7, b"state"),
            (Kind::Changes, 7, b""),
            (Kind::Changes, 7, b"more"),
        ]);
        // What lies beyond the terminator (an earlier epoch's frames) is not read.
        bytes.extend_from_slice(&file(&[(Kind::Changes, 7, b"stale")])[HEADER_LEN..]);
        let (frames, tail) = read(&bytes).unwrap();
        assert_eq!(tail, Tail::Clean);
        let bodies: Vec<&[u8]> = frames.iter().map(|f| f.body).collect();
        assert_eq!(bodies, [&b"state"[..], b"", b"more"]);
        assert!(frames.iter().all(|f| f.epoch == 7));
        assert_eq!(frames[0].kind, Kind::Snapshot);
    }

    #[test]
    fn a_cut_or_damaged_frame_ends_the_whole_ones_before_it() {
        let whole = file(&[(Kind::Snapshot, 1, b"state"), (Kind::Changes, 1, b"change")]);
        let second = HEADER_LEN + FRAME_HEAD + 5;
        // Cut anywhere inside the second frame or its terminator.
        for cut in second..whole.len() {
            let (frames, tail) = read(&whole[..cut]).unwrap();
            assert_eq!(
                frames.len(),
                usize::from(cut >= whole.len() - 4) + 1,
                "cut at {cut}"
            );
            assert!(
                matches!(tail, Tail::Cut(_) | Tail::Damaged(_)),
                "cut at {cut}"
            );
        }
        // Any flipped byte of the second frame.
        for i in second..whole.len() - 4 {
            let mut bytes = whole.clone();
            bytes[i] ^= 0x55;
            let (frames, tail) = read(&bytes).unwrap();
            assert_eq!(frames.len(), 1, "flip at {i}");
            assert_eq!(tail, Tail::Damaged(second), "flip at {i}");
        }
        // Garbage where the terminator was.
        let mut bytes = whole[..whole.len() - 4].to_vec();
        bytes.extend_from_slice(b"\xde\xad\xbe\xef garbage");
        assert_eq!(read(&bytes).unwrap().1, Tail::Damaged(whole.len() - 4));
    }

    #[test]
    fn a_frame_of_another_epoch_or_a_second_snapshot_is_not_part_of_the_file() {
        let bytes = file(&[(Kind::Snapshot, 2, b"s"), (Kind::Changes, 1, b"old")]);
        let (frames, tail) = read(&bytes).unwrap();
        assert_eq!(frames.len(), 1);
        assert!(matches!(tail, Tail::Damaged(_)));
        let bytes = file(&[(Kind::Snapshot, 2, b"s"), (Kind::Snapshot, 2, b"s")]);
        assert_eq!(read(&bytes).unwrap().0.len(), 1);
        let bytes = file(&[(Kind::Changes, 2, b"no snapshot first")]);
        assert!(read(&bytes).unwrap().0.is_empty());
    }

    #[test]
    fn other_files_and_versions_are_not_journals() {
        assert_eq!(read(b"MQR"), Err(NotAJournal::Magic));
        assert_eq!(read(b"{\"version\":1}"), Err(NotAJournal::Magic));
        let mut bytes = file(&[]);
        bytes[4] = 9;
        assert_eq!(read(&bytes), Err(NotAJournal::Version(9)));
    }
}
