//! `ctr install REF`: containerd 1.6's `ctr install` (`Client.Install`).
//! The image's manifest for this platform is read through the daemon's
//! Images and Content services; each layer is streamed (gzip, zstd or plain
//! tar, by its magic bytes) through a bounded channel into one blocking
//! thread that walks the tar and installs the direct children of `bin/`
//! (and `lib/` with `--libs`) into `<path>/bin` and `<path>/lib`, with their
//! modes, owners and mtimes.
//!
//! What differs from containerd, on purpose: a name that is absolute or
//! has a `..` component is refused (containerd cleans it inside the
//! root); whiteouts are ignored (an image cannot delete host files); a file
//! an earlier layer of the same install wrote may be replaced by a later
//! layer without `--replace`; and every file is written under a temporary
//! name and renamed into place (atomically, so a running binary can be
//! replaced, and without `--replace` with `RENAME_NOREPLACE`, so a file
//! that appears meanwhile is not overwritten). Nothing is ever written
//! through a symlink: entries are created relative to a directory fd and
//! never follow their last component.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use clap::Args;
use containerd_client::services::v1::{PluginsRequest, ReadContentRequest};
use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags, Timespec, Timestamps};

use super::image_ops::{self, Manifest};
use super::images::Desc;
use super::GlobalArgs;
use crate::client::Client;
use crate::errdefs;

/// containerd's opt plugin's default path, used when the daemon exports
/// none (crated has no opt plugin).
pub const DEFAULT_PATH: &str = "/opt/containerd";
/// Chunks of a layer in flight between the gRPC stream and the tar walker.
const CHUNKS_IN_FLIGHT: usize = 8;

#[derive(Debug, Args)]
pub struct InstallArgs {
    /// Install libs from the image
    #[arg(short = 'l', long)]
    pub libs: bool,
    /// Replace any binaries or libs in the opt directory
    #[arg(short = 'r', long)]
    pub replace: bool,
    /// Set an optional install path other than the managed opt directory
    #[arg(long, default_value = "")]
    pub path: String,
    /// The image to install from
    #[arg(value_name = "REF")]
    pub reference: Option<String>,
}

/// Why an install stopped.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    // containerd's text for an existing file without --replace.
    #[error("cannot replace {name} in {root}")]
    AlreadyExists { name: String, root: String },
    #[error("refusing layer entry {0:?}: absolute or with a `..` component")]
    HostileName(String),
    #[error("hard link {name:?}: its target {target:?} is not a file this install wrote")]
    LinkTarget { name: String, target: String },
    #[error("{what} {}: {source}", path.display())]
    Io { what: &'static str, path: PathBuf, source: io::Error },
    #[error("reading the layer: {0}")]
    Layer(io::Error),
}

pub async fn run(global: &GlobalArgs, args: InstallArgs) -> anyhow::Result<()> {
    let client = global.client().await?;
    let name = args.reference.clone().unwrap_or_default();
    let image = super::images::get_image(&client, &name).await?;
    let root = if args.path.is_empty() { opt_path(&client).await? } else { PathBuf::from(&args.path) };
    let target = image.target.unwrap_or_default();
    let Manifest { layers, .. } = image_ops::manifest(&client, &target, &image_ops::default_platform()).await?;
    let mut installer = Some(Installer::new(root, args.libs, args.replace));
    for layer in &layers {
        let taken = installer.take().expect("the installer comes back after each layer");
        installer = Some(install_layer(&client, layer, taken).await?);
    }
    Ok(())
}

/// The opt plugin's exported `path` (containerd's `getInstallPath`), or
/// containerd's default when the daemon has no opt plugin.
async fn opt_path(client: &Client) -> anyhow::Result<PathBuf> {
    let req = client.request(PluginsRequest { filters: vec!["id==opt".to_string()] });
    let resp = client.call(client.introspection().plugins(req)).await.map_err(|s| errdefs::from_grpc(&s))?;
    match resp.plugins.as_slice() {
        [p] => match p.exports.get("path") {
            Some(path) if !path.is_empty() => Ok(PathBuf::from(path)),
            _ => anyhow::bail!("opt path not exported"),
        },
        _ => Ok(PathBuf::from(DEFAULT_PATH)),
    }
}

