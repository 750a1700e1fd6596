//! Writing a filesystem entry into a tar as containerd's archive package
//! does: directories with a trailing `/`, symlinks with their target, the
//! second and later names of a multiply-linked file as hard links to the
//! first, regular files read to exactly the size they had when stat'ed,
//! device nodes and FIFOs with their numbers, sockets left out. Shared by
//! the differ's layer writer and the runtime's checkpoint writer, which
//! differ only in the header format they start from and in what they write
//! before an entry (the differ's xattr PAX records).

use std::collections::HashMap;
use std::fs::{self, File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// Appends filesystem entries to a tar, remembering multiply-linked files.
pub struct EntryWriter<W: Write> {
    pub tar: tar::Builder<W>,
    /// (dev, ino) of files with more than one link, by the first name
    /// written.
    links: HashMap<(u64, u64), String>,
}

/// What failed while appending an entry: the operation (`"readlink"`,
/// `"open"`, `"write"`) and its error, for the caller to put in context.
pub type EntryError = (&'static str, io::Error);

impl<W: Write> EntryWriter<W> {
    pub fn new(out: W) -> Self {
        EntryWriter { tar: tar::Builder::new(out), links: HashMap::new() }
    }

    /// Appends the entry at `path` (stat'ed as `meta`) under the name
    /// `rel`. `header` is the format to use (ustar or GNU); its mode,
    /// owner, times, type and size are set here.
    pub fn append(&mut self, mut h: tar::Header, rel: &str, path: &Path, meta: &Metadata) -> Result<(), EntryError> {
        let write = |e| ("write", e);
        h.set_mode(meta.mode() & 0o7777);
        h.set_uid(meta.uid().into());
        h.set_gid(meta.gid().into());
        h.set_mtime(meta.mtime().max(0) as u64);
        h.set_size(0);
        let ft = meta.file_type();
        if ft.is_dir() {
            h.set_entry_type(tar::EntryType::Directory);
            return self.tar.append_data(&mut h, format!("{rel}/"), io::empty()).map_err(write);
        }
        if ft.is_symlink() {
            h.set_entry_type(tar::EntryType::Symlink);
            let target = fs::read_link(path).map_err(|e| ("readlink", e))?;
            return self.tar.append_link(&mut h, rel, target).map_err(write);
        }
        if ft.is_file() {
            if meta.nlink() > 1 {
                let key = (meta.dev(), meta.ino());
                if let Some(first) = self.links.get(&key).cloned() {
                    h.set_entry_type(tar::EntryType::Link);
                    return self.tar.append_link(&mut h, rel, first).map_err(write);
                }
                self.links.insert(key, rel.to_string());
            }
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(meta.size());
            let file = File::open(path).map_err(|e| ("open", e))?;
            // A file that changes size while it is read fails the write
            // instead of giving a short or padded entry.
            return self.tar.append_data(&mut h, rel, &mut file.take(meta.size())).map_err(write);
        }
        let (kind, dev) = if ft.is_char_device() {
            (tar::EntryType::Char, meta.rdev())
        } else if ft.is_block_device() {
            (tar::EntryType::Block, meta.rdev())
        } else if ft.is_fifo() {
            (tar::EntryType::Fifo, 0)
        } else {
            // Sockets are left out, as containerd leaves them out.
            return Ok(());
        };
        h.set_entry_type(kind);
        h.set_device_major(rustix::fs::major(dev)).map_err(write)?;
        h.set_device_minor(rustix::fs::minor(dev)).map_err(write)?;
        self.tar.append_data(&mut h, rel, io::empty()).map_err(write)
    }
}
