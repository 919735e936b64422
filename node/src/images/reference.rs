//! Parsing a pod's `image` into where it lives (see the rules in the
//! module docs of [`super`]).

use std::net::IpAddr;
use std::path::PathBuf;

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Source {
    /// A component file on this machine.
    Local(PathBuf),
    /// An OCI registry: a named host or the built-in one.
    Registry(Remote),
}

/// An image in an OCI registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Remote {
    /// `host[:port]`; `None` for the control plane's built-in registry.
    pub(super) host: Option<String>,
    /// `team/app`.
    pub(super) repository: String,
    /// The tag, `latest` when neither a tag nor a digest is given.
    pub(super) tag: Option<String>,
    /// The pinned manifest digest (`sha256:<hex>`).
    pub(super) digest: Option<String>,
}

impl Remote {
    /// The key the cache remembers this reference under. The built-in
    /// registry is one name whatever port it listens on; a pinned digest
    /// alone identifies content, so the tag beside it is not part of the key.
    pub(super) fn cache_key(&self) -> String {
        let host = self.host.as_deref().unwrap_or("@builtin");
        match (&self.tag, &self.digest) {
            (_, Some(digest)) => format!("{host}/{}@{digest}", self.repository),
            (Some(tag), None) => format!("{host}/{}:{tag}", self.repository),
            (None, None) => format!("{host}/{}:latest", self.repository),
        }
    }

    /// The cache key naming a manifest digest of this repository.
    pub(super) fn digest_key(&self, manifest_digest: &str) -> String {
        let host = self.host.as_deref().unwrap_or("@builtin");
        format!("{host}/{}@{manifest_digest}", self.repository)
    }

    /// Whether the registry is on this machine's loopback, where plain HTTP
    /// is used (as Docker treats `localhost` registries as insecure).
    pub(super) fn is_loopback(&self) -> bool {
        self.host.as_deref().is_some_and(host_is_loopback)
    }
}

/// Whether `host[:port]` names a loopback address.
pub(super) fn host_is_loopback(host_port: &str) -> bool {
    let host = if let Some(rest) = host_port.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        host_port.split(':').next().unwrap_or_default()
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<IpAddr>()
            .is_ok_and(|ip: IpAddr| ip.is_loopback())
}

/// Parses `image` (already trimmed by nothing: whitespace is an error).
pub(super) fn parse(image: &str) -> Result<Source, String> {
    if image.is_empty() {
        return Err("the image is empty".into());
    }
    if image.trim() != image || image.chars().any(char::is_whitespace) {
        return Err("the image contains whitespace".into());
    }
    if let Some(path) = image.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err("a file:// image needs an absolute path (file:///path.wasm)".into());
        }
        return Ok(Source::Local(PathBuf::from(path)));
    }
    if image.starts_with('/') {
        return Ok(Source::Local(PathBuf::from(image)));
    }
    let (name, digest) = match image.split_once('@') {
        Some((name, digest)) => {
            check_digest(digest)?;
            (name, Some(digest.to_owned()))
        }
        None => (image, None),
    };
    // A tag follows the last ':' unless that ':' is a port (a '/' follows).
    let (name, tag) = match name.rsplit_once(':') {
        Some((before, tag)) if !tag.contains('/') => {
            check_tag(tag)?;
            (before, Some(tag.to_owned()))
        }
        _ => (name, None),
    };
    let (host, repository) = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            check_host(first)?;
            (Some(first.to_owned()), rest)
        }
        _ => (None, name),
    };
    check_repository(repository)?;
    let tag = match (&tag, &digest) {
        (None, None) => Some("latest".to_owned()),
        _ => tag,
    };
    Ok(Source::Registry(Remote {
        host,
        repository: repository.to_owned(),
        tag,
        digest,
    }))
}

fn check_digest(digest: &str) -> Result<(), String> {
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| format!("digest {digest:?} is not a sha256 digest (sha256:<64 hex>)"))?;
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(format!(
            "digest {digest:?} is not sha256: followed by 64 lowercase hex digits"
        ));
    }
    Ok(())
}