/// Streams one layer blob into the installer on a blocking thread, and
/// hands the installer back for the next layer.
async fn install_layer(client: &Client, layer: &Desc, installer: Installer) -> anyhow::Result<Installer> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(CHUNKS_IN_FLIGHT);
    let walker = tokio::task::spawn_blocking(move || {
        let mut installer = installer;
        let result = installer.apply(ChannelReader { rx, chunk: Vec::new(), pos: 0 });
        (installer, result)
    });
    let req = ReadContentRequest { digest: layer.digest.clone(), offset: 0, size: 0 };
    let streamed: anyhow::Result<()> = async {
        let mut stream =
            client.call(client.content().read(client.request(req))).await.map_err(|s| image_ops::grpc_error(&s))?;
        while let Some(msg) = client.recv(&mut stream).await.map_err(|s| errdefs::from_grpc(&s))? {
            if tx.send(msg.data).await.is_err() {
                break; // the walker stopped: its error says why
            }
        }
        Ok(())
    }
    .await;
    drop(tx);
    let (installer, applied) = walker.await?;
    applied?;
    streamed?;
    Ok(installer)
}

/// The layer's bytes as a `Read`, fed chunk by chunk from the gRPC stream.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            match self.rx.blocking_recv() {
                Some(c) => {
                    self.chunk = c;
                    self.pos = 0;
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// containerd's `compression.DecompressStream`: by magic bytes.
fn decompressed<'a>(r: impl Read + 'a) -> io::Result<Box<dyn Read + 'a>> {
    let mut r = BufReader::with_capacity(64 << 10, r);
    let head = r.fill_buf()?;
    Ok(if head.starts_with(&[0x1f, 0x8b, 0x08]) {
        Box::new(flate2::read::MultiGzDecoder::new(r))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(r)?)
    } else {
        Box::new(r)
    })
}

/// Which of the two install directories an entry goes to.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Dir {
    Bin,
    Lib,
}

impl Dir {
    fn name(self) -> &'static str {
        match self {
            Dir::Bin => "bin",
            Dir::Lib => "lib",
        }
    }
}

/// Installs entries of layer tars under one root.
pub struct Installer {
    root: PathBuf,
    libs: bool,
    replace: bool,
    bin: Option<OwnedFd>,
    lib: Option<OwnedFd>,
    /// `(dir, name)` this install wrote, which later layers may replace.
    written: HashSet<(Dir, Vec<u8>)>,
    temp_seq: u64,
}

/// An entry name split as the filter sees it.
enum Target<'a> {
    Skip,
    /// The `bin/` or `lib/` directory itself.
    TheDir(Dir),
    Child(Dir, &'a [u8]),
}

impl Installer {
    pub fn new(root: PathBuf, libs: bool, replace: bool) -> Installer {
        Installer { root, libs, replace, bin: None, lib: None, written: HashSet::new(), temp_seq: 0 }
    }

    /// Installs what one (possibly compressed) layer tar holds.
    pub fn apply(&mut self, layer: impl Read) -> Result<(), InstallError> {
        let mut archive = tar::Archive::new(decompressed(layer).map_err(InstallError::Layer)?);
        for entry in archive.entries().map_err(InstallError::Layer)? {
            let mut entry = entry.map_err(InstallError::Layer)?;
            let raw = entry.path_bytes().into_owned();
            match self.target(&raw)? {
                Target::Skip => {}
                Target::TheDir(dir) => self.open_dir(dir)?,
                Target::Child(dir, name) => {
                    let name = name.to_vec();
                    self.install(&mut entry, &raw, dir, &name)?;
                }
            }
        }
        Ok(())
    }

