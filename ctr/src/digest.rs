//! `digest.Parse` / `Digest.Validate` from opencontainers/go-digest, with
//! the same error texts.

pub const ERR_INVALID_FORMAT: &str = "invalid checksum digest format";
pub const ERR_INVALID_LENGTH: &str = "invalid checksum digest length";
pub const ERR_UNSUPPORTED: &str = "unsupported digest algorithm";

/// `^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$`
fn matches_digest_regexp(s: &str) -> bool {
    let Some((alg, enc)) = s.split_once(':') else {
        return false;
    };
    let comp_ok = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let alg_ok = alg.split(['.', '+', '_', '-']).all(comp_ok);
    let enc_ok = !enc.is_empty() && enc.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'=' | b'_' | b'-'));
    alg_ok && enc_ok
}

/// Validate a digest string the way go-digest does.
pub fn validate(s: &str) -> Result<(), &'static str> {
    let i = match s.find(':') {
        Some(i) if i > 0 && i + 1 != s.len() => i,
        _ => return Err(ERR_INVALID_FORMAT),
    };
    let (alg, enc) = (&s[..i], &s[i + 1..]);
    let hex_len = match alg {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err(if matches_digest_regexp(s) { ERR_UNSUPPORTED } else { ERR_INVALID_FORMAT }),
    };
    if enc.len() != hex_len {
        return Err(ERR_INVALID_LENGTH);
    }
    if enc.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        Ok(())
    } else {
        Err(ERR_INVALID_FORMAT)
    }
}

/// `digest.Parse`: the digest if valid, else go-digest's error.
pub fn parse(s: &str) -> anyhow::Result<String> {
    validate(s).map_err(|e| anyhow::anyhow!(e))?;
    Ok(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    #[test]
    fn validates_like_go_digest() {
        assert_eq!(validate(&format!("sha256:{H}")), Ok(()));
        assert_eq!(validate(""), Err(ERR_INVALID_FORMAT));
        assert_eq!(validate("foo"), Err(ERR_INVALID_FORMAT));
        assert_eq!(validate(":abc"), Err(ERR_INVALID_FORMAT));
        assert_eq!(validate("sha256:"), Err(ERR_INVALID_FORMAT));
        assert_eq!(validate("sha256:abc"), Err(ERR_INVALID_LENGTH));
        assert_eq!(validate(&format!("sha256:{}", H.to_uppercase())), Err(ERR_INVALID_FORMAT));
        assert_eq!(validate("md5:abc"), Err(ERR_UNSUPPORTED));
        assert_eq!(validate("sha256+b64u:abc"), Err(ERR_UNSUPPORTED));
        assert_eq!(validate("foo+:abc"), Err(ERR_INVALID_FORMAT));
        assert_eq!(validate("Foo:abc"), Err(ERR_INVALID_FORMAT));
        assert_eq!(validate("foo:a b"), Err(ERR_INVALID_FORMAT));
    }
}
