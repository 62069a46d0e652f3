//! Image references: `host[:port]/repo[:tag][@digest]` with Docker's normalisation, and
//! `oci:<dir>[:<tag>]` for an OCI image layout on local disk.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;

use crate::name::{valid_domain, validate_repository, validate_tag};
use crate::{Digest, OciError};

pub const DOCKER_HUB_DOMAIN: &str = "docker.io";
/// Where Docker Hub's registry API actually lives.
pub const DOCKER_HUB_HOST: &str = "registry-1.docker.io";
/// The key `docker login` stores Docker Hub credentials under.
pub const DOCKER_HUB_LEGACY_KEY: &str = "https://index.docker.io/v1/";
/// Every host name Docker Hub answers to; credentials stored under one serve them all. The one
/// list for the upstream client's docker config lookups and the builder's `additional` auth.
pub const DOCKER_HUB_ALIASES: [&str; 3] = [DOCKER_HUB_DOMAIN, "index.docker.io", DOCKER_HUB_HOST];

/// Whether `domain` (a host name, any case) is one of Docker Hub's names.
pub fn is_docker_hub(domain: &str) -> bool {
    DOCKER_HUB_ALIASES
        .iter()
        .any(|alias| alias.eq_ignore_ascii_case(domain))
}

/// A normalised registry image reference.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// `host[:port]`, with Docker Hub spelled `docker.io`.
    pub domain: String,
    /// The repository path inside the registry, e.g. `library/busybox`.
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl Reference {
    /// The host[:port] to talk HTTP to.
    pub fn api_host(&self) -> &str {
        if self.domain == DOCKER_HUB_DOMAIN {
            DOCKER_HUB_HOST
        } else {
            &self.domain
        }
    }

    /// What to ask the registry's manifest endpoint for: the digest if pinned, else the tag
    /// (defaulting to `latest`).
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".into(),
        }
    }

    /// `domain/repository` without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.domain, self.repository)
    }

    /// The same reference pinned to `digest` (tag dropped).
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference {
            domain: self.domain.clone(),
            repository: self.repository.clone(),
            tag: None,
            digest: Some(digest),
        }
    }
}

