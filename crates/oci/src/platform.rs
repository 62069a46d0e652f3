//! Platforms (`os/arch[/variant]`) with containerd's normalisation and index entry selection.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::OciError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    #[serde(
        rename = "os.features",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_features: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Platform {
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Self {
        Platform {
            architecture: architecture.into(),
            os: os.into(),
            variant: variant.map(str::to_string),
            ..Default::default()
        }
    }

    pub fn linux_amd64() -> Self {
        Platform::new("linux", "amd64", None)
    }

    /// (os, architecture, variant) in containerd's normal form, e.g. `aarch64` → `arm64/v8`.
    pub fn normalized(&self) -> (String, String, String) {
        let os = self.os.to_ascii_lowercase();
        let variant = self
            .variant
            .clone()
            .unwrap_or_default()
            .to_ascii_lowercase();
        let (arch, variant) = match self.architecture.to_ascii_lowercase().as_str() {
            "x86_64" | "x86-64" | "amd64" => (
                "amd64".to_string(),
                if variant == "v1" {
                    String::new()
                } else {
                    variant
                },
            ),
            "aarch64" | "arm64" => (
                "arm64".to_string(),
                if variant.is_empty() || variant == "8" {
                    "v8".into()
                } else {
                    variant
                },
            ),
            "armhf" => ("arm".to_string(), "v7".to_string()),
            "armel" => ("arm".to_string(), "v6".to_string()),
            "arm" => (
                "arm".to_string(),
                if variant.is_empty() {
                    "v7".into()
                } else {
                    variant
                },
            ),
            "i386" | "386" => ("386".to_string(), variant),
            other => (other.to_string(), variant),
        };
        (os, arch, variant)
    }

    /// Whether an image of platform `candidate` can serve a request for `self`.
    /// An unspecified variant in `self` accepts any variant of the same os/architecture.
    pub fn matches(&self, candidate: &Platform) -> bool {
        let (o1, a1, v1) = self.normalized();
        let (o2, a2, v2) = candidate.normalized();
        o1 == o2 && a1 == a2 && (v1 == v2 || self.variant.is_none())
    }
}

impl FromStr for Platform {
    type Err = OciError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &&str| {
            !p.is_empty()
                && p.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-' || c == b'.')
        };
        match parts.as_slice() {
            [os, arch] if ok(os) && ok(arch) => Ok(Platform::new(os, arch, None)),
            [os, arch, variant] if ok(os) && ok(arch) && ok(variant) => {
                Ok(Platform::new(os, arch, Some(variant)))
            }
            _ => Err(OciError::InvalidPlatform(s.into())),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Descriptor, Digest};

    fn entry(p: Option<&str>, n: u8) -> Descriptor {
        let mut d = Descriptor::new(crate::media::OCI_MANIFEST, Digest::sha256_of(&[n]), 1);
        d.platform = p.map(|p| p.parse().unwrap());
        d
    }

    #[test]
    fn parse_and_display() {
        assert_eq!(
            "linux/arm64/v8".parse::<Platform>().unwrap().to_string(),
            "linux/arm64/v8"
        );
        assert!("linux".parse::<Platform>().is_err());
        assert!("linux//".parse::<Platform>().is_err());
        assert!("a/b/c/d".parse::<Platform>().is_err());
    }

    #[test]
    fn selects_requested_platform_not_first() {
        let entries = vec![
            entry(None, 0),
            entry(Some("linux/amd64"), 1),
            entry(Some("linux/arm64/v8"), 2),
        ];
        let pick = |p: &str| {
            p.parse::<Platform>()
                .unwrap()
                .select(&entries)
                .map(|d| d.digest.clone())
        };
        assert_eq!(pick("linux/arm64"), Some(entries[2].digest.clone()));
        assert_eq!(pick("linux/arm64/v8"), Some(entries[2].digest.clone()));
        assert_eq!(pick("linux/amd64"), Some(entries[1].digest.clone()));
        assert_eq!(pick("linux/s390x"), None);
        assert_eq!(pick("windows/amd64"), None);
    }

    #[test]
    fn normalisation() {
        assert!(
            Platform::new("linux", "arm64", None).matches(&Platform::new(
                "linux",
                "aarch64",
                Some("v8")
            ))
        );
        assert!(
            Platform::new("linux", "amd64", None).matches(&Platform::new("linux", "x86_64", None))
        );
        assert!(
            !Platform::new("linux", "arm", Some("v6")).matches(&Platform::new(
                "linux",
                "arm",
                Some("v7")
            ))
        );
        assert!(Platform::new("linux", "arm", None).matches(&Platform::new(
            "linux",
            "arm",
            Some("v6")
        )));
        let exact = vec![
            entry(Some("linux/arm/v6"), 1),
            entry(Some("linux/arm/v7"), 2),
        ];
        assert_eq!(
            Platform::new("linux", "arm", None)
                .select(&exact)
                .unwrap()
                .digest,
            exact[1].digest
        );
    }
}
