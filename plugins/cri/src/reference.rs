//! Image references as the CRI names them, with the rules of
//! distribution's `ParseDockerRef` that containerd's CRI applies to every
//! name a kubelet sends: a name without a domain is Docker Hub's
//! (`busybox` is `docker.io/library/busybox`), no tag means `latest`, and a
//! reference with a digest keeps only the digest. What comes back is
//! split into its parts so that a repo tag and a repo digest can be told
//! apart without parsing a string twice.

/// A parsed, normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `domain/path`, e.g. `docker.io/library/busybox`.
    pub name: String,
    pub tag: Option<String>,
    /// `algorithm:hex`.
    pub digest: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    #[error("invalid reference format")]
    Invalid,
    #[error("invalid reference format: repository name must be lowercase")]
    Uppercase,
    #[error("invalid repository name (64 hex characters), cannot specify 64-byte hexadecimal strings")]
    HexName,
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A path component: lowercase alphanumerics separated by `.`, `_`, `__`
/// or runs of `-`.
fn valid_component(c: &str) -> bool {
    !c.is_empty()
        && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
        && c.as_bytes()[0].is_ascii_alphanumeric()
        && c.as_bytes()[c.len() - 1].is_ascii_alphanumeric()
}

fn valid_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && t.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && (t.as_bytes()[0].is_ascii_alphanumeric() || t.as_bytes()[0] == b'_')
}

fn valid_digest(d: &str) -> bool {
    match d.split_once(':') {
        Some((alg, hex)) => {
            !alg.is_empty()
                && alg
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'+' | b'.' | b'_' | b'-'))
                && hex.len() >= 32
                && hex.bytes().all(|b| b.is_ascii_hexdigit())
        }
        None => false,
    }
}

impl Reference {
    /// Parses and normalises `s` (`ParseDockerRef`).
    pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
        if s.is_empty() {
            return Err(ReferenceError::Invalid);
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) if valid_digest(d) => (r, Some(d.to_string())),
            Some(_) => return Err(ReferenceError::Invalid),
            None => (s, None),
        };
        let slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[slash..].rfind(':') {
            Some(i) => (&rest[..slash + i], Some(&rest[slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag {
            if !valid_tag(t) {
                return Err(ReferenceError::Invalid);
            }
        }
        if is_hex64(name) {
            return Err(ReferenceError::HexName);
        }
        let (domain, path) = match name.split_once('/') {
            Some((d, p)) if d.contains(['.', ':']) || d == "localhost" || d.bytes().any(|b| b.is_ascii_uppercase()) => {
                (d.to_string(), p.to_string())
            }
            _ => ("docker.io".to_string(), name.to_string()),
        };
        let path = if domain == "docker.io" && !path.contains('/') { format!("library/{path}") } else { path };
        if path.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(ReferenceError::Uppercase);
        }
        if domain.is_empty() || !path.split('/').all(valid_component) {
            return Err(ReferenceError::Invalid);
        }
        let name = format!("{domain}/{path}");
        // A digest pins the content: the tag beside it says nothing more.
        let tag = match (&digest, tag) {
            (Some(_), _) => None,
            (None, Some(t)) => Some(t.to_string()),
            (None, None) => Some("latest".to_string()),
        };
        Ok(Reference { name, tag, digest })
    }

    /// `name@digest`: the repo digest of an image pulled by this name.
    pub fn with_digest(&self, digest: &str) -> String {
        format!("{}@{digest}", self.name)
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// Whether `s` is an image id as the CRI uses it (`sha256:<64 hex>`).
pub fn is_image_id(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(is_hex64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn normalises_as_parse_docker_ref() {
        let cases = [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("library/busybox", "docker.io/library/busybox:latest"),
            ("user/app:v1", "docker.io/user/app:v1"),
            ("registry.k8s.io/pause:3.6", "registry.k8s.io/pause:3.6"),
            ("127.0.0.1:5000/test/x:1", "127.0.0.1:5000/test/x:1"),
            ("localhost/x", "localhost/x:latest"),
        ];
        for (input, want) in cases {
            assert_eq!(Reference::parse(input).unwrap().to_string(), want, "{input}");
        }
        let r = Reference::parse(&format!("busybox:1@{D}")).unwrap();
        assert_eq!(r.to_string(), format!("docker.io/library/busybox@{D}"));
        assert_eq!((r.tag, r.digest.as_deref()), (None, Some(D)));
    }

    #[test]
    fn refuses_what_docker_refuses() {
        assert_eq!(Reference::parse("Busybox"), Err(ReferenceError::Uppercase));
        assert_eq!(Reference::parse(&D[7..]), Err(ReferenceError::HexName));
        for bad in ["", "a:b:c", "x@sha256:zz", "-x", "x/", "x:-1", "x y"] {
            assert!(Reference::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ids() {
        assert!(is_image_id(D));
        assert!(!is_image_id("sha256:abc"));
        assert!(!is_image_id("busybox"));
    }
}
