//! The raw, un-namespaced content store: containerd's `content/local`
//! store in Rust. A plain library with no gRPC in it; `service.rs` maps
//! the Content API onto it.
//!
//! Layout under the root:
//!
//! ```text
//! blobs/sha256/<hex>              committed blobs, read-only (0444)
//! labels/<hex>.json               labels and update time of a blob (atomic side file)
//! ingest/<sha256 hex of ref>/     one in-progress write
//!     ref                         the ref, verbatim
//!     data                        the bytes written so far
//!     startedat, updatedat        RFC 3339 timestamps
//!     total                       the expected size, when one was given
//!     expected                    the expected digest, when one was given
//! ```
//!
//! Durability: a blob becomes visible only complete and synced: the ingest
//! `data` file is fsynced, its size and digest are checked, it is hard-linked
//! to `blobs/sha256/<hex>` (a link never replaces an existing file, so
//! two commits of the same content cannot both "win"), and the blobs
//! directory is fsynced before the ingest is removed.
//!
//! Digests cost one pass: the writer hashes while it writes. A writer that
//! re-opens an existing ingest (a client that came back, or a daemon
//! restart) re-hashes the data already on disk once, as containerd's
//! `resumeStatus` does; hasher state is not persisted.
//!
//! All file I/O runs in `spawn_blocking`; no async thread blocks on disk.

use std::{
    collections::HashMap,
    fs::{self, File, OpenOptions},
    io::{self, Read as _, Seek as _, SeekFrom, Write as _},
    os::unix::fs::{FileExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use crated_plugin_api::{
    filters::{AnyFilter, Fields},
    Error, ErrorKind,
};
use sha2::{Digest as _, Sha256};

pub use crate::digest::{Digest, DigestError};

/// Largest key + value of one label, as containerd's metadata validates.
pub const MAX_LABEL_SIZE: usize = crated_plugin_api::validate::MAX_LABEL;

const HASH_BUFFER: usize = 1 << 20;

/// Everything that can go wrong in the store. Each has an [`ErrorKind`]
/// ([`ContentError::kind`]), which gives its gRPC code in `service.rs`.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error(transparent)]
    InvalidDigest(#[from] DigestError),
    #[error("{0}")]
    InvalidArgument(String),
    /// Not found, already exists, failed precondition: containerd's kinds,
    /// printed as containerd's errdefs print them.
    #[error(transparent)]
    Kind(#[from] Error),
    /// Another writer holds the ref (containerd's `errdefs.ErrUnavailable`).
    #[error("ref {reference} locked for {held:?} (since {since}): unavailable")]
    Locked { reference: String, held: Duration, since: String },
    #[error("{0}")]
    OutOfRange(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("internal error: {0}")]
    Internal(String),
}

impl ContentError {
    /// The kind of the failure, which decides its gRPC code. The variants
    /// other than `Kind` keep their own text (containerd's content store
    /// prints those without a kind suffix).
    pub fn kind(&self) -> ErrorKind {
        match self {
            ContentError::Kind(e) => e.kind(),
            ContentError::InvalidDigest(_) | ContentError::InvalidArgument(_) => ErrorKind::InvalidArgument,
            ContentError::Locked { .. } => ErrorKind::Unavailable,
            ContentError::OutOfRange(_) => ErrorKind::OutOfRange,
            ContentError::Io { .. } | ContentError::Internal(_) => ErrorKind::Internal,
        }
    }
}

type Result<T, E = ContentError> = std::result::Result<T, E>;

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> ContentError {
    let context = context.into();
    move |source| ContentError::Io { context, source }
}

/// A committed blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    pub digest: Digest,
    pub size: u64,
    /// When the blob was committed (its mtime).
    pub created_at: SystemTime,
    /// The last label update, or `created_at`.
    pub updated_at: SystemTime,
    pub labels: HashMap<String, String>,
}

impl Fields for BlobInfo {
    /// containerd's `content.AdaptInfo`: `digest`, `labels.<key>`, and
    /// (which containerd leaves unimplemented) `size` in decimal.
    fn field(&self, path: &[String]) -> Option<std::borrow::Cow<'_, str>> {
        match path.first().map(String::as_str)? {
            "digest" if path.len() == 1 => Some(self.digest.as_str().into()),
            "size" if path.len() == 1 => Some(self.size.to_string().into()),
            "labels" if path.len() > 1 => self.labels.get(&path[1..].join(".")).map(|v| v.as_str().into()),
            _ => None,
        }
    }
}

/// An in-progress write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestStatus {
    pub reference: String,
    /// Bytes written so far.
    pub offset: u64,
    /// The expected size, 0 if unknown.
    pub total: i64,
    /// The expected digest, if the writer was told one.
    pub expected: Option<Digest>,
    pub started_at: SystemTime,
    pub updated_at: SystemTime,
}

impl Fields for IngestStatus {
    /// containerd's `adaptStatus`: only `ref`.
    fn field(&self, path: &[String]) -> Option<std::borrow::Cow<'_, str>> {
        match path {
            [f] if f == "ref" => Some(self.reference.as_str().into()),
            _ => None,
        }
    }
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct LabelFile {
    #[serde(default)]
    labels: HashMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    updated_at: Option<String>,
}

type LockTable = Arc<Mutex<HashMap<String, SystemTime>>>;

/// Holds the process-wide write lock of one ref; released on drop.
#[derive(Debug)]
struct RefLock {
    table: LockTable,
    reference: String,
}

