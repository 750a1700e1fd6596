//! Task checkpoints in the content store, as containerd 1.6's Tasks service
//! keeps them (`services/tasks/local.go`): the CRIU image directory a shim
//! dumps into is written to content as one tar
//! ([`MEDIA_TYPE_CHECKPOINT`]), next to the container's spec as a protobuf
//! `Any` ([`MEDIA_TYPE_CHECKPOINT_CONFIG`]); a task created from such a
//! checkpoint gets the tar unpacked into a fresh directory that its shim
//! restores from.
//!
//! The tar is written as containerd's `archive.Diff("", dir)` writes it:
//! every entry below the directory in lexical order, parents first, names
//! relative, directories ending in `/`, modes without their type bits,
//! times in whole seconds, hard links as links to the first name seen.
//!
//! Unpacking is a security boundary: a checkpoint blob is whatever a client
//! put into content. Names must be relative and free of `..` (refused, not
//! cleaned), every parent directory is resolved by the kernel beneath the
//! target directory without following any symlink
//! (`openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`), the entry itself is
//! made by name in that parent with calls that never follow a last symlink,
//! symlinks may only point inside the directory, hard links only name what
//! is already inside it, and devices, FIFOs and other types are refused.

use std::{
    fs::{self, File, Metadata},
    io::{self, Read, Write},
    path::{Path, PathBuf},
};

use crated_plugin_api::archive::EntryWriter;
use crated_plugin_api::Error;
use rustix::{
    fd::{AsFd, OwnedFd},
    fs::{self as rfs, AtFlags, Mode, OFlags, ResolveFlags},
};

/// The CRIU image directory as a tar
/// (`images.MediaTypeContainerd1Checkpoint`).
pub const MEDIA_TYPE_CHECKPOINT: &str = "application/vnd.containerd.container.criu.checkpoint.criu.tar";
/// The container's spec as a protobuf `Any`
/// (`images.MediaTypeContainerd1CheckpointConfig`).
pub const MEDIA_TYPE_CHECKPOINT_CONFIG: &str = "application/vnd.containerd.container.checkpoint.config.v1+proto";

/// The prefix of the temporary directories checkpoints are dumped into and
/// restored from (containerd's, under `$XDG_RUNTIME_DIR` or the temporary
/// directory).
const TEMP_PREFIX: &str = "ctd-checkpoint";

/// Why a checkpoint directory could not be written or unpacked.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// A file system operation (or the tar stream itself) failed.
    #[error("{op} {path}: {source}")]
    Io { op: &'static str, path: String, source: io::Error },
    /// An entry of a checkpoint tar that is refused.
    #[error("invalid checkpoint entry {name:?}: {reason}")]
    InvalidEntry { name: String, reason: &'static str },
}

fn io_err<'a>(op: &'static str, path: impl std::fmt::Display + 'a) -> impl FnOnce(io::Error) -> ArchiveError + 'a {
    move |source| ArchiveError::Io { op, path: path.to_string(), source }
}

fn errno<'a>(
    op: &'static str,
    path: impl std::fmt::Display + 'a,
) -> impl FnOnce(rustix::io::Errno) -> ArchiveError + 'a {
    move |e| ArchiveError::Io { op, path: path.to_string(), source: e.into() }
}

fn invalid(name: &str, reason: &'static str) -> ArchiveError {
    ArchiveError::InvalidEntry { name: name.to_string(), reason }
}

/// Whether `runtime` is one of the runc runtimes (containerd's
/// `checkRuntime(runtime, "io.containerd.runc")`: the dotted parts match).
fn is_runc(runtime: &str) -> bool {
    let mut parts = runtime.split('.');
    ["io", "containerd", "runc"].iter().all(|want| parts.next() == Some(want))
}

/// The type name of an `Any` (its URL after the last `/`).
fn type_name(any: &prost_types::Any) -> &str {
    any.type_url.rsplit('/').next().unwrap_or_default()
}

/// The image path a checkpoint request's runc options name
/// (containerd's `getCheckpointPath`): empty when the checkpoint goes into
/// the content store.
pub fn checkpoint_path(runtime: &str, options: Option<&prost_types::Any>) -> Result<String, Error> {
    use prost::Message;
    let Some(any) = options.filter(|_| is_runc(runtime)) else { return Ok(String::new()) };
    if type_name(any) != shim_protocol::runc::CHECKPOINT_OPTIONS_TYPE_URL {
        return Err(Error::unknown(format!("invalid task checkpoint option for {runtime}")));
    }
    let opts = shim_protocol::runc::CheckpointOptions::decode(any.value.as_slice())
        .map_err(|e| Error::unknown(format!("invalid task checkpoint option for {runtime}: {e}")))?;
    Ok(opts.image_path)
}

