//! Parses `/v2/...` paths. axum cannot route `/v2/{*name}/blobs/{digest}` (a wildcard must be
//! last), so one catch-all hands the rest of the path to this parser.

use rf_oci::name::validate_repository;

use crate::error::ApiError;

/// What a `/v2/<rest>` path asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Manifest {
        name: String,
        reference: String,
    },
    Blob {
        name: String,
        digest: String,
    },
    BlobUpload {
        name: String,
    },
    TagsList {
        name: String,
    },
    /// `GET /v2/<name>/referrers/<digest>` (distribution spec 1.1).
    Referrers {
        name: String,
        digest: String,
    },
    Catalog,
}

impl Route {
    /// Parses the part after `/v2/`. Returns `None` for paths no registry API defines.
    pub fn parse(rest: &str) -> Option<Route> {
        if rest == "_catalog" {
            return Some(Route::Catalog);
        }
        let segments: Vec<&str> = rest.split('/').collect();
        let n = segments.len();
        let name = |upto: usize| segments[..upto].join("/");
        if n >= 3 && segments[n - 2] == "manifests" {
            return Some(Route::Manifest {
                name: name(n - 2),
                reference: segments[n - 1].to_string(),
            });
        }
        if n >= 3 && segments[n - 2] == "tags" && segments[n - 1] == "list" {
            return Some(Route::TagsList { name: name(n - 2) });
        }
        if n >= 3 && segments[n - 2] == "referrers" {
            return Some(Route::Referrers {
                name: name(n - 2),
                digest: segments[n - 1].to_string(),
            });
        }
        // `<name>/blobs/uploads/` and `<name>/blobs/uploads/<uuid>`
        if let Some(i) = (1..n)
            .rev()
            .find(|&i| segments[i] == "uploads" && segments[i - 1] == "blobs")
        {
            if i >= 2 && n - i <= 2 {
                return Some(Route::BlobUpload { name: name(i - 1) });
            }
        }
        if n >= 3 && segments[n - 2] == "blobs" {
            return Some(Route::Blob {
                name: name(n - 2),
                digest: segments[n - 1].to_string(),
            });
        }
        None
    }
}

/// A repository name of the facade: `<provider>/<id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FacadeName {
    pub provider: String,
    pub id: String,
}

impl FacadeName {
    /// Validates the name against the distribution grammar (400 `NAME_INVALID`) and splits it at
    /// the first `/` into provider and spec id (a name without `/` names no provider: 404).
    pub fn parse(name: &str) -> Result<FacadeName, ApiError> {
        validate_repository(name).map_err(|e| ApiError::name_invalid(e.to_string()))?;
        match name.split_once('/') {
            Some((provider, id)) => Ok(FacadeName {
                provider: provider.to_string(),
                id: id.to_string(),
            }),
            None => Err(ApiError::name_unknown(format!(
                "repository {name:?} names no spec provider: use /v2/<provider>/<id>"
            ))),
        }
    }

    pub fn full(&self) -> String {
        format!("{}/{}", self.provider, self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            Route::parse("remote/ws-1/manifests/latest"),
            Some(Route::Manifest {
                name: "remote/ws-1".into(),
                reference: "latest".into()
            })
        );
        assert_eq!(
            Route::parse("remote/a/manifests/b/manifests/sha256:x"),
            Some(Route::Manifest {
                name: "remote/a/manifests/b".into(),
                reference: "sha256:x".into()
            })
        );
        assert_eq!(
            Route::parse("fixed/x/blobs/sha256:abc"),
            Some(Route::Blob {
                name: "fixed/x".into(),
                digest: "sha256:abc".into()
            })
        );
        assert_eq!(
            Route::parse("fixed/x/blobs/uploads/"),
            Some(Route::BlobUpload {
                name: "fixed/x".into()
            })
        );
        assert_eq!(
            Route::parse("fixed/x/blobs/uploads/123"),
            Some(Route::BlobUpload {
                name: "fixed/x".into()
            })
        );
        assert_eq!(
            Route::parse("fixed/x/tags/list"),
            Some(Route::TagsList {
                name: "fixed/x".into()
            })
        );
        assert_eq!(Route::parse("_catalog"), Some(Route::Catalog));
        assert_eq!(Route::parse("manifests/latest"), None);
        assert_eq!(Route::parse("foo"), None);
        assert_eq!(Route::parse(""), None);
    }

    #[test]
    fn names() {
        let n = FacadeName::parse("remote/ws-1/sub").unwrap();
        assert_eq!((n.provider.as_str(), n.id.as_str()), ("remote", "ws-1/sub"));
        assert_eq!(
            FacadeName::parse("Remote/x").unwrap_err().code,
            "NAME_INVALID"
        );
        assert_eq!(
            FacadeName::parse(&format!("remote/{}", "a".repeat(300)))
                .unwrap_err()
                .code,
            "NAME_INVALID"
        );
        assert_eq!(
            FacadeName::parse("remote").unwrap_err().code,
            "NAME_UNKNOWN"
        );
    }
}