impl Drop for RefLock {
    fn drop(&mut self) {
        if let Ok(mut t) = self.table.lock() {
            t.remove(&self.reference);
        }
    }
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    locks: LockTable,
    /// Serialises read-modify-write of label files.
    labels: tokio::sync::Mutex<()>,
}

/// The content store. Cheap to clone; clones share the locks.
#[derive(Debug, Clone)]
pub struct ContentStore {
    inner: Arc<Inner>,
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ContentError::Internal(format!("blocking task failed: {e}")))?
}

fn validate_labels(labels: &HashMap<String, String>) -> Result<()> {
    crated_plugin_api::validate::labels(labels).map_err(ContentError::InvalidArgument)
}

fn format_time(t: SystemTime) -> String {
    humantime::format_rfc3339_nanos(t).to_string()
}

fn parse_time(s: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(s.trim()).ok()
}

fn read_string(p: &Path) -> io::Result<String> {
    fs::read_to_string(p)
}

fn read_time(p: &Path) -> Option<SystemTime> {
    read_string(p).ok().as_deref().and_then(parse_time)
}

/// Writes `data` to `path` atomically: temp file, fsync, rename.
fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{:?}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id(),
        std::thread::current().id()
    ));
    let res = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn is_not_found(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
}

/// The sha256 of a ref names its ingest directory (as containerd does).
pub fn ingest_dir_name(reference: &str) -> String {
    hex::encode(Sha256::digest(reference.as_bytes()))
}

