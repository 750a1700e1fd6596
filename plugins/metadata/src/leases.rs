//! The lease store: containerd's `metadata/leases.go` on redb.
//!
//! A lease is `(namespace, id)` with a creation time and labels; its
//! resources are `(type, id)` pairs where type is `content`, `ingests` or
//! `snapshots/<snapshotter>` (containerd's `parseLeaseResource`). Expiry is
//! the `containerd.io/gc.expire` label (RFC 3339), honoured by
//! [`LeaseStore::expire`], which the plugin runs periodically in place of
//! containerd's garbage collector.

use std::borrow::Cow;

use crated_plugin_api::filters::{labels_field, AnyFilter, Fields};
use crated_plugin_api::{Error, ErrorKind};
use redb::{ReadableTable, WriteTransaction};

use crate::db::{decode, encode, ensure_namespace, scan_ns, Db, DbError, Labels, LeaseRecord, LEASES, LEASE_RESOURCES};
use crate::namespaces::validate_labels;

/// The label that carries a lease's expiry time.
pub const EXPIRE_LABEL: &str = "containerd.io/gc.expire";

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("resource type {0} not supported yet")]
    Unsupported(String),
    /// Not found, already exists...: containerd's kinds, printed as its
    /// errdefs print them.
    #[error(transparent)]
    Kind(#[from] Error),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl LeaseError {
    /// The kind of the failure, which gives its gRPC code (the variants
    /// other than `Kind` keep containerd's own wording, without a suffix).
    pub fn kind(&self) -> ErrorKind {
        match self {
            LeaseError::Kind(e) => e.kind(),
            LeaseError::InvalidArgument(_) => ErrorKind::InvalidArgument,
            LeaseError::Unsupported(_) => ErrorKind::NotImplemented,
            LeaseError::Db(_) => ErrorKind::Internal,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub id: String,
    pub created_at: i64,
    pub labels: Labels,
}

impl Fields for Lease {
    fn field(&self, path: &[String]) -> Option<Cow<'_, str>> {
        match path.first().map(String::as_str) {
            Some("id") if path.len() == 1 => Some(Cow::Borrowed(&self.id)),
            Some("labels") => labels_field(path, self.labels.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Resource {
    pub id: String,
    pub kind: String,
}

/// containerd's digest syntax: `algorithm:encoded`, for the registered algorithms.
pub fn validate_digest(d: &str) -> Result<(), String> {
    crated_plugin_api::validate::digest(d).map_err(|why| format!("invalid digest {d:?}: {why}"))
}

/// Checks a resource as containerd's `parseLeaseResource` does.
pub fn check_resource(r: &Resource) -> Result<(), LeaseError> {
    let keys: Vec<&str> = r.kind.split('/').collect();
    match keys[0] {
        "content" | "ingests" => {
            if keys.len() != 1 {
                return Err(LeaseError::InvalidArgument(format!("invalid resource type {}", r.kind)));
            }
            if keys[0] == "content" {
                validate_digest(&r.id)
                    .map_err(|e| LeaseError::InvalidArgument(format!("invalid content resource id {}: {e}", r.id)))?;
            }
        }
        "snapshots" => {
            if keys.len() != 2 || keys[1].is_empty() {
                return Err(LeaseError::InvalidArgument(format!("invalid snapshot resource type {}", r.kind)));
            }
        }
        _ => return Err(LeaseError::Unsupported(r.kind.clone())),
    }
    if r.id.is_empty() {
        return Err(LeaseError::InvalidArgument("resource id must not be empty".into()));
    }
    Ok(())
}

/// A lease id like containerd's `leases.WithRandomID`: `<nanoseconds>-<base64url of 3 random bytes>`.
pub fn random_id() -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let b = uuid::Uuid::new_v4().into_bytes();
    let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
    let enc: String = (0..4).rev().map(|i| ALPHABET[((n >> (6 * i)) & 63) as usize] as char).collect();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    format!("{nanos}-{enc}")
}

/// Adds a resource to a lease inside a caller's transaction (the content
/// store uses this to lease what a writer commits, atomically with the record).
pub fn add_resource_in(txn: &WriteTransaction, ns: &str, lease: &str, r: &Resource) -> Result<(), LeaseError> {
    check_resource(r)?;
    if txn.open_table(LEASES).map_err(DbError::from)?.get((ns, lease)).map_err(DbError::from)?.is_none() {
        return Err(Error::not_found(format!("lease {lease:?}")).into());
    }
    txn.open_table(LEASE_RESOURCES)
        .map_err(DbError::from)?
        .insert((ns, lease, r.kind.as_str(), r.id.as_str()), ())
        .map_err(DbError::from)?;
    Ok(())
}

#[derive(Clone)]
pub struct LeaseStore {
    db: Db,
}

impl LeaseStore {
    pub fn new(db: Db) -> Self {
        LeaseStore { db }
    }

    pub fn create(&self, ns: &str, id: &str, labels: Labels) -> Result<Lease, LeaseError> {
        if id.is_empty() {
            return Err(LeaseError::InvalidArgument("lease id must be provided".into()));
        }
        validate_labels(&labels).map_err(|e| LeaseError::InvalidArgument(format!("lease.Labels: {e}")))?;
        let labels: Labels = labels.into_iter().filter(|(_, v)| !v.is_empty()).collect();
        self.db.write(|txn| {
            ensure_namespace(txn, ns)?;
            let mut t = txn.open_table(LEASES).map_err(DbError::from)?;
            if t.get((ns, id)).map_err(DbError::from)?.is_some() {
                return Err(Error::already_exists(format!("lease {id:?}")).into());
            }
            let rec = LeaseRecord { created_at: crate::db::now_nanos(), labels };
            t.insert((ns, id), encode(&rec).as_slice()).map_err(DbError::from)?;
            Ok(Lease { id: id.into(), created_at: rec.created_at, labels: rec.labels })
        })
    }

    /// Deletes a lease and its resource references.
    pub fn delete(&self, ns: &str, id: &str) -> Result<(), LeaseError> {
        self.db.write_deleting(|txn| delete_in(txn, ns, id))
    }

    pub fn get(&self, ns: &str, id: &str) -> Result<Lease, LeaseError> {
        self.db.read(|txn| {
            let t = txn.open_table(LEASES).map_err(DbError::from)?;
            let v = t.get((ns, id)).map_err(DbError::from)?.ok_or_else(|| Error::not_found(format!("lease {id:?}")))?;
            let rec: LeaseRecord = decode("leases", v.value())?;
            Ok(Lease { id: id.into(), created_at: rec.created_at, labels: rec.labels })
        })
    }

    pub fn list(&self, ns: &str, filter: &AnyFilter) -> Result<Vec<Lease>, LeaseError> {
        self.db.read(|txn| {
            let t = txn.open_table(LEASES).map_err(DbError::from)?;
            let mut out = Vec::new();
            for (id, v) in scan_ns(&t, ns)? {
                let rec: LeaseRecord = decode("leases", &v)?;
                let l = Lease { id, created_at: rec.created_at, labels: rec.labels };
                if filter.matches(&l) {
                    out.push(l);
                }
            }
            Ok(out)
        })
    }

    pub fn add_resource(&self, ns: &str, id: &str, r: &Resource) -> Result<(), LeaseError> {
        check_resource(r)?;
        self.db.write(|txn| add_resource_in(txn, ns, id, r))
    }

    pub fn delete_resource(&self, ns: &str, id: &str, r: &Resource) -> Result<(), LeaseError> {
        check_resource(r)?;
        self.db.write_deleting(|txn| {
            if txn.open_table(LEASES).map_err(DbError::from)?.get((ns, id)).map_err(DbError::from)?.is_none() {
                return Err(Error::not_found(format!("lease {id:?}")).into());
            }
            txn.open_table(LEASE_RESOURCES)
                .map_err(DbError::from)?
                .remove((ns, id, r.kind.as_str(), r.id.as_str()))
                .map_err(DbError::from)?;
            Ok(())
        })
    }

    pub fn list_resources(&self, ns: &str, id: &str) -> Result<Vec<Resource>, LeaseError> {
        self.db.read(|txn| {
            if txn.open_table(LEASES).map_err(DbError::from)?.get((ns, id)).map_err(DbError::from)?.is_none() {
                return Err(Error::not_found(format!("lease {id:?}")).into());
            }
            let t = txn.open_table(LEASE_RESOURCES).map_err(DbError::from)?;
            let mut out = Vec::new();
            for item in t.range((ns, id, "", "")..).map_err(DbError::from)? {
                let (k, _) = item.map_err(DbError::from)?;
                let (kns, kid, kind, rid) = k.value();
                if kns != ns || kid != id {
                    break;
                }
                out.push(Resource { id: rid.to_string(), kind: kind.to_string() });
            }
            Ok(out)
        })
    }

    /// Deletes every lease whose `containerd.io/gc.expire` lies before
    /// `now` (seconds since the epoch), in one transaction; returns them.
    pub fn expire(&self, now: i64) -> Result<Vec<(String, String)>, LeaseError> {
        self.db.write_deleting(|txn| {
            let mut expired = Vec::new();
            {
                let t = txn.open_table(LEASES).map_err(DbError::from)?;
                for item in t.iter().map_err(DbError::from)? {
                    let (k, v) = item.map_err(DbError::from)?;
                    let rec: LeaseRecord = decode("leases", v.value())?;
                    let Some(exp) = rec.labels.get(EXPIRE_LABEL).and_then(|s| parse_rfc3339(s)) else {
                        continue;
                    };
                    if exp < now {
                        let (ns, id) = k.value();
                        expired.push((ns.to_string(), id.to_string()));
                    }
                }
            }
            for (ns, id) in &expired {
                delete_in(txn, ns, id)?;
            }
            Ok(expired)
        })
    }
}

pub(crate) fn delete_in(txn: &WriteTransaction, ns: &str, id: &str) -> Result<(), LeaseError> {
    let mut t = txn.open_table(LEASES).map_err(DbError::from)?;
    if t.remove((ns, id)).map_err(DbError::from)?.is_none() {
        return Err(Error::not_found(format!("lease {id:?}")).into());
    }
    let mut res = txn.open_table(LEASE_RESOURCES).map_err(DbError::from)?;
    let mut keys = Vec::new();
    for item in res.range((ns, id, "", "")..).map_err(DbError::from)? {
        let (k, _) = item.map_err(DbError::from)?;
        let (kns, kid, kind, rid) = k.value();
        if kns != ns || kid != id {
            break;
        }
        keys.push((kind.to_string(), rid.to_string()));
    }
    for (kind, rid) in keys {
        res.remove((ns, id, kind.as_str(), rid.as_str())).map_err(DbError::from)?;
    }
    Ok(())
}

/// Seconds since the epoch of an RFC 3339 time (`2006-01-02T15:04:05Z07:00`,
/// optional fraction), as Go's `time.RFC3339` writes it.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse::<i64>().ok() };
    let (y, mo, d, h, mi, se) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let mut rest = &s[19..];
    if let Some(r) = rest.strip_prefix('.') {
        let digits = r.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = &r[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && (rest.starts_with('+') || rest.starts_with('-')) && &rest[3..4] == ":" => {
            let oh: i64 = rest[1..3].parse().ok()?;
            let om: i64 = rest[4..6].parse().ok()?;
            let o = oh * 3600 + om * 60;
            if rest.starts_with('-') {
                -o
            } else {
                o
            }
        }
        _ => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = if y2 >= 0 { y2 } else { y2 - 399 } / 400;
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some(days * 86400 + h * 3600 + mi * 60 + se - offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, LeaseStore) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("meta.redb")).unwrap();
        (dir, LeaseStore::new(db))
    }

    fn labels(kv: &[(&str, &str)]) -> Labels {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2024-02-29T12:00:00Z"), Some(1_709_208_000));
        assert_eq!(parse_rfc3339("2024-02-29T13:30:00.123+01:30"), Some(1_709_208_000));
        assert_eq!(parse_rfc3339("2024-02-29 12:00:00"), None);
        assert_eq!(parse_rfc3339("soon"), None);
    }

    #[test]
    fn create_list_filter_delete() {
        let (_d, s) = store();
        s.create("ns", "a", labels(&[("k", "1")])).unwrap();
        s.create("ns", "b", labels(&[("k", "2")])).unwrap();
        s.create("other", "a", Labels::new()).unwrap();
        assert!(matches!(s.create("ns", "a", Labels::new()), Err(e) if e.kind() == ErrorKind::AlreadyExists));
        let all = s.list("ns", &AnyFilter::default()).unwrap();
        assert_eq!(all.iter().map(|l| l.id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        let f = AnyFilter::parse(&["labels.k==2"]).unwrap();
        assert_eq!(s.list("ns", &f).unwrap()[0].id, "b");
        let f = AnyFilter::parse(&["id==a"]).unwrap();
        assert_eq!(s.list("ns", &f).unwrap().len(), 1);
        s.delete("ns", "a").unwrap();
        assert!(matches!(s.delete("ns", "a"), Err(e) if e.kind() == ErrorKind::NotFound));
        assert_eq!(s.list("other", &AnyFilter::default()).unwrap().len(), 1);
        assert!(random_id().contains('-'));
        assert_ne!(random_id(), random_id());
    }

    #[test]
    fn resources() {
        let (_d, s) = store();
        s.create("ns", "l", Labels::new()).unwrap();
        s.create("ns", "l2", Labels::new()).unwrap();
        let c = Resource { id: D.into(), kind: "content".into() };
        let snap = Resource { id: "sn1".into(), kind: "snapshots/overlayfs".into() };
        s.add_resource("ns", "l", &c).unwrap();
        s.add_resource("ns", "l", &snap).unwrap();
        s.add_resource("ns", "l2", &c).unwrap();
        assert_eq!(s.list_resources("ns", "l").unwrap(), vec![c.clone(), snap.clone()]);
        assert!(matches!(
            s.add_resource("ns", "l", &Resource { id: "x".into(), kind: "content".into() }),
            Err(LeaseError::InvalidArgument(_))
        ));
        assert!(matches!(
            s.add_resource("ns", "l", &Resource { id: "x".into(), kind: "images".into() }),
            Err(LeaseError::Unsupported(_))
        ));
        assert!(matches!(s.add_resource("ns", "nope", &c), Err(e) if e.kind() == ErrorKind::NotFound));
        s.delete_resource("ns", "l", &c).unwrap();
        assert_eq!(s.list_resources("ns", "l").unwrap(), vec![snap]);
        s.delete("ns", "l").unwrap();
        assert!(matches!(s.list_resources("ns", "l"), Err(e) if e.kind() == ErrorKind::NotFound));
        // Re-created, it starts empty: deleting a lease dropped its resources.
        s.create("ns", "l", Labels::new()).unwrap();
        assert!(s.list_resources("ns", "l").unwrap().is_empty());
        assert_eq!(s.list_resources("ns", "l2").unwrap(), vec![c]);
    }

    #[test]
    fn expiry() {
        let (_d, s) = store();
        s.create("ns", "old", labels(&[(EXPIRE_LABEL, "2000-01-01T00:00:00Z")])).unwrap();
        s.create("ns", "new", labels(&[(EXPIRE_LABEL, "2999-01-01T00:00:00Z")])).unwrap();
        s.create("ns", "forever", Labels::new()).unwrap();
        let gone = s.expire(parse_rfc3339("2024-01-01T00:00:00Z").unwrap()).unwrap();
        assert_eq!(gone, vec![("ns".to_string(), "old".to_string())]);
        let left: Vec<_> = s.list("ns", &AnyFilter::default()).unwrap().into_iter().map(|l| l.id).collect();
        assert_eq!(left, ["forever", "new"]);
    }
}