fn check_tag(tag: &str) -> Result<(), String> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tag {tag:?} is invalid (letters, digits, '_', '.', '-'; at most 128)"
        ))
    }
}

fn check_host(host: &str) -> Result<(), String> {
    let ok = host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
    if ok {
        Ok(())
    } else {
        Err(format!("registry host {host:?} is invalid"))
    }
}

/// Path components: lowercase letters and digits, separated by `.`, `_`,
/// `__` or runs of `-` (the distribution spec's grammar).
fn check_repository(repository: &str) -> Result<(), String> {
    let component_ok = |c: &str| {
        let bytes = c.as_bytes();
        !bytes.is_empty()
            && bytes.iter().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            })
            && bytes[0].is_ascii_alphanumeric()
            && bytes[bytes.len() - 1].is_ascii_alphanumeric()
            && !c.contains("..")
            && !c.contains("___")
    };
    if repository.len() <= 255 && repository.split('/').all(component_ok) {
        Ok(())
    } else {
        Err(format!(
            "repository {repository:?} is invalid (lowercase letters, digits and separators . _ - between them, path components joined by /)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(image: &str) -> Remote {
        match parse(image) {
            Ok(Source::Registry(remote)) => remote,
            other => panic!("{image}: {other:?}"),
        }
    }

    #[test]
    fn builtin_names() {
        let r = remote("hello:v1");
        assert_eq!(r.host, None);
        assert_eq!(r.repository, "hello");
        assert_eq!(r.tag.as_deref(), Some("v1"));
        let r = remote("team/app");
        assert_eq!(r.host, None);
        assert_eq!(r.repository, "team/app");
        assert_eq!(r.tag.as_deref(), Some("latest"));
        assert_eq!(r.cache_key(), "@builtin/team/app:latest");
    }

    #[test]
    fn registry_hosts() {
        let r = remote("localhost:5000/app:v1");
        assert_eq!(r.host.as_deref(), Some("localhost:5000"));
        assert_eq!(r.repository, "app");
        assert!(r.is_loopback());
        let r = remote("localhost/app");
        assert_eq!(r.host.as_deref(), Some("localhost"));
        let r = remote("ghcr.io/org/app:1.0");
        assert_eq!(r.host.as_deref(), Some("ghcr.io"));
        assert_eq!(r.repository, "org/app");
        assert!(!r.is_loopback());
        let r = remote("127.0.0.1:5000/app");
        assert!(r.is_loopback());
        assert_eq!(r.tag.as_deref(), Some("latest"));
        let digest = format!("sha256:{}", "ab".repeat(32));
        let r = remote(&format!("127.0.0.1:5000/app:v2@{digest}"));
        assert_eq!(r.tag.as_deref(), Some("v2"));
        assert_eq!(r.digest.as_deref(), Some(digest.as_str()));
        assert_eq!(r.cache_key(), format!("127.0.0.1:5000/app@{digest}"));
        let r = remote(&format!("app@{digest}"));
        assert_eq!(r.tag, None);
    }

    #[test]
    fn local_files() {
        assert_eq!(
            parse("file:///tmp/a.wasm"),
            Ok(Source::Local(PathBuf::from("/tmp/a.wasm")))
        );
        assert_eq!(
            parse("/tmp/a.wasm"),
            Ok(Source::Local(PathBuf::from("/tmp/a.wasm")))
        );
        assert!(parse("file://relative.wasm").is_err());
    }

    #[test]
    fn invalid() {
        for bad in [
            "",
            "Hello:v1",
            "app:",
            "app@sha256:abc",
            "app@md5:00",
            " app",
            "a//b",
            "app:v1:v2/x:",
            "-app",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be invalid");
        }
    }

    #[test]
    fn loopback_hosts() {
        assert!(host_is_loopback("localhost:5000"));
        assert!(host_is_loopback("127.0.0.2"));
        assert!(host_is_loopback("[::1]:5000"));
        assert!(!host_is_loopback("registry.example:5000"));
        assert!(!host_is_loopback("10.0.0.1:5000"));
    }
}