impl ContentStore {
    /// Opens (creating if needed) a store rooted at `root`.
    pub async fn open(root: impl Into<PathBuf>) -> Result<ContentStore> {
        let root = root.into();
        let r = root.clone();
        blocking(move || {
            for d in ["blobs/sha256", "ingest", "labels"] {
                fs::create_dir_all(r.join(d)).map_err(io_err(format!("creating {}", r.join(d).display())))?;
            }
            Ok(())
        })
        .await?;
        Ok(ContentStore { inner: Arc::new(Inner { root, locks: Arc::default(), labels: tokio::sync::Mutex::new(()) }) })
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// `blobs/<alg>/<hex>`.
    pub fn blob_path(&self, dgst: &Digest) -> PathBuf {
        self.inner.root.join("blobs").join(dgst.algorithm()).join(dgst.hex())
    }

    fn labels_path(&self, dgst: &Digest) -> PathBuf {
        let name = if dgst.algorithm() == "sha256" {
            format!("{}.json", dgst.hex())
        } else {
            format!("{}-{}.json", dgst.algorithm(), dgst.hex())
        };
        self.inner.root.join("labels").join(name)
    }

    /// `ingest/<sha256 of ref>`.
    pub fn ingest_path(&self, reference: &str) -> PathBuf {
        self.inner.root.join("ingest").join(ingest_dir_name(reference))
    }

    fn blob_info_sync(blob: &Path, labels_path: &Path, dgst: &Digest) -> Result<BlobInfo> {
        let meta = match fs::metadata(blob) {
            Ok(m) if m.is_file() => m,
            Ok(_) => return Err(Error::not_found(format!("content {dgst}")).into()),
            Err(e) if is_not_found(&e) => return Err(Error::not_found(format!("content {dgst}")).into()),
            Err(e) => return Err(io_err(format!("stat {}", blob.display()))(e)),
        };
        let created_at = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        let lf = read_label_file(labels_path)?;
        let updated_at = lf.updated_at.as_deref().and_then(parse_time).unwrap_or(created_at);
        Ok(BlobInfo { digest: dgst.clone(), size: meta.len(), created_at, updated_at, labels: lf.labels })
    }

    /// The info of a committed blob; `NotFound` if there is none.
    pub async fn info(&self, dgst: &Digest) -> Result<BlobInfo> {
        let (blob, labels, d) = (self.blob_path(dgst), self.labels_path(dgst), dgst.clone());
        blocking(move || Self::blob_info_sync(&blob, &labels, &d)).await
    }

    /// Whether a committed blob exists.
    pub async fn exists(&self, dgst: &Digest) -> Result<bool> {
        match self.info(dgst).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Updates the labels of a blob, containerd style: no field paths or
    /// `labels` replaces every label with `labels`; `labels.<key>` sets
    /// (or, with an empty or missing value, removes) that one key. Any
    /// other path is `InvalidArgument`.
    pub async fn update(
        &self,
        dgst: &Digest,
        labels: HashMap<String, String>,
        fieldpaths: &[String],
    ) -> Result<BlobInfo> {
        enum Change {
            All(HashMap<String, String>),
            Keys(HashMap<String, String>),
        }
        let change = if fieldpaths.is_empty() || fieldpaths.iter().any(|p| p == "labels") {
            Change::All(labels.clone())
        } else {
            let mut keys = HashMap::new();
            for p in fieldpaths {
                match p.strip_prefix("labels.") {
                    Some(k) if !k.is_empty() => {
                        keys.insert(k.to_string(), labels.get(k).cloned().unwrap_or_default());
                    }
                    _ => {
                        return Err(ContentError::InvalidArgument(format!(
                            "cannot update {p:?} field on content info {dgst:?}",
                            dgst = dgst.as_str()
                        )))
                    }
                }
            }
            Change::Keys(keys)
        };
        match &change {
            Change::All(l) | Change::Keys(l) => validate_labels(l)?,
        }
        let _guard = self.inner.labels.lock().await;
        let (blob, lpath, d) = (self.blob_path(dgst), self.labels_path(dgst), dgst.clone());
        blocking(move || {
            let mut info = Self::blob_info_sync(&blob, &lpath, &d)?;
            match change {
                Change::All(l) => info.labels = l.into_iter().filter(|(_, v)| !v.is_empty()).collect(),
                Change::Keys(keys) => {
                    for (k, v) in keys {
                        if v.is_empty() {
                            info.labels.remove(&k);
                        } else {
                            info.labels.insert(k, v);
                        }
                    }
                }
            }
            info.updated_at = SystemTime::now();
            let lf = LabelFile { labels: info.labels.clone(), updated_at: Some(format_time(info.updated_at)) };
            write_label_file(&lpath, &lf)?;
            Ok(info)
        })
        .await
    }

    /// Every committed blob that matches `filter`, in digest order.
    pub async fn list(&self, filter: &AnyFilter) -> Result<Vec<BlobInfo>> {
        let filter = filter.clone();
        let me = self.clone();
        blocking(move || {
            let dir = me.inner.root.join("blobs").join("sha256");
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if is_not_found(&e) => return Ok(Vec::new()),
                Err(e) => return Err(io_err(format!("reading {}", dir.display()))(e)),
            };
            let mut out = Vec::new();
            for entry in entries {
                let entry = entry.map_err(io_err(format!("reading {}", dir.display())))?;
                let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
                let Ok(dgst) = Digest::parse(&format!("sha256:{name}")) else { continue };
                match Self::blob_info_sync(&entry.path(), &me.labels_path(&dgst), &dgst) {
                    Ok(info) if filter.matches(&info) => out.push(info),
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            out.sort_by(|a, b| a.digest.cmp(&b.digest));
            Ok(out)
        })
        .await
    }

    /// Removes a committed blob and its labels.
    pub async fn delete(&self, dgst: &Digest) -> Result<()> {
        let (blob, lpath, d) = (self.blob_path(dgst), self.labels_path(dgst), dgst.clone());
        blocking(move || {
            match fs::remove_file(&blob) {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => return Err(Error::not_found(format!("content {d}")).into()),
                Err(e) => return Err(io_err(format!("removing {}", blob.display()))(e)),
            }
            let _ = fs::remove_file(&lpath);
            Ok(())
        })
        .await
    }

    /// Opens a committed blob for reading at any offset.
    pub async fn reader(&self, dgst: &Digest) -> Result<BlobReader> {
        let (blob, d) = (self.blob_path(dgst), dgst.clone());
        blocking(move || {
            let file = match File::open(&blob) {
                Ok(f) => f,
                Err(e) if is_not_found(&e) => return Err(Error::not_found(format!("content {d}")).into()),
                Err(e) => return Err(io_err(format!("opening {}", blob.display()))(e)),
            };
            let size = file.metadata().map_err(io_err(format!("stat {}", blob.display())))?.len();
            Ok(BlobReader { file: Arc::new(file), size, digest: d })
        })
        .await
    }

    fn status_sync(dir: &Path) -> Result<IngestStatus, io::Error> {
        let meta = fs::metadata(dir.join("data"))?;
        let reference = read_string(&dir.join("ref"))?;
        let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        let started_at = read_time(&dir.join("startedat")).unwrap_or(mtime);
        // Like containerd: updatedat is not rewritten on every write, the
        // data file's mtime may be newer.
        let updated_at = read_time(&dir.join("updatedat")).map_or(mtime, |u| u.max(mtime));
        let total = read_string(&dir.join("total")).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
        let expected = read_string(&dir.join("expected")).ok().and_then(|s| Digest::parse(s.trim()).ok());
        Ok(IngestStatus { reference, offset: meta.len(), total, expected, started_at, updated_at })
    }

    /// The status of the ingest of `reference`; `NotFound` if there is none.
    pub async fn status(&self, reference: &str) -> Result<IngestStatus> {
        let dir = self.ingest_path(reference);
        let r = reference.to_string();
        blocking(move || match Self::status_sync(&dir) {
            Ok(s) if s.reference == r => Ok(s),
            Ok(_) => Err(Error::not_found(format!("ingest ref {r:?}")).into()),
            Err(e) if is_not_found(&e) => Err(Error::not_found(format!("ingest ref {r:?}")).into()),
            Err(e) => Err(io_err(format!("status of ingest ref {r:?}"))(e)),
        })
        .await
    }

    /// Every ingest whose status matches `filter` (field `ref`), by ref.
    pub async fn list_statuses(&self, filter: &AnyFilter) -> Result<Vec<IngestStatus>> {
        let filter = filter.clone();
        let dir = self.inner.root.join("ingest");
        blocking(move || {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if is_not_found(&e) => return Ok(Vec::new()),
                Err(e) => return Err(io_err(format!("reading {}", dir.display()))(e)),
            };
            let mut out = Vec::new();
            for entry in entries {
                let entry = entry.map_err(io_err(format!("reading {}", dir.display())))?;
                // Half-created or half-removed ingests are skipped.
                if let Ok(st) = Self::status_sync(&entry.path()) {
                    if filter.matches(&st) {
                        out.push(st);
                    }
                }
            }
            out.sort_by(|a, b| a.reference.cmp(&b.reference));
            Ok(out)
        })
        .await
    }

    /// Removes the ingest of `reference`; `NotFound` if there is none. An
    /// active writer of the ref then fails at commit.
    pub async fn abort(&self, reference: &str) -> Result<()> {
        let dir = self.ingest_path(reference);
        let r = reference.to_string();
        blocking(move || match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Err(Error::not_found(format!("ingest ref {r:?}")).into()),
            Err(e) => Err(io_err(format!("removing ingest of ref {r:?}"))(e)),
        })
        .await
    }

    fn try_lock(&self, reference: &str) -> Result<RefLock> {
        let mut t = self.inner.locks.lock().map_err(|_| ContentError::Internal("lock table poisoned".into()))?;
        if let Some(since) = t.get(reference) {
            return Err(ContentError::Locked {
                reference: reference.to_string(),
                held: since.elapsed().unwrap_or_default(),
                since: format_time(*since),
            });
        }
        t.insert(reference.to_string(), SystemTime::now());
        Ok(RefLock { table: self.inner.locks.clone(), reference: reference.to_string() })
    }

    /// Takes the write lock of `reference`, waiting a little (about 60 ms
    /// in all, like containerd's short retry loop) for a writer that is
    /// just finishing; then `Locked`.
    async fn lock(&self, reference: &str) -> Result<RefLock> {
        let mut delay = Duration::from_millis(1);
        for _ in 0..6 {
            match self.try_lock(reference) {
                Err(ContentError::Locked { .. }) => {}
                other => return other,
            }
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
        self.try_lock(reference)
    }

    /// Opens (or resumes) the write of `reference`, holding its lock until
    /// the writer is dropped or committed. `total` > 0 is the expected size;
    /// `expected` a digest that must not exist yet (`AlreadyExists`).
    pub async fn writer(&self, reference: &str, total: i64, expected: Option<&Digest>) -> Result<Writer> {
        if reference.is_empty() {
            return Err(ContentError::InvalidArgument("ref must not be empty".into()));
        }
        let lock = self.lock(reference).await?;
        if let Some(exp) = expected {
            if self.exists(exp).await? {
                return Err(Error::already_exists(format!("content {exp}")).into());
            }
        }
        let dir = self.ingest_path(reference);
        let r = reference.to_string();
        let exp = expected.cloned();
        let total = total.max(0);
        let (file, hasher, offset, total, started_at, updated_at) =
            blocking(move || open_ingest(&dir, &r, total, exp.as_ref())).await?;
        Ok(Writer {
            store: self.clone(),
            reference: reference.to_string(),
            dir: self.ingest_path(reference),
            offset,
            total,
            started_at,
            updated_at,
            state: Some(OpenIngest { file, hasher, _lock: lock }),
        })
    }
}

fn read_label_file(path: &Path) -> Result<LabelFile> {
    match fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map_err(|e| ContentError::Internal(format!("corrupt label file {}: {e}", path.display()))),
        Err(e) if is_not_found(&e) => Ok(LabelFile::default()),
        Err(e) => Err(io_err(format!("reading {}", path.display()))(e)),
    }
}

fn write_label_file(path: &Path, lf: &LabelFile) -> Result<()> {
    let bytes = serde_json::to_vec(lf).map_err(|e| ContentError::Internal(format!("encoding labels: {e}")))?;
    write_atomic(path, &bytes).map_err(io_err(format!("writing {}", path.display())))
}

type Opened = (File, Sha256, u64, i64, SystemTime, SystemTime);

/// Resumes a valid existing ingest (re-hashing its data once) or creates
/// a fresh one.
fn open_ingest(dir: &Path, reference: &str, total: i64, expected: Option<&Digest>) -> Result<Opened> {
    let ctx = |what: &str| format!("{what} of ingest ref {reference:?}");
    let created = match fs::create_dir(dir) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
        Err(e) => return Err(io_err(ctx("creating directory"))(e)),
    };
    if !created {
        if let Ok(st) = ContentStore::status_sync(dir) {
            let same_total = total <= 0 || st.total <= 0 || st.total == total;
            if st.reference == reference && same_total {
                let mut file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(dir.join("data"))
                    .map_err(io_err(ctx("opening data")))?;
                let mut hasher = Sha256::new();
                let mut buf = vec![0u8; HASH_BUFFER];
                let mut offset = 0u64;
                loop {
                    let n = file.read(&mut buf).map_err(io_err(ctx("re-hashing data")))?;
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buf[..n]);
                    offset += n as u64;
                }
                file.seek(SeekFrom::Start(offset)).map_err(io_err(ctx("seeking data")))?;
                let total = if total > 0 { total } else { st.total };
                if total > 0 && st.total <= 0 {
                    fs::write(dir.join("total"), total.to_string()).map_err(io_err(ctx("writing total")))?;
                }
                if let Some(exp) = expected {
                    fs::write(dir.join("expected"), exp.as_str()).map_err(io_err(ctx("writing expected")))?;
                }
                return Ok((file, hasher, offset, total, st.started_at, st.updated_at));
            }
        }
        // Not resumable (half created, or another total): start over.
        for f in ["total", "expected"] {
            let _ = fs::remove_file(dir.join(f));
        }
    }
    let now = SystemTime::now();
    let w = |name: &str, data: &str| fs::write(dir.join(name), data).map_err(io_err(ctx(&format!("writing {name}"))));
    w("ref", reference)?;
    w("startedat", &format_time(now))?;
    w("updatedat", &format_time(now))?;
    if total > 0 {
        w("total", &total.to_string())?;
    }
    if let Some(exp) = expected {
        w("expected", exp.as_str())?;
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.join("data"))
        .map_err(io_err(ctx("creating data")))?;
    Ok((file, Sha256::new(), 0, total, now, now))
}