/// The CRIU image a task create's runc options name (containerd's
/// `getRestorePath`): empty when none is named.
pub fn restore_path(runtime: &str, options: Option<&prost_types::Any>) -> Result<String, Error> {
    use prost::Message;
    let Some(any) = options.filter(|_| is_runc(runtime)) else { return Ok(String::new()) };
    if type_name(any) != shim_protocol::runc::OPTIONS_TYPE_URL {
        return Err(Error::unknown(format!("invalid task create option for {runtime}")));
    }
    let opts = shim_protocol::runc::Options::decode(any.value.as_slice())
        .map_err(|e| Error::unknown(format!("invalid task create option for {runtime}: {e}")))?;
    Ok(opts.criu_image_path)
}

/// A temporary directory a checkpoint is dumped into or restored from;
/// removed by [`TempImage::remove`] (off the async threads), or on drop.
#[derive(Debug)]
pub struct TempImage(Option<tempfile::TempDir>);

impl TempImage {
    /// A fresh directory under `$XDG_RUNTIME_DIR`, else the temporary
    /// directory, as containerd makes it (blocking).
    pub fn new() -> io::Result<TempImage> {
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        tempfile::Builder::new().prefix(TEMP_PREFIX).tempdir_in(base).map(|d| TempImage(Some(d)))
    }

    pub fn path(&self) -> &Path {
        self.0.as_ref().expect("not removed yet").path()
    }

    /// Removes the directory on a blocking thread (a CRIU image holds the
    /// memory of every process of the task).
    pub async fn remove(mut self) {
        if let Some(dir) = self.0.take() {
            let path = dir.path().to_path_buf();
            if let Err(e) = tokio::task::spawn_blocking(move || dir.close())
                .await
                .unwrap_or_else(|e| Err(io::Error::other(format!("removal task: {e}"))))
            {
                crated_plugin_api::tracing::warn!(path = %path.display(), "removing checkpoint directory: {e}");
            }
        }
    }
}

/// Writes everything below `dir` as an uncompressed tar into `out`.
pub fn write_tar<W: Write>(dir: &Path, out: W) -> Result<W, ArchiveError> {
    let mut w = TarWriter { root: dir, entries: EntryWriter::new(out) };
    w.dir("")?;
    w.entries.tar.into_inner().map_err(io_err("finish tar of", dir.display()))
}

struct TarWriter<'a, W: Write> {
    root: &'a Path,
    entries: EntryWriter<W>,
}

impl<W: Write> TarWriter<'_, W> {
    fn dir(&mut self, rel: &str) -> Result<(), ArchiveError> {
        let path = self.root.join(rel);
        let mut names = Vec::new();
        for e in fs::read_dir(&path).map_err(io_err("read", path.display()))? {
            names.push(e.map_err(io_err("read", path.display()))?.file_name());
        }
        // Go's filepath.Walk order: bytewise by name.
        names.sort();
        for name in names {
            let name = name.to_str().ok_or_else(|| invalid(&name.to_string_lossy(), "name is not UTF-8"))?;
            let child = if rel.is_empty() { name.to_string() } else { format!("{rel}/{name}") };
            let child_path = self.root.join(&child);
            let meta = fs::symlink_metadata(&child_path).map_err(io_err("stat", child_path.display()))?;
            self.entry(&child, &child_path, &meta)?;
            if meta.is_dir() {
                self.dir(&child)?;
            }
        }
        Ok(())
    }

    fn entry(&mut self, rel: &str, path: &Path, meta: &Metadata) -> Result<(), ArchiveError> {
        self.entries.append(tar::Header::new_ustar(), rel, path, meta).map_err(|(op, e)| io_err(op, path.display())(e))
    }
}

/// The components of an entry name, refused unless it is relative and
/// free of `..` (`.` and empty components are dropped).
fn components<'a>(name: &'a str, what: &'static str) -> Result<Vec<&'a str>, ArchiveError> {
    if name.starts_with('/') {
        return Err(invalid(name, if what == "name" { "absolute name" } else { "absolute link target" }));
    }
    let parts: Vec<&str> = name.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
    if parts.contains(&"..") {
        return Err(invalid(
            name,
            if what == "name" { "name leaves the directory" } else { "link leaves the directory" },
        ));
    }
    Ok(parts)
}

