//! OCI content digests (`algorithm:hex`), validated like go-digest.
//!
//! The store hashes with sha256 only (containerd's canonical algorithm);
//! sha384 and sha512 digests are still *valid* (an `Info` on one is
//! `NotFound`, a commit expecting one fails its digest check), anything
//! else is malformed.

use std::{fmt, str::FromStr};

use sha2::{Digest as _, Sha256};

/// A validated digest such as `sha256:e3b0c442...`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

/// Why a string is not a digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid digest {input:?}: {reason}")]
pub struct DigestError {
    pub input: String,
    pub reason: &'static str,
}

impl Digest {
    /// Parses and validates `algorithm:hex` (lower-case hex of the right
    /// length for the algorithm).
    pub fn parse(s: &str) -> Result<Digest, DigestError> {
        crated_plugin_api::validate::digest(s).map_err(|reason| DigestError { input: s.to_string(), reason })?;
        Ok(Digest(s.to_string()))
    }

    /// The sha256 digest of a finished hash.
    pub fn from_sha256(hasher: Sha256) -> Digest {
        Digest(format!("sha256:{}", hex::encode(hasher.finalize())))
    }

    /// The sha256 digest of `data`.
    pub fn sha256_of(data: &[u8]) -> Digest {
        Digest::from_sha256(Sha256::new_with_prefix(data))
    }

    pub fn algorithm(&self) -> &str {
        self.0.split_once(':').map(|(a, _)| a).unwrap_or_default()
    }

    pub fn hex(&self) -> &str {
        self.0.split_once(':').map(|(_, h)| h).unwrap_or_default()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Digest::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_and_rejects_malformed() {
        let empty = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let d = Digest::parse(empty).unwrap();
        assert_eq!(d.algorithm(), "sha256");
        assert_eq!(d, Digest::sha256_of(b""));
        assert!(Digest::parse(&format!("sha512:{}", "a".repeat(128))).is_ok());
        for bad in [
            "",
            "sha256",
            "sha256:",
            "sha256:abc",
            "md5:d41d8cd98f00b204e9800998ecf8427e",
            &empty.to_uppercase(),
            &format!("sha256:{}", "g".repeat(64)),
            "../../etc/passwd",
        ] {
            assert!(Digest::parse(bad).is_err(), "{bad:?} must be rejected");
        }
    }
}