/// A committed blob opened for reading.
#[derive(Debug, Clone)]
pub struct BlobReader {
    file: Arc<File>,
    size: u64,
    digest: Digest,
}

impl BlobReader {
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Up to `len` bytes at `offset` (fewer only at the end of the blob).
    pub async fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let file = self.file.clone();
        let len = len.min(self.size.saturating_sub(offset) as usize);
        let d = self.digest.clone();
        blocking(move || {
            let mut buf = vec![0u8; len];
            let mut done = 0;
            while done < len {
                match file.read_at(&mut buf[done..], offset + done as u64) {
                    Ok(0) => break,
                    Ok(n) => done += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(io_err(format!("reading {d}"))(e)),
                }
            }
            buf.truncate(done);
            Ok(buf)
        })
        .await
    }
}

struct OpenIngest {
    file: File,
    hasher: Sha256,
    /// Travels with the file, so the lock outlives any blocking write
    /// still in flight when the writer is dropped.
    _lock: RefLock,
}

/// An open write of one ref, holding its lock. Dropping it releases the
/// lock and keeps the ingest for a later resume.
pub struct Writer {
    store: ContentStore,
    reference: String,
    dir: PathBuf,
    offset: u64,
    total: i64,
    started_at: SystemTime,
    updated_at: SystemTime,
    /// `None` once committed, or after a failed write.
    state: Option<OpenIngest>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").field("ref", &self.reference).field("offset", &self.offset).finish()
    }
}

