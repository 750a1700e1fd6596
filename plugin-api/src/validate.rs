//! containerd's validation rules for names, labels and digests, in one
//! place so that every plugin accepts and refuses the same input with the
//! same words.

/// The longest identifier containerd accepts (namespaces, lease ids, ...).
pub const MAX_IDENTIFIER: usize = 76;
/// The largest label (key and value together), in bytes.
pub const MAX_LABEL: usize = 4096;

const IDENTIFIER_RULE: &str = "^[A-Za-z0-9]+(?:[._-](?:[A-Za-z0-9]+))*$";

/// containerd's `identifiers.Validate`: `^[A-Za-z0-9]+(?:[._-](?:[A-Za-z0-9]+))*$`,
/// at most 76 characters.
pub fn identifier(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("identifier must not be empty".into());
    }
    if s.len() > MAX_IDENTIFIER {
        return Err(format!("identifier {s:?} greater than maximum length ({MAX_IDENTIFIER} characters)"));
    }
    // The first character must be alphanumeric, and so must the last.
    let mut after_separator = true;
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            after_separator = false;
        } else if matches!(c, '.' | '_' | '-') && !after_separator {
            after_separator = true;
        } else {
            return Err(format!("identifier {s:?} must match {IDENTIFIER_RULE}"));
        }
    }
    if after_separator {
        return Err(format!("identifier {s:?} must match {IDENTIFIER_RULE}"));
    }
    Ok(())
}

/// containerd's `labels.Validate`: a non-empty key, and key and value
/// together at most 4096 bytes.
pub fn label(k: &str, v: &str) -> Result<(), String> {
    if k.is_empty() {
        return Err("label key must not be empty".into());
    }
    if k.len() + v.len() > MAX_LABEL {
        let head: String = k.chars().take(64).collect();
        return Err(format!(
            "label key and value length ({} bytes) greater than maximum size ({MAX_LABEL} bytes), key: {head}",
            k.len() + v.len()
        ));
    }
    Ok(())
}

/// [`label`] for each label.
pub fn labels<'a>(labels: impl IntoIterator<Item = (&'a String, &'a String)>) -> Result<(), String> {
    labels.into_iter().try_for_each(|(k, v)| label(k, v))
}

/// The hex length of a registered digest algorithm.
pub fn digest_hex_len(algorithm: &str) -> Option<usize> {
    match algorithm {
        "sha256" => Some(64),
        "sha384" => Some(96),
        "sha512" => Some(128),
        _ => None,
    }
}

/// An OCI digest, `algorithm:encoded`, for a registered algorithm with
/// lower-case hex of the right length. The error is the reason.
pub fn digest(s: &str) -> Result<(), &'static str> {
    let (alg, hex) = s.split_once(':').ok_or("invalid checksum digest format")?;
    let want = digest_hex_len(alg).ok_or("unsupported digest algorithm")?;
    if hex.len() != want {
        return Err("invalid checksum digest length");
    }
    if !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err("invalid checksum digest format");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        for ok in ["a", "default", "k8s.io", "a-b_c.d", "A1", &"x".repeat(76)] {
            assert!(identifier(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "a..b", "a b", "ns/x", "é", &"x".repeat(77)] {
            assert!(identifier(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn labels_and_digests() {
        assert!(label("k", "v").is_ok());
        assert!(label("", "v").is_err());
        assert!(label("k", &"v".repeat(4096)).is_err());
        assert!(digest(&format!("sha256:{}", "a".repeat(64))).is_ok());
        assert_eq!(digest(&format!("sha256:{}", "A".repeat(64))), Err("invalid checksum digest format"));
        assert_eq!(digest("sha256:abc"), Err("invalid checksum digest length"));
        assert_eq!(digest("md5:abc"), Err("unsupported digest algorithm"));
        assert_eq!(digest("nocolon"), Err("invalid checksum digest format"));
    }
}