    /// containerd's filter (`filepath.Dir(name)` is `bin`, or `lib` with
    /// `--libs`), after refusing hostile names.
    fn target<'a>(&self, raw: &'a [u8]) -> Result<Target<'a>, InstallError> {
        let hostile = || InstallError::HostileName(String::from_utf8_lossy(raw).into_owned());
        if raw.starts_with(b"/") {
            return Err(hostile());
        }
        let parts: Vec<&[u8]> = raw.split(|b| *b == b'/').filter(|p| !p.is_empty() && *p != b".").collect();
        if parts.iter().any(|p| *p == b"..") {
            return Err(hostile());
        }
        let dir = |p: &[u8]| match p {
            b"bin" => Some(Dir::Bin),
            b"lib" if self.libs => Some(Dir::Lib),
            _ => None,
        };
        Ok(match parts.as_slice() {
            [d] => dir(d).map_or(Target::Skip, Target::TheDir),
            [d, name] => match dir(d) {
                Some(d) => Target::Child(d, name),
                None => Target::Skip,
            },
            _ => Target::Skip,
        })
    }

    /// The open directory `dir` (opened by [`Installer::open_dir`]).
    fn fd(&self, dir: Dir) -> std::os::fd::BorrowedFd<'_> {
        match dir {
            Dir::Bin => self.bin.as_ref(),
            Dir::Lib => self.lib.as_ref(),
        }
        .expect("the directory was opened first")
        .as_fd()
    }

    /// Creates and opens `<root>/bin` or `<root>/lib` on first use.
    fn open_dir(&mut self, dir: Dir) -> Result<(), InstallError> {
        let slot = match dir {
            Dir::Bin => &mut self.bin,
            Dir::Lib => &mut self.lib,
        };
        if slot.is_none() {
            let path = self.root.join(dir.name());
            std::fs::create_dir_all(&path).map_err(|source| InstallError::Io {
                what: "creating",
                path: path.clone(),
                source,
            })?;
            let fd = rustix::fs::open(&path, OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
                .map_err(|e| InstallError::Io { what: "opening", path, source: e.into() })?;
            *slot = Some(fd);
        }
        Ok(())
    }

    fn install<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        raw: &[u8],
        dir: Dir,
        name: &[u8],
    ) -> Result<(), InstallError> {
        let header = entry.header();
        let kind = header.entry_type();
        if name.starts_with(b".wh.") {
            return Ok(()); // whiteouts are not applied to the host
        }
        if kind.is_dir() {
            // As containerd's filter: a direct child directory is created
            // (empty: its own children are not direct children of bin/).
            let mode = Mode::from_raw_mode(header.mode().unwrap_or(0o755) & 0o7777);
            let path = self.root.join(dir.name()).join(OsStr::from_bytes(name));
            self.open_dir(dir)?;
            return match rustix::fs::mkdirat(self.fd(dir), OsStr::from_bytes(name), mode) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => Ok(()),
                Err(e) => Err(InstallError::Io { what: "creating", path, source: e.into() }),
            };
        }
        if !(kind.is_file() || kind.is_symlink() || kind.is_hard_link()) {
            return Ok(()); // devices and fifos are not installed
        }
        let shown = String::from_utf8_lossy(raw).into_owned();
        let path = self.root.join(dir.name()).join(OsStr::from_bytes(name));
        let io_err = |what: &'static str| {
            let path = path.clone();
            move |e: rustix::io::Errno| InstallError::Io { what, path, source: e.into() }
        };
        let ours = self.written.contains(&(dir, name.to_vec()));
        let noreplace = !self.replace && !ours;
        let mode = header.mode().unwrap_or(0o644) & 0o7777;
        let (uid, gid) = (header.uid().ok(), header.gid().ok());
        let mtime = header.mtime().unwrap_or(0);
        let link = entry.link_name_bytes().map(|l| l.into_owned());
        self.temp_seq += 1;
        let temp = format!(".crated-install-{}-{}", std::process::id(), self.temp_seq);
        let root = self.root.display().to_string();
        let target_dir = {
            let link_dir = if kind.is_hard_link() {
                let target = link.clone().unwrap_or_default();
                let resolved = match self.target(&target)? {
                    Target::Child(d, n) if self.written.contains(&(d, n.to_vec())) => Some((d, n.to_vec())),
                    _ => None,
                };
                let Some(resolved) = resolved else {
                    return Err(InstallError::LinkTarget {
                        name: shown,
                        target: String::from_utf8_lossy(&target).into_owned(),
                    });
                };
                Some(resolved)
            } else {
                None
            };
            if let Some((d, _)) = &link_dir {
                self.open_dir(*d)?;
            }
            link_dir
        };
        self.open_dir(dir)?;
        let fd = self.fd(dir);
        if noreplace && rustix::fs::statat(fd, OsStr::from_bytes(name), AtFlags::SYMLINK_NOFOLLOW).is_ok() {
            return Err(InstallError::AlreadyExists { name: shown, root });
        }

        let written = if kind.is_symlink() {
            let link = link.unwrap_or_default();
            rustix::fs::symlinkat(OsStr::from_bytes(&link), fd, temp.as_str()).map_err(io_err("creating"))
        } else if let Some((d, n)) = &target_dir {
            rustix::fs::linkat(self.fd(*d), OsStr::from_bytes(n), fd, temp.as_str(), AtFlags::empty())
                .map_err(io_err("linking"))
        } else {
            write_file(fd, &temp, entry, mode, uid, gid, mtime, &path)
        };
        let renamed = written.and_then(|()| {
            let flags = if noreplace { RenameFlags::NOREPLACE } else { RenameFlags::empty() };
            rustix::fs::renameat_with(fd, temp.as_str(), fd, OsStr::from_bytes(name), flags).map_err(|e| {
                if e == rustix::io::Errno::EXIST {
                    InstallError::AlreadyExists { name: shown.clone(), root: root.clone() }
                } else {
                    io_err("installing")(e)
                }
            })
        });
        if renamed.is_err() {
            let _ = rustix::fs::unlinkat(fd, temp.as_str(), AtFlags::empty());
        }
        renamed?;
        self.written.insert((dir, name.to_vec()));
        Ok(())
    }
}