fn closed(reference: &str) -> ContentError {
    Error::failed_precondition(format!("writer of ref {reference:?} is closed")).into()
}

impl Writer {
    pub fn reference(&self) -> &str {
        &self.reference
    }

    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn total(&self) -> i64 {
        self.total
    }

    /// Sets the expected total (> 0), persisting it for `Status`.
    pub async fn set_total(&mut self, total: i64) -> Result<()> {
        if total <= 0 || total == self.total {
            return Ok(());
        }
        self.total = total;
        let p = self.dir.join("total");
        blocking(move || fs::write(&p, total.to_string()).map_err(io_err("writing total"))).await
    }

    pub fn status(&self) -> IngestStatus {
        IngestStatus {
            reference: self.reference.clone(),
            offset: self.offset,
            total: self.total,
            expected: None,
            started_at: self.started_at,
            updated_at: self.updated_at,
        }
    }

    /// The digest of the bytes written so far (cheap: clones the hasher).
    pub fn digest(&self) -> Option<Digest> {
        self.state.as_ref().map(|s| Digest::from_sha256(s.hasher.clone()))
    }

    /// Appends `data` at the current offset, hashing it on the way.
    pub async fn write(&mut self, data: Vec<u8>) -> Result<u64> {
        if data.is_empty() {
            return Ok(self.offset);
        }
        let len = data.len() as u64;
        let new_offset = self
            .offset
            .checked_add(len)
            .filter(|o| *o <= i64::MAX as u64)
            .ok_or_else(|| ContentError::InvalidArgument("write past the largest possible size".into()))?;
        let mut st = self.state.take().ok_or_else(|| closed(&self.reference))?;
        let (st, res) = tokio::task::spawn_blocking(move || {
            let res = st.file.write_all(&data);
            if res.is_ok() {
                st.hasher.update(&data);
            }
            (st, res)
        })
        .await
        .map_err(|e| ContentError::Internal(format!("write task failed: {e}")))?;
        // On an I/O error the writer is broken (the file may hold part of
        // the data); the ingest stays and a new writer re-hashes it.
        res.map_err(io_err(format!("writing ingest of ref {:?}", self.reference)))?;
        self.state = Some(st);
        self.offset = new_offset;
        self.updated_at = SystemTime::now();
        Ok(self.offset)
    }

    /// Discards everything written (containerd supports truncating to 0 only).
    pub async fn truncate(&mut self, size: u64) -> Result<()> {
        if size != 0 {
            return Err(ContentError::OutOfRange(format!("cannot truncate to {size}: only 0 is supported")));
        }
        let mut st = self.state.take().ok_or_else(|| closed(&self.reference))?;
        let (st, res) = tokio::task::spawn_blocking(move || {
            let res = st.file.set_len(0).and_then(|_| st.file.seek(SeekFrom::Start(0)).map(|_| ()));
            st.hasher = Sha256::new();
            (st, res)
        })
        .await
        .map_err(|e| ContentError::Internal(format!("truncate task failed: {e}")))?;
        res.map_err(io_err(format!("truncating ingest of ref {:?}", self.reference)))?;
        self.state = Some(st);
        self.offset = 0;
        self.updated_at = SystemTime::now();
        Ok(())
    }

    /// Commits the ingest as a blob: fsync, check `size` (> 0) and
    /// `expected`, link into `blobs/`, fsync the directory, store the
    /// labels, remove the ingest. A size or digest mismatch is
    /// `FailedPrecondition` and keeps the ingest (containerd does); an
    /// existing blob is `AlreadyExists` and removes the ingest. The writer
    /// is closed afterwards either way.
    pub async fn commit(
        &mut self,
        size: i64,
        expected: Option<&Digest>,
        labels: Option<HashMap<String, String>>,
    ) -> Result<Digest> {
        if let Some(l) = &labels {
            validate_labels(l)?;
        }
        let st = self.state.take().ok_or_else(|| closed(&self.reference))?;
        let expected = expected.cloned();
        let (reference, dir, offset) = (self.reference.clone(), self.dir.clone(), self.offset);
        let store = self.store.clone();
        let guard = self.store.inner.labels.lock().await;
        let r = blocking(move || commit_sync(&store, st, &reference, &dir, offset, size, expected, labels)).await;
        drop(guard);
        r
    }
}

