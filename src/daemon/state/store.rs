//! Where the journal's [`FILES`] files live: [`DiskStore`] in `session.state_dir`,
//! [`MemStore`] in memory (tests, and a model of what a power loss leaves).
//!
//! The files are written in place at offsets and never renamed or truncated while a run
//! lasts: each is created once at [`PREALLOCATED`] bytes of zeros, so that an fdatasync of
//! a write into it commits one data block and no metadata (an append that grows a file
//! also commits its new size through the file system's journal, several blocks on ext4).
//!
//! Every write covers at most one page. The page cache sizes a folio by the write that
//! creates it (ext4 has large folios since Linux 6.16), and an fdatasync writes back a dirty
//! folio whole: one 80 KiB write of zeros made 64 KiB folios, so each second's fsync of a
//! 30-byte record wrote 64 KiB (4 MB a minute at a steady 10 commands/s, measured).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The granularity of the writes: the smallest page size (4 KiB on x86-64 and the Pi's
/// arm64 kernels; larger pages are multiples of it).
const PAGE: u64 = 4096;

/// The size each journal file is created at.
pub const PREALLOCATED: usize = 80 * 1024;

/// How many files the journal takes turns with: the one being written (the newest state,
/// which SIGKILL must not find half overwritten), the one last fsynced (the state a power
/// loss must not find half overwritten) and one to start afresh in.
pub const FILES: usize = 3;

/// The journal's files, by index `0..FILES`.
pub trait Store {
    /// The whole content of file `i`, `None` when it does not exist.
    fn read(&mut self, i: usize) -> io::Result<Option<Vec<u8>>>;
    /// Writes `bytes` at `offset` of file `i` (created at [`PREALLOCATED`] bytes if need be).
    fn write_at(&mut self, i: usize, offset: u64, bytes: &[u8]) -> io::Result<()>;
    /// Makes what was written to file `i` durable.
    fn sync(&mut self, i: usize) -> io::Result<()>;
    /// Removes the files, durably.
    fn remove(&mut self) -> io::Result<()>;
    /// When file `i` was last written, by the file system's clock.
    fn modified(&self, i: usize) -> Option<SystemTime>;
    /// File `i`'s name, for messages.
    fn name(&self, i: usize) -> String;
}

/// The journal's files in a directory: `journal.0`, `journal.1`, `journal.2`.
#[derive(Debug)]
pub struct DiskStore {
    dir: PathBuf,
    open: [Option<File>; FILES],
}

impl DiskStore {
    /// The files in `dir`.
    pub fn new(dir: &Path) -> DiskStore {
        DiskStore {
            dir: dir.to_owned(),
            open: Default::default(),
        }
    }

    /// File `i`'s path.
    pub fn path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("journal.{i}"))
    }

    fn file(&mut self, i: usize) -> io::Result<&File> {
        if self.open[i].is_none() {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(self.path(i))?;
            let len = usize::try_from(file.metadata()?.len()).unwrap_or(usize::MAX);
            if len < PREALLOCATED {
                // Real zeros, not fallocate: unwritten extents would turn every first write
                // into a block into a metadata change again.
                write_by_page(&file, &vec![0; PREALLOCATED - len], len as u64)?;
                file.sync_all()?;
                self.sync_dir()?;
            }
            self.open[i] = Some(file);
        }
        Ok(self.open[i].as_ref().expect("opened above"))
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }
}

/// Writes `bytes` at `offset` in pieces that each stay within one [`PAGE`] (a record that
/// fits in a page is one write): see the module doc for why.
fn write_by_page(file: &File, mut bytes: &[u8], mut offset: u64) -> io::Result<()> {
    while !bytes.is_empty() {
        let room = (PAGE - offset % PAGE) as usize;
        let (piece, rest) = bytes.split_at(room.min(bytes.len()));
        file.write_all_at(piece, offset)?;
        offset += piece.len() as u64;
        bytes = rest;
    }
    Ok(())
}

impl Store for DiskStore {
    fn read(&mut self, i: usize) -> io::Result<Option<Vec<u8>>> {
        match fs::read(self.path(i)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn write_at(&mut self, i: usize, offset: u64, bytes: &[u8]) -> io::Result<()> {
        write_by_page(self.file(i)?, bytes, offset)
    }

    fn sync(&mut self, i: usize) -> io::Result<()> {
        self.file(i)?.sync_data()
    }

    fn remove(&mut self) -> io::Result<()> {
        self.open = Default::default();
        for i in 0..FILES {
            match fs::remove_file(self.path(i)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        self.sync_dir()
    }

    fn modified(&self, i: usize) -> Option<SystemTime> {
        fs::metadata(self.path(i)).and_then(|m| m.modified()).ok()
    }

    fn name(&self, i: usize) -> String {
        self.path(i).display().to_string()
    }
}

/// The files in memory, with what of them is durable: [`MemStore::power_loss`] leaves
/// what the last syncs made durable.
#[derive(Debug, Clone, Default)]
pub struct MemStore {
    /// What a read sees (the page cache).
    pub files: [Option<Vec<u8>>; FILES],
    /// What the last sync of each made durable.
    pub durable: [Option<Vec<u8>>; FILES],
    /// Writes made, for tests that count them.
    pub writes: usize,
    /// The last write: file, offset, length.
    pub last_write: Option<(usize, usize, usize)>,
}

impl MemStore {
    /// What survives a power loss now: the durable content (a real disk may have written
    /// more of what came after; the journal must resume from either).
    pub fn power_loss(&self) -> MemStore {
        MemStore {
            files: self.durable.clone(),
            durable: self.durable.clone(),
            writes: 0,
            last_write: None,
        }
    }
}

impl Store for MemStore {
    fn read(&mut self, i: usize) -> io::Result<Option<Vec<u8>>> {
        Ok(self.files[i].clone())
    }

    fn write_at(&mut self, i: usize, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let file = self.files[i].get_or_insert_with(|| vec![0; PREALLOCATED]);
        let offset = usize::try_from(offset).unwrap_or(usize::MAX);
        if file.len() < offset + bytes.len() {
            file.resize(offset + bytes.len(), 0);
        }
        file[offset..offset + bytes.len()].copy_from_slice(bytes);
        self.writes += 1;
        self.last_write = Some((i, offset, bytes.len()));
        Ok(())
    }

    fn sync(&mut self, i: usize) -> io::Result<()> {
        self.durable[i].clone_from(&self.files[i]);
        Ok(())
    }

    fn remove(&mut self) -> io::Result<()> {
        *self = MemStore::default();
        Ok(())
    }

    fn modified(&self, i: usize) -> Option<SystemTime> {
        self.files[i].as_ref().map(|_| SystemTime::now())
    }

    fn name(&self, i: usize) -> String {
        format!("journal.{i}")
    }
}
