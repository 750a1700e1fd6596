//! What a case works with: its own key prefix, a record of the keys it
//! created (so they are removed afterwards whatever happened), calls that
//! say which operation failed, and helpers to write and compare file trees
//! through real mounts.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use containerd_client::services::v1::snapshots::{Info, Kind};
use containerd_client::types::Mount;
use tonic::{Code, Status};

use crate::cases::CaseDef;
use crate::client::Snapshots;
use crated_plugin_api::mount::{MountError, MountedDir};

/// Every snapshot the suite creates carries this label, so that containerd's
/// garbage collector (which collects unreferenced snapshots) leaves it alone.
pub(crate) const GC_ROOT: &str = "containerd.io/gc.root";

/// Why a case failed.
#[derive(Debug, thiserror::Error)]
pub enum CaseError {
    #[error("{op}: {} ({:?})", .status.message(), .status.code())]
    Rpc { op: String, status: Status },
    #[error("{0}")]
    Check(String),
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error(transparent)]
    Mount(#[from] MountError),
}

pub(crate) type CaseResult<T = ()> = Result<T, CaseError>;

/// Fail the case with a formatted reason unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err($crate::case::CaseError::Check(format!($($fmt)+)));
        }
    };
}
pub(crate) use ensure;

/// One case's view of the snapshotter.
#[derive(Clone)]
pub(crate) struct Case {
    pub(crate) snapshots: Snapshots,
    prefix: String,
    /// Keys this case created (removed after the case).
    created: Arc<Mutex<BTreeSet<String>>>,
    /// Where this case's mount points go.
    work: Arc<WorkDir>,
}

/// The directory holding a case's mount points. Removed only when empty:
/// a recursive removal could reach into a mount that failed to unmount.
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

impl Case {
    pub(crate) fn new(snapshots: Snapshots, prefix: String) -> Case {
        let work = tempfile::Builder::new().prefix("snapshot-conformance-").tempdir().expect("create a temporary dir");
        Case { snapshots, prefix, created: Arc::default(), work: Arc::new(WorkDir(work.keep())) }
    }

    /// The full key for `name`, under this case's prefix.
    pub(crate) fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// A value unique to this case, for labels that filters select on.
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    fn record(&self, key: &str) {
        self.created.lock().unwrap_or_else(|e| e.into_inner()).insert(key.to_string());
    }

    /// The labels every snapshot gets, plus `extra`.
    pub(crate) fn labels(&self, extra: &[(&str, &str)]) -> HashMap<String, String> {
        let mut labels: HashMap<String, String> = extra.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        labels.insert(GC_ROOT.to_string(), "conformance".to_string());
        labels
    }

    pub(crate) async fn try_prepare(&self, key: &str, parent: &str) -> Result<Vec<Mount>, Status> {
        self.try_prepare_labelled(key, parent, self.labels(&[])).await
    }