/// Opens the directory `parts` beneath `root` without following any
/// symlink on the way.
fn open_beneath(root: &OwnedFd, parts: &[&str], name: &str) -> Result<OwnedFd, ArchiveError> {
    let rel = if parts.is_empty() { ".".to_string() } else { parts.join("/") };
    rfs::openat2(
        root.as_fd(),
        rel.as_str(),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )
    .map_err(errno("open parent of", format!("{name:?}")))
}

/// Removes a non-directory `base` in `parent` if there is one (never
/// following it), so that a later entry of the same name replaces it.
fn replace(parent: &OwnedFd, base: &str, name: &str) -> Result<(), ArchiveError> {
    match rfs::statat(parent.as_fd(), base, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if rfs::FileType::from_raw_mode(st.st_mode) == rfs::FileType::Directory => {
            Err(invalid(name, "replaces a directory"))
        }
        Ok(_) => rfs::unlinkat(parent.as_fd(), base, AtFlags::empty()).map_err(errno("replace", format!("{name:?}"))),
        Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(errno("stat", format!("{name:?}"))(e)),
    }
}

/// Unpacks the checkpoint tar `input` into the directory `dir`, which is
/// the only place it can write to.
pub fn unpack<R: Read>(input: R, dir: &Path) -> Result<(), ArchiveError> {
    let root: OwnedFd = rfs::open(dir, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(errno("open", dir.display()))?;
    let mut archive = tar::Archive::new(input);
    let entries = archive.entries().map_err(io_err("read checkpoint tar into", dir.display()))?;
    for entry in entries {
        let mut entry = entry.map_err(io_err("read checkpoint tar into", dir.display()))?;
        let name = String::from_utf8(entry.path_bytes().into_owned())
            .map_err(|e| invalid(&String::from_utf8_lossy(e.as_bytes()), "name is not UTF-8"))?;
        let parts = components(&name, "name")?;
        let kind = entry.header().entry_type();
        let Some((base, parents)) = parts.split_last() else {
            // The directory itself (`./`): nothing to make.
            if kind.is_dir() {
                continue;
            }
            return Err(invalid(&name, "names the directory itself"));
        };
        let parent = open_beneath(&root, parents, &name)?;
        let mode = Mode::from_raw_mode(entry.header().mode().unwrap_or(0o644) & 0o777);
        match kind {
            tar::EntryType::Directory => match rfs::mkdirat(parent.as_fd(), *base, mode) {
                Ok(()) => {}
                Err(rustix::io::Errno::EXIST) => {
                    // Only a directory may already be there.
                    open_beneath(&root, &parts, &name)?;
                }
                Err(e) => return Err(errno("mkdir", format!("{name:?}"))(e)),
            },
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                replace(&parent, base, &name)?;
                let fd = rfs::openat(
                    parent.as_fd(),
                    *base,
                    OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    mode,
                )
                .map_err(errno("create", format!("{name:?}")))?;
                let mut file = File::from(fd);
                io::copy(&mut entry, &mut file).map_err(io_err("write", format!("{name:?}")))?;
            }
            tar::EntryType::Symlink => {
                let target = link_target(&entry, &name)?;
                if target.starts_with('/') {
                    return Err(invalid(&name, "absolute link target"));
                }
                // Resolved lexically from the link's own directory, the
                // target must stay inside.
                let mut depth = parents.len() as isize;
                for c in target.split('/').filter(|c| !c.is_empty() && *c != ".") {
                    depth += if c == ".." { -1 } else { 1 };
                    if depth < 0 {
                        return Err(invalid(&name, "link leaves the directory"));
                    }
                }
                replace(&parent, base, &name)?;
                rfs::symlinkat(target.as_str(), parent.as_fd(), *base)
                    .map_err(errno("symlink", format!("{name:?}")))?;
            }
            tar::EntryType::Link => {
                let target = link_target(&entry, &name)?;
                let tparts = components(&target, "link")?;
                let Some((tbase, tparents)) = tparts.split_last() else {
                    return Err(invalid(&name, "link to the directory itself"));
                };
                let tparent = open_beneath(&root, tparents, &name)?;
                replace(&parent, base, &name)?;
                // linkat without AT_SYMLINK_FOLLOW links a symlink itself,
                // never what it points at.
                rfs::linkat(tparent.as_fd(), *tbase, parent.as_fd(), *base, AtFlags::empty())
                    .map_err(errno("link", format!("{name:?}")))?;
            }
            // Extended headers are consumed by the tar reader; a global
            // one carries nothing a checkpoint needs.
            tar::EntryType::XGlobalHeader => {}
            _ => return Err(invalid(&name, "not a file, directory or link")),
        }
    }
    Ok(())
}