/// Writes a regular file's data under `temp` in `dir`, then its owner (best
/// effort: only root may give a file away), mode and mtime.
#[allow(clippy::too_many_arguments)]
fn write_file<R: Read>(
    dir: std::os::fd::BorrowedFd<'_>,
    temp: &str,
    data: &mut tar::Entry<'_, R>,
    mode: u32,
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: u64,
    path: &Path,
) -> Result<(), InstallError> {
    let io_err =
        |what: &'static str| move |source: io::Error| InstallError::Io { what, path: path.to_path_buf(), source };
    let flags = OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd =
        rustix::fs::openat(dir, temp, flags, Mode::from_raw_mode(0o600)).map_err(|e| io_err("creating")(e.into()))?;
    let mut file = std::fs::File::from(fd);
    io::copy(data, &mut file).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput => {
            InstallError::Layer(e)
        }
        _ => io_err("writing")(e),
    })?;
    let uid = uid.and_then(|u| u32::try_from(u).ok()).map(rustix::fs::Uid::from_raw);
    let gid = gid.and_then(|g| u32::try_from(g).ok()).map(rustix::fs::Gid::from_raw);
    match rustix::fs::fchown(&file, uid, gid) {
        Ok(()) | Err(rustix::io::Errno::PERM) => {}
        Err(e) => return Err(io_err("changing the owner of")(e.into())),
    }
    // After chown, which clears set-id bits.
    rustix::fs::fchmod(&file, Mode::from_raw_mode(mode)).map_err(|e| io_err("changing the mode of")(e.into()))?;
    let t = Timespec { tv_sec: mtime as i64, tv_nsec: 0 };
    rustix::fs::futimens(&file, &Timestamps { last_access: t, last_modification: t })
        .map_err(|e| io_err("setting the times of")(e.into()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(entries: &[(&str, tar::EntryType, &str, &[u8], u32)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, link, data, mode) in entries {
            let mut h = tar::Header::new_gnu();
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
            h.set_entry_type(*kind);
            h.set_mode(*mode);
            h.set_mtime(1_577_836_800);
            h.set_size(data.len() as u64);
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    use tar::EntryType::{Directory as D, Link as H, Regular as F, Symlink as S};

    #[test]
    fn bin_children_only_with_modes_links_and_libs_on_request() {
        let root = tempfile::tempdir().unwrap();
        let l = layer(&[
            ("bin/", D, "", b"", 0o755),
            ("./bin/tool", F, "", b"#!/bin/sh\n", 0o750),
            ("bin/alias", S, "tool", b"", 0o777),
            ("bin/hard", H, "bin/tool", b"", 0o644),
            ("bin/sub/", D, "", b"", 0o700),
            ("bin/sub/deep", F, "", b"x", 0o644),
            ("lib/libx.so", F, "", b"elf", 0o644),
            ("etc/passwd", F, "", b"root", 0o644),
            ("bin/.wh.gone", F, "", b"", 0o644),
        ]);
        let mut i = Installer::new(root.path().to_path_buf(), false, false);
        i.apply(&gz(&l)[..]).unwrap();
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let tool = std::fs::metadata(root.path().join("bin/tool")).unwrap();
        assert_eq!(tool.permissions().mode() & 0o7777, 0o750);
        assert_eq!(tool.mtime(), 1_577_836_800);
        assert_eq!(std::fs::read_link(root.path().join("bin/alias")).unwrap(), Path::new("tool"));
        assert_eq!(std::fs::metadata(root.path().join("bin/hard")).unwrap().ino(), tool.ino());
        for absent in ["bin/sub/deep", "lib", "etc", "bin/.wh.gone"] {
            assert!(!root.path().join(absent).exists(), "{absent}");
        }
        let names: Vec<_> =
            std::fs::read_dir(root.path().join("bin")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 4, "no temporary files left: {names:?}");
        assert!(root.path().join("bin/sub").is_dir());

        let mut libs = Installer::new(root.path().to_path_buf(), true, true);
        libs.apply(&l[..]).unwrap();
        assert_eq!(std::fs::read(root.path().join("lib/libx.so")).unwrap(), b"elf");
    }

    #[test]
    fn existing_files_need_replace_and_a_later_layer_may_replace_its_own() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("bin")).unwrap();
        std::fs::write(root.path().join("bin/tool"), b"old").unwrap();
        let l = layer(&[("bin/tool", F, "", b"new", 0o755)]);
        let err = Installer::new(root.path().to_path_buf(), false, false).apply(&l[..]).unwrap_err();
        assert_eq!(err.to_string(), format!("cannot replace bin/tool in {}", root.path().display()));
        assert_eq!(std::fs::read(root.path().join("bin/tool")).unwrap(), b"old");
        Installer::new(root.path().to_path_buf(), false, true).apply(&l[..]).unwrap();
        assert_eq!(std::fs::read(root.path().join("bin/tool")).unwrap(), b"new");

        let mut i = Installer::new(root.path().to_path_buf(), false, false);
        i.apply(&layer(&[("bin/two", F, "", b"1", 0o755)])[..]).unwrap();
        i.apply(&layer(&[("bin/two", F, "", b"2", 0o755)])[..]).unwrap();
        assert_eq!(std::fs::read(root.path().join("bin/two")).unwrap(), b"2");
    }

    #[test]
    fn hostile_names_are_refused_and_nothing_escapes() {
        let top = tempfile::tempdir().unwrap();
        let root = top.path().join("root");
        for name in ["/bin/evil", "bin/../../evil", "../bin/evil", "bin/.."] {
            let err = Installer::new(root.clone(), true, true).apply(&layer(&[(name, F, "", b"x", 0o755)])[..]);
            assert!(matches!(err, Err(InstallError::HostileName(_))), "{name}: {err:?}");
        }
        // A symlink planted in bin/ is replaced, never written through.
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::os::unix::fs::symlink(top.path().join("outside"), root.join("bin/tool")).unwrap();
        Installer::new(root.clone(), false, true).apply(&layer(&[("bin/tool", F, "", b"x", 0o755)])[..]).unwrap();
        assert!(!top.path().join("outside").exists());
        assert!(std::fs::symlink_metadata(root.join("bin/tool")).unwrap().is_file());
        // A hard link to something this install did not write.
        let err = Installer::new(root.clone(), false, true)
            .apply(&layer(&[("bin/h", H, "etc/shadow", b"", 0o644)])[..])
            .unwrap_err();
        assert!(matches!(err, InstallError::LinkTarget { .. }), "{err}");
    }

    #[test]
    fn truncated_layer_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        let l = layer(&[("bin/tool", F, "", &[7u8; 4096], 0o755)]);
        let err = Installer::new(root.path().to_path_buf(), false, false).apply(&l[..1024]).unwrap_err();
        assert!(matches!(err, InstallError::Layer(_)), "{err}");
    }
}