    pub(crate) async fn try_prepare_labelled(
        &self,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, Status> {
        self.record(key);
        self.snapshots.prepare(key, parent, labels).await
    }

    pub(crate) async fn prepare(&self, key: &str, parent: &str) -> CaseResult<Vec<Mount>> {
        let mounts = self.try_prepare(key, parent).await.map_err(rpc(format!("prepare {key} on {parent:?}")))?;
        ensure!(!mounts.is_empty(), "prepare {key}: no mounts returned");
        Ok(mounts)
    }

    pub(crate) async fn try_view(&self, key: &str, parent: &str) -> Result<Vec<Mount>, Status> {
        self.try_view_labelled(key, parent, self.labels(&[])).await
    }

    pub(crate) async fn try_view_labelled(
        &self,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, Status> {
        self.record(key);
        self.snapshots.view(key, parent, labels).await
    }

    pub(crate) async fn view(&self, key: &str, parent: &str) -> CaseResult<Vec<Mount>> {
        let mounts = self.try_view(key, parent).await.map_err(rpc(format!("view {key} of {parent:?}")))?;
        ensure!(!mounts.is_empty(), "view {key}: no mounts returned");
        Ok(mounts)
    }

    pub(crate) async fn try_commit(&self, name: &str, key: &str) -> Result<(), Status> {
        self.try_commit_labelled(name, key, self.labels(&[])).await
    }

    pub(crate) async fn try_commit_labelled(
        &self,
        name: &str,
        key: &str,
        labels: HashMap<String, String>,
    ) -> Result<(), Status> {
        self.record(name);
        self.snapshots.commit(name, key, labels).await
    }

    pub(crate) async fn commit(&self, name: &str, key: &str) -> CaseResult {
        self.try_commit(name, key).await.map_err(rpc(format!("commit {key} as {name}")))
    }

    pub(crate) async fn remove(&self, key: &str) -> CaseResult {
        self.snapshots.remove(key).await.map_err(rpc(format!("remove {key}")))
    }

    pub(crate) async fn stat(&self, key: &str) -> CaseResult<Info> {
        self.snapshots.stat(key).await.map_err(rpc(format!("stat {key}")))
    }

    pub(crate) async fn mounts(&self, key: &str) -> CaseResult<Vec<Mount>> {
        self.snapshots.mounts(key).await.map_err(rpc(format!("mounts {key}")))
    }

    pub(crate) async fn update(&self, info: Info, paths: &[&str]) -> CaseResult<Info> {
        let op = format!("update {} with mask {paths:?}", info.name);
        self.snapshots.update(info, paths).await.map_err(rpc(op))
    }

    pub(crate) async fn usage(&self, key: &str) -> CaseResult<(i64, i64)> {
        self.snapshots.usage(key).await.map_err(rpc(format!("usage {key}")))
    }

    /// The names of this case's snapshots that List returns with `filters`.
    pub(crate) async fn list_names(&self, filters: &[String]) -> CaseResult<BTreeSet<String>> {
        let infos = self.snapshots.list(filters).await.map_err(rpc(format!("list {filters:?}")))?;
        Ok(infos.into_iter().map(|i| i.name).filter(|n| n.starts_with(&self.prefix)).collect())
    }

    /// Mount `mounts` on a fresh directory (unmounted when the guard drops).
    pub(crate) fn mount(&self, mounts: &[Mount]) -> CaseResult<MountedDir> {
        Ok(MountedDir::mount_all(&self.work.0, mounts)?)
    }

    /// Prepare `key` on `parent` and mount it.
    pub(crate) async fn prepare_mounted(&self, key: &str, parent: &str) -> CaseResult<MountedDir> {
        let mounts = self.prepare(key, parent).await?;
        self.mount(&mounts)
    }

    /// Prepare `key` on `parent`, apply `changes` through the mount, unmount,
    /// and commit it as `name`.
    pub(crate) async fn layer(&self, name: &str, parent: &str, changes: &[Change]) -> CaseResult {
        let key = format!("{name}-active");
        {
            let dir = self.prepare_mounted(&key, parent).await?;
            apply(dir.path(), changes)?;
        }
        self.commit(name, &key).await
    }

    /// Mount a view of `parent` and compare its whole tree with `expected`.
    pub(crate) async fn expect_view(&self, view: &str, parent: &str, expected: &Tree) -> CaseResult {
        let mounts = self.view(view, parent).await?;
        {
            let dir = self.mount(&mounts)?;
            expect_tree(dir.path(), expected)?;
        }
        self.remove(view).await
    }
}

/// An error mapper naming the operation.
pub(crate) fn rpc(op: impl Into<String>) -> impl FnOnce(Status) -> CaseError {
    let op = op.into();
    move |status| CaseError::Rpc { op, status }
}

/// Check that `result` failed with one of `codes`.
pub(crate) fn expect_code<T: std::fmt::Debug>(result: Result<T, Status>, codes: &[Code], op: &str) -> CaseResult {
    match result {
        Ok(v) => Err(CaseError::Check(format!("{op}: succeeded ({v:?}), want an error with code {codes:?}"))),
        Err(s) if codes.contains(&s.code()) => Ok(()),
        Err(s) => Err(CaseError::Check(format!("{op}: got {:?} ({}), want {codes:?}", s.code(), s.message()))),
    }
}

pub(crate) fn kind_name(kind: i32) -> &'static str {
    match Kind::try_from(kind) {
        Ok(Kind::View) => "view",
        Ok(Kind::Active) => "active",
        Ok(Kind::Committed) => "committed",
        _ => "unknown",
    }
}

/// A change made to a mounted snapshot.
#[derive(Clone, Debug)]
pub(crate) enum Change {
    /// Create or replace a file with this content and mode.
    File(&'static str, &'static [u8], u32),
    /// Create or replace a file with owned content, mode 0644.
    Bytes(String, Vec<u8>),
    Dir(&'static str, u32),
    Symlink(&'static str, &'static str),
    Hardlink {
        existing: &'static str,
        new: &'static str,
    },
    Rename(&'static str, &'static str),
    Chown(&'static str, u32, u32),
    RemoveAll(&'static str),
}

pub(crate) fn apply(root: &Path, changes: &[Change]) -> CaseResult {
    for change in changes {
        apply_one(root, change).map_err(|source| CaseError::Io { what: format!("apply {change:?}"), source })?;
    }
    Ok(())
}

fn apply_one(root: &Path, change: &Change) -> io::Result<()> {
    let at = |p: &str| root.join(p.trim_start_matches('/'));
    match change {
        Change::File(path, content, mode) => {
            let path = at(path);
            std::fs::write(&path, content)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode))
        }
        Change::Bytes(path, content) => {
            let path = at(path);
            std::fs::write(&path, content)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
        }
        Change::Dir(path, mode) => {
            let path = at(path);
            std::fs::create_dir(&path)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode))
        }
        Change::Symlink(path, to) => std::os::unix::fs::symlink(to, at(path)),
        Change::Hardlink { existing, new } => std::fs::hard_link(at(existing), at(new)),
        Change::Rename(from, to) => std::fs::rename(at(from), at(to)),
        Change::Chown(path, uid, gid) => std::os::unix::fs::lchown(at(path), Some(*uid), Some(*gid)),
        Change::RemoveAll(path) => {
            let path = at(path);
            if std::fs::symlink_metadata(&path)?.is_dir() {
                std::fs::remove_dir_all(path)
            } else {
                std::fs::remove_file(path)
            }
        }
    }
}