fn link_target<R: Read>(entry: &tar::Entry<'_, R>, name: &str) -> Result<String, ArchiveError> {
    let target = entry.link_name_bytes().ok_or_else(|| invalid(name, "link without a target"))?;
    String::from_utf8(target.into_owned()).map_err(|_| invalid(name, "link target is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crated_tests::images::raw_tar;
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};

    /// Everything below `dir`: (relative name, kind, contents or target).
    fn tree(dir: &Path) -> Vec<(String, &'static str, String)> {
        let mut out = Vec::new();
        fn walk(root: &Path, rel: &Path, out: &mut Vec<(String, &'static str, String)>) {
            let mut names: Vec<_> = fs::read_dir(root.join(rel)).unwrap().map(|e| e.unwrap().file_name()).collect();
            names.sort();
            for n in names {
                let r = rel.join(&n);
                let p = root.join(&r);
                let m = fs::symlink_metadata(&p).unwrap();
                let name = r.display().to_string();
                if m.is_dir() {
                    out.push((name, "dir", String::new()));
                    walk(root, &r, out);
                } else if m.file_type().is_symlink() {
                    out.push((name, "symlink", fs::read_link(&p).unwrap().display().to_string()));
                } else {
                    out.push((name, "file", fs::read_to_string(&p).unwrap()));
                }
            }
        }
        walk(dir, Path::new(""), &mut out);
        out
    }

    fn sample_image(dir: &Path) {
        fs::write(dir.join("pages-1.img"), "pages").unwrap();
        fs::write(dir.join("descriptors.json"), "{}").unwrap();
        fs::create_dir(dir.join("sub")).unwrap();
        fs::write(dir.join("sub/core-1.img"), "core").unwrap();
        fs::set_permissions(dir.join("sub/core-1.img"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::hard_link(dir.join("pages-1.img"), dir.join("sub/pages-link.img")).unwrap();
        symlink("core-1.img", dir.join("sub/core.lnk")).unwrap();
    }

    #[test]
    fn the_tar_holds_every_entry_in_lexical_order_with_links_and_modes() {
        let src = tempfile::tempdir().unwrap();
        sample_image(src.path());
        let tar = write_tar(src.path(), Vec::new()).unwrap();
        let mut archive = tar::Archive::new(tar.as_slice());
        let mut seen = Vec::new();
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            let name = String::from_utf8(e.path_bytes().into_owned()).unwrap();
            let kind = e.header().entry_type();
            let mode = e.header().mode().unwrap();
            let link = e.link_name_bytes().map(|l| String::from_utf8(l.into_owned()).unwrap()).unwrap_or_default();
            let mut data = String::new();
            e.read_to_string(&mut data).unwrap();
            seen.push((name, kind, mode, link, data));
        }
        let expect = vec![
            ("descriptors.json", tar::EntryType::Regular, 0o644, "", "{}"),
            ("pages-1.img", tar::EntryType::Regular, 0o644, "", "pages"),
            ("sub/", tar::EntryType::Directory, 0o755, "", ""),
            ("sub/core-1.img", tar::EntryType::Regular, 0o600, "", "core"),
            ("sub/core.lnk", tar::EntryType::Symlink, 0o777, "core-1.img", ""),
            ("sub/pages-link.img", tar::EntryType::Link, 0o644, "pages-1.img", ""),
        ];
        let seen: Vec<_> = seen.iter().map(|(n, k, m, l, d)| (n.as_str(), *k, *m, l.as_str(), d.as_str())).collect();
        assert_eq!(seen, expect);
        // Two zero blocks end it, no record padding.
        assert!(tar.len() % 512 == 0 && tar[tar.len() - 1024..].iter().all(|b| *b == 0));
    }

    #[test]
    fn a_written_image_unpacks_to_the_same_tree() {
        let src = tempfile::tempdir().unwrap();
        sample_image(src.path());
        let tar = write_tar(src.path(), Vec::new()).unwrap();
        let dst = tempfile::tempdir().unwrap();
        unpack(tar.as_slice(), dst.path()).unwrap();
        assert_eq!(tree(dst.path()), tree(src.path()));
        let m = fs::metadata(dst.path().join("sub/core-1.img")).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
        let (a, b) = (
            fs::metadata(dst.path().join("pages-1.img")).unwrap(),
            fs::metadata(dst.path().join("sub/pages-link.img")).unwrap(),
        );
        assert_eq!(a.ino(), b.ino(), "the hard link stays a hard link");
    }

    /// Each hostile tar is refused with the reason, and nothing appears
    /// outside the directory it is unpacked into (`{O}`: the directory
    /// outside, which holds a `secret`).
    #[test]
    fn a_hostile_checkpoint_tar_cannot_write_outside_its_directory() {
        use tar::EntryType::{Block, Directory, Link, Regular, Symlink};
        type Case = (&'static str, Vec<(&'static str, tar::EntryType, &'static str)>, &'static str);
        let cases: Vec<Case> = vec![
            ("absolute", vec![("{O}/x", Regular, "")], "absolute name"),
            ("dotdot", vec![("../x", Regular, "")], "name leaves the directory"),
            ("inner dotdot", vec![("a/../../x", Regular, "")], "name leaves the directory"),
            ("escaping symlink", vec![("s", Symlink, "../..")], "link leaves the directory"),
            ("escaping nested symlink", vec![("d", Directory, ""), ("d/s", Symlink, "../../x")], "link leaves"),
            ("absolute symlink", vec![("s", Symlink, "{O}")], "absolute link target"),
            ("absolute hard link", vec![("h", Link, "{O}/secret")], "absolute link target"),
            ("hard link up", vec![("h", Link, "../secret")], "link leaves the directory"),
            ("device", vec![("d", Block, "")], "not a file, directory or link"),
            // A symlink inside (allowed) is never written through.
            ("through a symlink", vec![("d", Directory, ""), ("s", Symlink, "d"), ("s/x", Regular, "")], "open parent"),
        ];
        for (what, entries, want) in cases {
            let outside = tempfile::tempdir().unwrap();
            fs::write(outside.path().join("secret"), "secret").unwrap();
            let dst = tempfile::tempdir_in(outside.path()).unwrap();
            let o = outside.path().display().to_string();
            let owned: Vec<(String, tar::EntryType, String)> =
                entries.iter().map(|(n, k, l)| (n.replace("{O}", &o), *k, l.replace("{O}", &o))).collect();
            let raw: Vec<(&str, tar::EntryType, &str, &[u8])> = owned
                .iter()
                .map(|(n, k, l)| (n.as_str(), *k, l.as_str(), if *k == Regular { &b"x"[..] } else { &b""[..] }))
                .collect();
            let err = unpack(raw_tar(&raw).as_slice(), dst.path()).expect_err(what).to_string();
            assert!(err.contains(want), "{what}: {err}");
            let left = fs::read_dir(outside.path()).unwrap().count();
            assert_eq!(left, 2, "{what}: only the secret and the target directory are outside");
            assert_eq!(fs::read_to_string(outside.path().join("secret")).unwrap(), "secret", "{what}");
        }
    }

    #[test]
    fn options_name_the_image_path_for_runc_runtimes_only() {
        use prost::Message;
        let any = |url: &str, value: Vec<u8>| prost_types::Any { type_url: url.to_string(), value };
        let cp = shim_protocol::runc::CheckpointOptions { image_path: "/img".into(), ..Default::default() };
        let cp = any("containerd.runc.v1.CheckpointOptions", cp.encode_to_vec());
        assert_eq!(checkpoint_path("io.containerd.runc.v2", Some(&cp)).unwrap(), "/img");
        assert_eq!(checkpoint_path("io.containerd.runc.v2", None).unwrap(), "");
        assert_eq!(checkpoint_path("io.containerd.kata.v2", Some(&cp)).unwrap(), "");
        let wrong = any("containerd.runc.v1.Options", Vec::new());
        assert_eq!(
            checkpoint_path("io.containerd.runc.v2", Some(&wrong)).unwrap_err().to_string(),
            "invalid task checkpoint option for io.containerd.runc.v2"
        );
        let o = shim_protocol::runc::Options { criu_image_path: "/r".into(), ..Default::default() };
        assert_eq!(
            restore_path("io.containerd.runc.v1", Some(&any("containerd.runc.v1.Options", o.encode_to_vec()))).unwrap(),
            "/r"
        );
        assert!(restore_path("io.containerd.runc.v2", Some(&cp)).is_err());
    }
}
