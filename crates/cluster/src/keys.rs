//! Every Redis key the facade reads or writes, and the JSON stored under Gitpod's keys, so that
//! a Go facade and this one can share one Redis (`gitpod-behaviour.md` §2.5).
//!
//! | key | value | TTL |
//! |---|---|---|
//! | `nfo.<digest>` | Gitpod's blob info JSON (`Digest`, `Size`, `CreatedAt`, `UpdatedAt` in unix seconds, `Labels` with `Content-Type`) | none (content-addressed) |
//! | `cnt.<digest>` | the manifest's or config's bytes | none |
//! | `resolve.<ref>` | `{"Name": <ref>, "Desc": <OCI descriptor>}` | the freshness window (Gitpod: none) |
//! | `<digest>`, `mtype:<digest>` | IPFS CID (v1, base32) and media type of a blob | none |
//! | `rf.served.<name>@<digest>` | a composed manifest served under repository `<name>` | [`SERVED_TTL`] |
//! | `rf.blob.<name>@<digest>` | where a blob of a composed image comes from | [`SERVED_TTL`] |
//! | `rf.lease.<digest>` | `<token> <peer address>` of the node downloading the blob | the lease's |
//! | `rf.have.<digest>` | peer address of the last node that stored the blob | [`crate::lease::HAVE_TTL`] |

use std::collections::BTreeMap;
use std::time::Duration;

use rf_oci::{Descriptor, Digest};
use serde::{Deserialize, Serialize};

/// How long a composition stays addressable by digest on every node.
pub const SERVED_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

pub fn info(digest: &Digest) -> String {
    format!("nfo.{digest}")
}

pub fn content(digest: &Digest) -> String {
    format!("cnt.{digest}")
}

pub fn resolve(reference: &str) -> String {
    format!("resolve.{reference}")
}

pub fn ipfs_cid(digest: &Digest) -> String {
    digest.to_string()
}

pub fn ipfs_media_type(digest: &Digest) -> String {
    format!("mtype:{digest}")
}

pub fn served(name: &str, digest: &Digest) -> String {
    format!("rf.served.{name}@{digest}")
}

pub fn blob(name: &str, digest: &Digest) -> String {
    format!("rf.blob.{name}@{digest}")
}

pub fn have(digest: &Digest) -> String {
    format!("rf.have.{digest}")
}

pub fn lease(digest: &Digest) -> String {
    format!("rf.lease.{digest}")
}

/// containerd's `content.Info` as Gitpod's `RedisBlobStore` writes it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct BlobInfo {
    pub digest: String,
    pub size: i64,
    #[serde(default)]
    pub created_at: i64,
    #[serde(default)]
    pub updated_at: i64,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
}

/// The label holding the media type.
pub const CONTENT_TYPE_LABEL: &str = "Content-Type";

impl BlobInfo {
    pub fn new(digest: &Digest, size: u64, media_type: &str, now_unix: i64) -> BlobInfo {
        BlobInfo {
            digest: digest.to_string(),
            size: size as i64,
            created_at: now_unix,
            updated_at: now_unix,
            labels: Some(BTreeMap::from([(
                CONTENT_TYPE_LABEL.to_string(),
                media_type.to_string(),
            )])),
        }
    }

    pub fn media_type(&self) -> Option<&str> {
        self.labels
            .as_ref()?
            .get(CONTENT_TYPE_LABEL)
            .map(String::as_str)
            .filter(|m| !m.is_empty())
    }
}

/// Gitpod's `resolve.<ref>` value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Resolved {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Desc")]
    pub desc: Descriptor,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_info_reads_gitpods_layout() {
        // The value of Gitpod's own unit test for RedisBlobStore.Info.
        let v: BlobInfo = serde_json::from_str(
            r#"{"Digest":"digest", "Size": 1234, "CreatedAt": 7899, "UpdatedAt": 9999, "Labels": {"foo":"bar"}}"#,
        )
        .unwrap();
        assert_eq!(v.size, 1234);
        assert_eq!(v.created_at, 7899);
        assert_eq!(v.media_type(), None);
        let d = Digest::sha256_of(b"hello world");
        let ours = serde_json::to_string(&BlobInfo::new(&d, 11, "application/x", 1)).unwrap();
        assert_eq!(
            ours,
            format!(
                r#"{{"Digest":"{d}","Size":11,"CreatedAt":1,"UpdatedAt":1,"Labels":{{"Content-Type":"application/x"}}}}"#
            )
        );
    }
}
