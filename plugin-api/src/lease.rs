//! A lease held for the length of an operation, as containerd's client
//! `WithLease`: what the operation makes (blobs, snapshots) is added to
//! it, so a garbage collection running meanwhile takes nothing half made;
//! it expires by itself (`containerd.io/gc.expire`) if the daemon dies
//! before deleting it. The transfer plugin holds one per transfer, the CRI
//! plugin one per sandbox or container it creates.

use std::{
    collections::HashMap,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use containerd_client::services::v1::{CreateRequest, CreateResponse, DeleteRequest};

use crate::{content::LEASE_HEADER, service::Call, Host, Status};

const LEASES: &str = "/containerd.services.leases.v1.Leases";
pub const EXPIRE_LABEL: &str = "containerd.io/gc.expire";
/// How long a lease outlives a daemon that died holding it.
const LEASE_TTL: Duration = Duration::from_secs(24 * 3600);

/// A lease to delete with [`LeaseGuard::release`] at the end.
pub struct LeaseGuard {
    host: Host,
    namespace: String,
    pub id: String,
}

/// RFC 3339 (UTC, seconds) of a time since the epoch.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    crate::duration::rfc3339_nano(secs, 0)
}

impl LeaseGuard {
    /// Creates the lease `id` in `namespace`, expiring in a day.
    pub async fn create(host: &Host, namespace: &str, id: String) -> Result<LeaseGuard, Status> {
        let labels = HashMap::from([(EXPIRE_LABEL.to_string(), rfc3339(SystemTime::now() + LEASE_TTL))]);
        let call = Host::call(&format!("{LEASES}/Create"), Some(namespace));
        let _: CreateResponse = host
            .unary(&call, &CreateRequest { id: id.clone(), labels })
            .await
            .map_err(|s| s.context("failed to create lease"))?;
        Ok(LeaseGuard { host: host.clone(), namespace: namespace.to_string(), id })
    }

    /// A call of `method` in the lease's namespace whose results the lease
    /// holds.
    pub fn call(&self, method: &str) -> Call {
        let mut call = Host::call(method, Some(&self.namespace));
        call.headers.push((LEASE_HEADER.to_string(), self.id.clone()));
        call
    }

    /// Deletes the lease; what it held stays if something else references it.
    pub async fn release(self) {
        let call = Host::call(&format!("{LEASES}/Delete"), Some(&self.namespace));
        let req = DeleteRequest { id: self.id.clone(), sync: false };
        if let Err(s) = self.host.unary::<_, ()>(&call, &req).await {
            tracing::warn!(lease = %self.id, "failed to delete lease: {}", s.message);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_of_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(1_577_836_800)), "2020-01-01T00:00:00Z");
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(951_825_600 + 3661)), "2000-02-29T13:01:01Z");
    }
}