/// What a tree holds: relative path -> entry.
pub(crate) type Tree = BTreeMap<String, Entry>;

/// One entry of a tree, as compared: contents and permission bits, owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Entry {
    File { content: Vec<u8>, mode: u32, owner: (u32, u32) },
    Dir { mode: u32, owner: (u32, u32) },
    Symlink(PathBuf),
    Other,
}

impl Entry {
    pub(crate) fn file(content: &[u8], mode: u32) -> Entry {
        Entry::File { content: content.to_vec(), mode, owner: (0, 0) }
    }

    pub(crate) fn dir(mode: u32) -> Entry {
        Entry::Dir { mode, owner: (0, 0) }
    }
}

/// Build an expected tree from entries.
pub(crate) fn tree<'a>(entries: impl IntoIterator<Item = (&'a str, Entry)>) -> Tree {
    entries.into_iter().map(|(p, e)| (p.trim_start_matches('/').to_string(), e)).collect()
}

/// Read the whole tree under `root`.
pub(crate) fn read_tree(root: &Path) -> io::Result<Tree> {
    let mut tree = Tree::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        for entry in std::fs::read_dir(root.join(&rel))? {
            let entry = entry?;
            let rel = rel.join(entry.file_name());
            let path = root.join(&rel);
            let meta = std::fs::symlink_metadata(&path)?;
            let owner = (meta.uid(), meta.gid());
            let mode = meta.mode() & 0o7777;
            let item = if meta.is_dir() {
                pending.push(rel.clone());
                Entry::Dir { mode, owner }
            } else if meta.is_file() {
                Entry::File { content: std::fs::read(&path)?, mode, owner }
            } else if meta.is_symlink() {
                Entry::Symlink(std::fs::read_link(&path)?)
            } else {
                Entry::Other
            };
            tree.insert(rel.to_string_lossy().into_owned(), item);
        }
    }
    Ok(tree)
}

