//! The transfer plugin's names for what it leases and writes; the lease
//! itself is [`crated_plugin_api::lease`].

use std::time::{SystemTime, UNIX_EPOCH};

pub use crated_plugin_api::lease::{rfc3339, LeaseGuard, EXPIRE_LABEL};

/// A name unique enough for leases and ingest references:
/// `<nanos>-<random>`, as containerd's unique parts.
pub fn unique_part() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    format!("{nanos}-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}
