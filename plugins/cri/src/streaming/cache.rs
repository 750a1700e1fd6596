//! The stream server's request cache, as containerd's `requestCache`: a
//! request is kept under a random single-use token for a minute, at most
//! 1000 at once (a full cache drops its oldest entry if that has expired,
//! and refuses otherwise).

use std::{
    collections::VecDeque,
    sync::Mutex,
    time::{Duration, Instant},
};

use base64::Engine;
use k8s_cri::v1::{AttachRequest, ExecRequest, PortForwardRequest};

/// containerd's `cacheTTL`.
pub const TTL: Duration = Duration::from_secs(60);
/// containerd's `maxInFlight`.
pub const MAX_IN_FLIGHT: usize = 1000;
/// containerd's `tokenLen`: the token's length in base64 characters.
pub const TOKEN_LEN: usize = 8;

#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Exec(ExecRequest),
    Attach(AttachRequest),
    PortForward(PortForwardRequest),
}

impl Request {
    /// The URL path's first segment for this request.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Exec(_) => "exec",
            Request::Attach(_) => "attach",
            Request::PortForward(_) => "portforward",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("too many cache in flight")]
pub struct CacheFull;

struct Entry {
    token: String,
    request: Request,
    expires: Instant,
}

/// Newest first, as containerd's list.
#[derive(Default)]
pub struct Cache {
    entries: Mutex<VecDeque<Entry>>,
}

fn token() -> String {
    // 6 random bytes are 8 URL-safe base64 characters.
    let bytes = uuid::Uuid::new_v4().into_bytes();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes[..TOKEN_LEN * 6 / 8])
}

impl Cache {
    pub fn insert(&self, request: Request) -> Result<String, CacheFull> {
        self.insert_at(request, Instant::now())
    }

    fn insert_at(&self, request: Request, now: Instant) -> Result<String, CacheFull> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_IN_FLIGHT {
            match entries.back() {
                Some(oldest) if oldest.expires <= now => {
                    entries.pop_back();
                }
                _ => return Err(CacheFull),
            }
        }
        let mut t = token();
        while entries.iter().any(|e| e.token == t) {
            t = token();
        }
        entries.push_front(Entry { token: t.clone(), request, expires: now + TTL });
        Ok(t)
    }

    /// The request under `token`, removed; `None` when unknown or expired.
    pub fn consume(&self, token: &str) -> Option<Request> {
        self.consume_at(token, Instant::now())
    }

    fn consume_at(&self, token: &str, now: Instant) -> Option<Request> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let i = entries.iter().position(|e| e.token == token)?;
        let entry = entries.remove(i)?;
        (entry.expires > now).then_some(entry.request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec() -> Request {
        Request::Exec(ExecRequest { container_id: "c".into(), cmd: vec!["ls".into()], ..Default::default() })
    }

    #[test]
    fn tokens_are_single_use_and_expire() {
        let cache = Cache::default();
        let now = Instant::now();
        let t = cache.insert_at(exec(), now).unwrap();
        assert_eq!(t.len(), TOKEN_LEN);
        assert!(t.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'), "{t}");
        assert_eq!(cache.consume_at(&t, now), Some(exec()));
        assert_eq!(cache.consume_at(&t, now), None, "used once");

        let t = cache.insert_at(exec(), now).unwrap();
        assert_eq!(cache.consume_at(&t, now + TTL), None, "expired after a minute");
        assert_eq!(cache.consume_at("nope", now), None);
    }

    #[test]
    fn a_full_cache_drops_only_expired_entries() {
        let cache = Cache::default();
        let now = Instant::now();
        let first = cache.insert_at(exec(), now).unwrap();
        for _ in 1..MAX_IN_FLIGHT {
            cache.insert_at(exec(), now + Duration::from_secs(1)).unwrap();
        }
        assert!(cache.insert_at(exec(), now + Duration::from_secs(2)).is_err());
        // Once the oldest has expired, it makes room.
        let t = cache.insert_at(exec(), now + TTL).unwrap();
        assert_eq!(cache.consume_at(&first, now), None);
        assert!(cache.consume_at(&t, now + TTL).is_some());
    }
}