/// Compare the tree under `root` with `expected`, naming every difference.
pub(crate) fn expect_tree(root: &Path, expected: &Tree) -> CaseResult {
    let actual =
        read_tree(root).map_err(|source| CaseError::Io { what: format!("read {}", root.display()), source })?;
    let mut differences = Vec::new();
    for (path, want) in expected {
        match actual.get(path) {
            None => differences.push(format!("{path}: missing")),
            Some(got) if got != want => differences.push(format!("{path}: got {}, want {}", show(got), show(want))),
            Some(_) => {}
        }
    }
    for (path, got) in &actual {
        if !expected.contains_key(path) {
            differences.push(format!("{path}: unexpected {}", show(got)));
        }
    }
    ensure!(differences.is_empty(), "tree differs: {}", differences.join("; "));
    Ok(())
}

fn show(entry: &Entry) -> String {
    match entry {
        Entry::File { content, mode, owner } => {
            format!("file {:?} mode {mode:o} owner {owner:?}", String::from_utf8_lossy(content))
        }
        Entry::Dir { mode, owner } => format!("dir mode {mode:o} owner {owner:?}"),
        Entry::Symlink(to) => format!("symlink to {}", to.display()),
        Entry::Other => "special file".to_string(),
    }
}

/// How long one case, and then its clean-up, may take: a snapshotter that
/// never answers fails the case instead of hanging the whole run. The
/// longest case (130 layers) takes seconds.
const CASE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(180);

/// Run one case in its own task, then remove whatever it created.
pub(crate) async fn run_case(def: &CaseDef, case: Case) -> crate::CaseOutcome {
    let mut task = tokio::spawn((def.run)(case.clone()));
    let joined = match tokio::time::timeout(CASE_TIMEOUT, &mut task).await {
        Ok(joined) => joined,
        Err(_) => {
            // Aborting drops the case's mount guards, which unmount.
            task.abort();
            let _ = task.await;
            let result = Err(format!("did not finish within {CASE_TIMEOUT:?}: a call never answered"));
            return crate::CaseOutcome { name: def.name, result };
        }
    };
    let mut result = match joined {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(join) => Err(match join.try_into_panic() {
            Ok(payload) => {
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                format!("panicked: {message}")
            }
            Err(e) => format!("task failed: {e}"),
        }),
    };
    let cleaned = tokio::time::timeout(CASE_TIMEOUT, clean_up(&case))
        .await
        .unwrap_or_else(|_| Err(format!("did not finish within {CASE_TIMEOUT:?}")));
    if let Err(leftover) = cleaned {
        result = match result {
            Ok(()) => Err(format!("cleanup: {leftover}")),
            Err(reason) => Err(format!("{reason} (and cleanup: {leftover})")),
        };
    }
    crate::CaseOutcome { name: def.name, result }
}

/// Remove every snapshot the case created or that List shows under its
/// prefix, children before parents: keep removing until nothing is left or a
/// round makes no progress.
async fn clean_up(case: &Case) -> Result<(), String> {
    let mut remaining: BTreeSet<String> = case.created.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if let Ok(listed) = case.snapshots.list(&[]).await {
        remaining.extend(listed.into_iter().map(|i| i.name).filter(|n| n.starts_with(&case.prefix)));
    }
    let mut errors = BTreeMap::new();
    while !remaining.is_empty() {
        let before = remaining.len();
        errors.clear();
        for key in remaining.clone() {
            match case.snapshots.remove(&key).await {
                Ok(()) => {
                    remaining.remove(&key);
                }
                Err(s) if s.code() == Code::NotFound => {
                    remaining.remove(&key);
                }
                Err(s) => {
                    errors.insert(key, format!("{:?} {}", s.code(), s.message()));
                }
            }
        }
        if remaining.len() == before {
            return Err(format!("could not remove {errors:?}"));
        }
    }
    Ok(())
}