#[allow(clippy::too_many_arguments)]
fn commit_sync(
    store: &ContentStore,
    st: OpenIngest,
    reference: &str,
    dir: &Path,
    offset: u64,
    size: i64,
    expected: Option<Digest>,
    labels: Option<HashMap<String, String>>,
) -> Result<Digest> {
    let OpenIngest { file, hasher, _lock } = st;
    let ctx = |what: &str| format!("{what} of ingest ref {reference:?}");
    file.sync_all().map_err(io_err(ctx("sync")))?;
    let on_disk = file.metadata().map_err(io_err(ctx("stat")))?.len();
    if on_disk != offset {
        return Err(ContentError::Internal(format!(
            "ingest ref {reference:?} holds {on_disk} bytes, its writer wrote {offset}"
        )));
    }
    if size > 0 && size as u64 != on_disk {
        // containerd's wording, which clients match on.
        return Err(
            Error::failed_precondition(format!("{reference:?} failed size validation: {on_disk} != {size}")).into()
        );
    }
    let dgst = Digest::from_sha256(hasher);
    if let Some(exp) = &expected {
        if *exp != dgst {
            return Err(Error::failed_precondition(format!("unexpected commit digest {dgst}, expected {exp}")).into());
        }
    }
    let target = store.blob_path(&dgst);
    let blobs = target.parent().map(Path::to_path_buf).unwrap_or_default();
    fs::create_dir_all(&blobs).map_err(io_err(format!("creating {}", blobs.display())))?;
    let data = dir.join("data");
    // Read-only (as containerd makes them) and dated at commit, before
    // the blob becomes visible.
    let now = SystemTime::now();
    file.set_permissions(fs::Permissions::from_mode(0o444)).map_err(io_err(ctx("chmod")))?;
    file.set_times(fs::FileTimes::new().set_accessed(now).set_modified(now)).map_err(io_err(ctx("set times")))?;
    drop(file);
    match fs::hard_link(&data, &target) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let _ = fs::remove_dir_all(dir);
            return Err(Error::already_exists(format!("content {dgst}")).into());
        }
        Err(e) if is_not_found(&e) => {
            return Err(Error::not_found(format!("ingest ref {reference:?} (aborted while writing)")).into())
        }
        Err(e) => return Err(io_err(format!("linking {} to {}", data.display(), target.display()))(e)),
    }
    sync_dir(&blobs).map_err(io_err(format!("sync {}", blobs.display())))?;
    // The blob is committed; what follows cannot roll it back.
    let lpath = store.labels_path(&dgst);
    match labels.filter(|l| !l.is_empty()) {
        Some(labels) => {
            let _ = write_label_file(&lpath, &LabelFile { labels, updated_at: None });
        }
        None => {
            let _ = fs::remove_file(&lpath);
        }
    }
    let _ = fs::remove_dir_all(dir);
    Ok(dgst)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> (tempfile::TempDir, ContentStore) {
        let tmp = tempfile::tempdir().unwrap();
        let s = ContentStore::open(tmp.path()).await.unwrap();
        (tmp, s)
    }

    fn data(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    async fn put(s: &ContentStore, reference: &str, bytes: &[u8], labels: Option<HashMap<String, String>>) -> Digest {
        let mut w = s.writer(reference, bytes.len() as i64, None).await.unwrap();
        for c in bytes.chunks(1000) {
            w.write(c.to_vec()).await.unwrap();
        }
        w.commit(bytes.len() as i64, Some(&Digest::sha256_of(bytes)), labels).await.unwrap()
    }

    fn labels(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn any(filters: &[&str]) -> AnyFilter {
        AnyFilter::parse(filters).unwrap()
    }

    #[tokio::test]
    async fn write_commit_info_read_delete() {
        let (_t, s) = store().await;
        let bytes = data(10_000, 1);
        let d = put(&s, "r1", &bytes, None).await;
        assert_eq!(d, Digest::sha256_of(&bytes));
        let info = s.info(&d).await.unwrap();
        assert_eq!(info.size, 10_000);
        assert!(info.labels.is_empty());
        // The ingest is gone, the blob is read-only at blobs/sha256/<hex>.
        assert!(matches!(s.status("r1").await, Err(e) if e.kind() == ErrorKind::NotFound));
        let p = s.blob_path(&d);
        assert!(p.ends_with(format!("blobs/sha256/{}", d.hex())));
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o444);

        let r = s.reader(&d).await.unwrap();
        assert_eq!(r.size(), 10_000);
        assert_eq!(r.read_at(0, 10_000).await.unwrap(), bytes);
        assert_eq!(r.read_at(1234, 100).await.unwrap(), &bytes[1234..1334]);
        assert_eq!(r.read_at(9_990, 100).await.unwrap(), &bytes[9_990..]);
        assert!(r.read_at(10_000, 5).await.unwrap().is_empty());

        s.delete(&d).await.unwrap();
        assert!(matches!(s.info(&d).await, Err(e) if e.kind() == ErrorKind::NotFound));
        assert!(matches!(s.delete(&d).await, Err(e) if e.kind() == ErrorKind::NotFound));
        assert!(matches!(s.reader(&d).await, Err(e) if e.kind() == ErrorKind::NotFound));
    }

    #[tokio::test]
    async fn wrong_digest_fails_and_leaves_no_blob() {
        let (_t, s) = store().await;
        let bytes = data(4096, 2);
        let wrong = Digest::sha256_of(b"something else");
        let mut w = s.writer("bad", 0, None).await.unwrap();
        w.write(bytes.clone()).await.unwrap();
        let e = w.commit(0, Some(&wrong), None).await.unwrap_err();
        let msg = e.to_string();
        assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{e:?}");
        assert!(
            msg.contains(&format!("unexpected commit digest {}, expected {wrong}", Digest::sha256_of(&bytes))),
            "{msg}"
        );
        assert!(!s.blob_path(&Digest::sha256_of(&bytes)).exists());
        assert!(s.list(&AnyFilter::default()).await.unwrap().is_empty());
        // containerd keeps the ingest; the writer is closed.
        assert_eq!(s.status("bad").await.unwrap().offset, 4096);
        assert!(matches!(w.write(vec![1]).await, Err(e) if e.kind() == ErrorKind::FailedPrecondition));
    }

    #[tokio::test]
    async fn wrong_size_fails() {
        let (_t, s) = store().await;
        let mut w = s.writer("sz", 0, None).await.unwrap();
        w.write(vec![7; 100]).await.unwrap();
        let e = w.commit(99, None, None).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{e:?}");
        assert!(e.to_string().contains("failed size validation: 100 != 99"), "{e}");
        assert!(s.list(&AnyFilter::default()).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn resume_after_reopening_the_store() {
        let tmp = tempfile::tempdir().unwrap();
        let bytes = data(300_000, 3);
        let started;
        {
            let s = ContentStore::open(tmp.path()).await.unwrap();
            let mut w = s.writer("resume-me", bytes.len() as i64, None).await.unwrap();
            w.write(bytes[..120_000].to_vec()).await.unwrap();
            started = w.status().started_at;
            // Simulated crash: writer and store dropped without commit.
        }
        let s = ContentStore::open(tmp.path()).await.unwrap();
        let st = s.status("resume-me").await.unwrap();
        assert_eq!(st.offset, 120_000);
        assert_eq!(st.total, 300_000);
        assert_eq!(st.reference, "resume-me");
        assert_eq!(st.started_at, started);
        let all = s.list_statuses(&AnyFilter::default()).await.unwrap();
        assert_eq!(all.len(), 1);

        let mut w = s.writer("resume-me", 0, None).await.unwrap();
        assert_eq!(w.offset(), 120_000);
        assert_eq!(w.total(), 300_000, "the persisted total is kept");
        assert_eq!(w.digest(), Some(Digest::sha256_of(&bytes[..120_000])), "existing data is re-hashed");
        w.write(bytes[120_000..].to_vec()).await.unwrap();
        let d = w.commit(0, Some(&Digest::sha256_of(&bytes)), None).await.unwrap();
        let r = s.reader(&d).await.unwrap();
        assert_eq!(r.read_at(0, bytes.len()).await.unwrap(), bytes);
    }

    #[tokio::test]
    async fn a_second_writer_of_a_ref_is_locked_out() {
        let (_t, s) = store().await;
        let mut w1 = s.writer("shared", 0, None).await.unwrap();
        w1.write(b"first".to_vec()).await.unwrap();
        let e = s.writer("shared", 0, None).await.unwrap_err();
        assert!(matches!(e, ContentError::Locked { .. }), "{e:?}");
        assert!(e.to_string().starts_with("ref shared locked"), "{e}");
        // Other refs are independent.
        drop(s.writer("other", 0, None).await.unwrap());
        // The lock goes with the writer; the ingest stays and resumes.
        drop(w1);
        let w2 = s.writer("shared", 0, None).await.unwrap();
        assert_eq!(w2.offset(), 5);
    }

    #[tokio::test]
    async fn truncate_restarts_the_ingest() {
        let (_t, s) = store().await;
        let mut w = s.writer("t", 0, None).await.unwrap();
        w.write(b"garbage".to_vec()).await.unwrap();
        w.truncate(0).await.unwrap();
        assert_eq!(w.offset(), 0);
        w.write(b"hello".to_vec()).await.unwrap();
        assert!(matches!(w.truncate(2).await, Err(ContentError::OutOfRange(_))));
        let mut w = s.writer("t2", 0, None).await.unwrap();
        w.write(b"garbage".to_vec()).await.unwrap();
        w.truncate(0).await.unwrap();
        w.write(b"hello".to_vec()).await.unwrap();
        let d = w.commit(5, Some(&Digest::sha256_of(b"hello")), None).await.unwrap();
        assert_eq!(s.info(&d).await.unwrap().size, 5);
    }

    #[tokio::test]
    async fn abort_removes_the_ingest() {
        let (_t, s) = store().await;
        let mut w = s.writer("ab", 0, None).await.unwrap();
        w.write(vec![1; 10]).await.unwrap();
        drop(w);
        assert!(s.ingest_path("ab").exists());
        s.abort("ab").await.unwrap();
        assert!(!s.ingest_path("ab").exists());
        assert!(matches!(s.status("ab").await, Err(e) if e.kind() == ErrorKind::NotFound));
        assert!(matches!(s.abort("ab").await, Err(e) if e.kind() == ErrorKind::NotFound));
        assert!(matches!(s.abort("never").await, Err(e) if e.kind() == ErrorKind::NotFound));
        // Aborted while a writer is active: the commit fails, no blob.
        let mut w = s.writer("ab2", 0, None).await.unwrap();
        w.write(vec![2; 10]).await.unwrap();
        s.abort("ab2").await.unwrap();
        assert!(matches!(w.commit(0, None, None).await, Err(e) if e.kind() == ErrorKind::NotFound));
        assert!(s.list(&AnyFilter::default()).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn committing_existing_content_is_already_exists() {
        let (_t, s) = store().await;
        let d = put(&s, "a", b"same", None).await;
        let mut w = s.writer("b", 0, None).await.unwrap();
        w.write(b"same".to_vec()).await.unwrap();
        let e = w.commit(0, None, None).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e:?}");
        assert!(!s.ingest_path("b").exists(), "the ingest is cleaned");
        let e = s.writer("c", 0, Some(&d)).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e:?}");
        assert!(!s.ingest_path("c").exists());
    }

    #[tokio::test]
    async fn list_filters() {
        let (_t, s) = store().await;
        let a = put(&s, "a", b"aaa", Some(labels(&[("kind", "layer"), ("containerd.io/gc.root", "x")]))).await;
        let b = put(&s, "b", b"bbbbb", Some(labels(&[("kind", "config")]))).await;
        let c = put(&s, "c", b"c", None).await;
        let digests = |v: Vec<BlobInfo>| v.into_iter().map(|i| i.digest).collect::<Vec<_>>();
        let mut all = vec![a.clone(), b.clone(), c.clone()];
        all.sort();
        assert_eq!(digests(s.list(&any(&[])).await.unwrap()), all);
        assert_eq!(digests(s.list(&any(&[&format!("digest=={b}")])).await.unwrap()), vec![b.clone()]);
        assert_eq!(digests(s.list(&any(&["labels.kind==layer"])).await.unwrap()), vec![a.clone()]);
        assert_eq!(digests(s.list(&any(&["labels.\"containerd.io/gc.root\""])).await.unwrap()), vec![a.clone()]);
        assert_eq!(digests(s.list(&any(&["size==5"])).await.unwrap()), vec![b.clone()]);
        let mut ab = vec![a.clone(), b.clone()];
        ab.sort();
        assert_eq!(digests(s.list(&any(&["labels.kind==layer", "labels.kind==config"])).await.unwrap()), ab);
        assert!(s.list(&any(&["labels.kind==layer,size==5"])).await.unwrap().is_empty());
        assert_eq!(digests(s.list(&any(&["labels.kind~=^con"])).await.unwrap()), [b]);
        assert_eq!(s.info(&a).await.unwrap().labels["kind"], "layer");
    }

    #[tokio::test]
    async fn list_statuses_filter_on_ref() {
        let (_t, s) = store().await;
        for r in ["layer-1", "layer-2", "config"] {
            let mut w = s.writer(r, 0, None).await.unwrap();
            w.write(b"x".to_vec()).await.unwrap();
        }
        let refs = |v: Vec<IngestStatus>| v.into_iter().map(|s| s.reference).collect::<Vec<_>>();
        assert_eq!(refs(s.list_statuses(&any(&[])).await.unwrap()), ["config", "layer-1", "layer-2"]);
        assert_eq!(refs(s.list_statuses(&any(&["ref~=^layer"])).await.unwrap()), ["layer-1", "layer-2"]);
        assert_eq!(refs(s.list_statuses(&any(&["ref==config"])).await.unwrap()), ["config"]);
    }

    #[tokio::test]
    async fn update_with_field_masks() {
        let (_t, s) = store().await;
        let d = put(&s, "u", b"labelled", Some(labels(&[("a", "1"), ("b", "2")]))).await;
        let created = s.info(&d).await.unwrap().created_at;
        // labels.<key>: set one key, remove another (empty value), keep the rest.
        let i = s
            .update(&d, labels(&[("a", "10"), ("c", "ignored")]), &["labels.a".into(), "labels.b".into()])
            .await
            .unwrap();
        assert_eq!(i.labels, labels(&[("a", "10")]));
        assert!(i.updated_at >= created);
        assert_eq!(s.info(&d).await.unwrap().labels, labels(&[("a", "10")]));
        // "labels" replaces them all.
        let i = s.update(&d, labels(&[("x", "y")]), &["labels".into()]).await.unwrap();
        assert_eq!(i.labels, labels(&[("x", "y")]));
        // No mask: same as "labels".
        let i = s.update(&d, labels(&[("z", "1")]), &[]).await.unwrap();
        assert_eq!(i.labels, labels(&[("z", "1")]));
        assert_eq!(s.info(&d).await.unwrap().labels, labels(&[("z", "1")]));
        // Other fields cannot be updated.
        let e = s.update(&d, HashMap::new(), &["size".into()]).await.unwrap_err();
        assert!(matches!(e, ContentError::InvalidArgument(_)), "{e:?}");
        // Oversized labels are refused.
        let e = s.update(&d, labels(&[("big", &"v".repeat(5000))]), &[]).await.unwrap_err();
        assert!(matches!(e, ContentError::InvalidArgument(_)), "{e:?}");
        // Unknown blob.
        let e = s.update(&Digest::sha256_of(b"nope"), HashMap::new(), &[]).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "{e:?}");
    }

    #[tokio::test]
    async fn refs_map_to_hashed_ingest_dirs() {
        let (_t, s) = store().await;
        let nasty = "../../etc/passwd\n\0default/1/layer-sha256:abc";
        let mut w = s.writer(nasty, 0, None).await.unwrap();
        w.write(b"x".to_vec()).await.unwrap();
        let dir = s.ingest_path(nasty);
        assert_eq!(dir.file_name().unwrap().to_str().unwrap(), ingest_dir_name(nasty));
        assert_eq!(fs::read_to_string(dir.join("ref")).unwrap(), nasty);
        assert_eq!(s.status(nasty).await.unwrap().offset, 1);
        assert!(matches!(s.writer("", 0, None).await, Err(ContentError::InvalidArgument(_))));
    }
}