/// Whether a registry host defaults to plain HTTP (as containerd does for loopback hosts).
pub fn is_loopback_host(domain: &str) -> bool {
    let host = if let Some(rest) = domain.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        domain.split(':').next().unwrap_or("")
    };
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl FromStr for Reference {
    type Err = OciError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| OciError::InvalidReference(s.to_string(), why.to_string());
        if s.is_empty() {
            return Err(bad("empty"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (
                r,
                Some(d.parse::<Digest>().map_err(|e| bad(&e.to_string()))?),
            ),
            None => (s, None),
        };
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (path, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag {
            validate_tag(t).map_err(|e| bad(&e.to_string()))?;
        }
        let (domain, repository) = match path.split_once('/') {
            Some((first, remainder))
                if first.contains('.')
                    || first.contains(':')
                    || first == "localhost"
                    || first.starts_with('[') =>
            {
                if !valid_domain(first) {
                    return Err(bad("invalid registry domain"));
                }
                let domain = if first == "index.docker.io" {
                    DOCKER_HUB_DOMAIN
                } else {
                    first
                };
                (domain.to_string(), remainder.to_string())
            }
            _ => (DOCKER_HUB_DOMAIN.to_string(), path.to_string()),
        };
        let repository = if domain == DOCKER_HUB_DOMAIN && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        validate_repository(&repository).map_err(|e| bad(&e.to_string()))?;
        if domain.len() + 1 + repository.len() > crate::name::MAX_NAME_LEN {
            return Err(bad("name longer than 255 characters"));
        }
        Ok(Reference {
            domain,
            repository,
            tag: tag.map(str::to_string),
            digest,
        })
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Where an image comes from: a registry, or an OCI image layout directory.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum ImageRef {
    Registry(Reference),
    Layout {
        dir: PathBuf,
        tag: Option<String>,
        digest: Option<Digest>,
    },
}

impl ImageRef {
    pub const LAYOUT_PREFIX: &'static str = "oci:";

    /// The same image pinned to `digest`.
    pub fn with_digest(&self, digest: Digest) -> ImageRef {
        match self {
            ImageRef::Registry(r) => ImageRef::Registry(r.with_digest(digest)),
            ImageRef::Layout { dir, .. } => ImageRef::Layout {
                dir: dir.clone(),
                tag: None,
                digest: Some(digest),
            },
        }
    }

    pub fn digest(&self) -> Option<&Digest> {
        match self {
            ImageRef::Registry(r) => r.digest.as_ref(),
            ImageRef::Layout { digest, .. } => digest.as_ref(),
        }
    }
}

impl FromStr for ImageRef {
    type Err = OciError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some(rest) = s.strip_prefix(Self::LAYOUT_PREFIX) else {
            return Ok(ImageRef::Registry(s.parse()?));
        };
        let bad = |why: &str| OciError::InvalidReference(s.to_string(), why.to_string());
        let (rest, digest) = match rest.rsplit_once('@') {
            Some((r, d)) => (
                r,
                Some(d.parse::<Digest>().map_err(|e| bad(&e.to_string()))?),
            ),
            None => (rest, None),
        };
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (dir, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (
                &rest[..last_slash + i],
                Some(rest[last_slash + i + 1..].to_string()),
            ),
            None => (rest, None),
        };
        if dir.is_empty() {
            return Err(bad("empty layout directory"));
        }
        if let Some(t) = &tag {
            if t.is_empty() {
                return Err(bad("empty tag"));
            }
        }
        Ok(ImageRef::Layout {
            dir: PathBuf::from(dir),
            tag,
            digest,
        })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRef::Registry(r) => fmt::Display::fmt(r, f),
            ImageRef::Layout { dir, tag, digest } => {
                write!(f, "oci:{}", dir.display())?;
                if let Some(t) = tag {
                    write!(f, ":{t}")?;
                }
                if let Some(d) = digest {
                    write!(f, "@{d}")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Reference {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn docker_hub_normalisation() {
        assert_eq!(r("alpine").to_string(), "docker.io/library/alpine");
        assert_eq!(
            r("alpine:latest").to_string(),
            "docker.io/library/alpine:latest"
        );
        assert_eq!(
            r("gitpod/workspace-full:latest").name(),
            "docker.io/gitpod/workspace-full"
        );
        assert_eq!(
            r("index.docker.io/library/alpine").name(),
            "docker.io/library/alpine"
        );
        assert_eq!(r("alpine").api_host(), "registry-1.docker.io");
        assert_eq!(r("alpine").manifest_reference(), "latest");
    }

    #[test]
    fn registries_with_ports_and_digests() {
        let x = r("127.0.0.1:5000/base:v1@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(x.domain, "127.0.0.1:5000");
        assert_eq!(x.repository, "base");
        assert_eq!(x.tag.as_deref(), Some("v1"));
        assert!(x.manifest_reference().starts_with("sha256:"));
        assert_eq!(r("localhost/foo").domain, "localhost");
        assert_eq!(r("[::1]:5000/a/b:c").domain, "[::1]:5000");
        assert_eq!(
            r("eu.gcr.io/gitpod-core-dev/build/base-images:abc").repository,
            "gitpod-core-dev/build/base-images"
        );
    }

    #[test]
    fn rejects_bad_references() {
        for bad in [
            "",
            "UPPER/case",
            "a:b:c",
            "a@sha256:bad",
            "host:port/x",
            "a/b:",
            ":tag",
        ] {
            assert!(bad.parse::<Reference>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn loopback_hosts() {
        for h in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:5000",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in ["docker.io", "10.0.0.1:5000", "example.com:5000"] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }

    #[test]
    fn layout_refs() {
        let l: ImageRef = "oci:examples/quickstart/base:latest".parse().unwrap();
        assert_eq!(
            l,
            ImageRef::Layout {
                dir: "examples/quickstart/base".into(),
                tag: Some("latest".into()),
                digest: None
            }
        );
        let l: ImageRef = "oci:/abs/dir".parse().unwrap();
        assert!(matches!(l, ImageRef::Layout { tag: None, .. }));
        assert_eq!(l.to_string(), "oci:/abs/dir");
        assert!("oci:".parse::<ImageRef>().is_err());
        assert!(matches!(
            "busybox".parse::<ImageRef>().unwrap(),
            ImageRef::Registry(_)
        ));
    }
}
