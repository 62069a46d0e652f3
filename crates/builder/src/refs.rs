//! Gitpod's image reference computation (`orchestrator.go: getBaseImageRef,
//! getWorkspaceImageRef`), byte for byte.
//!
//! * **Ref source**: the base ref is the source reference resolved to a digest (done by
//!   [`crate::resolve`], not here).
//! * **Dockerfile source**: the base ref is `<baseImageRepository>:<hex sha256(text)>` where
//!   `text` is a sorted `"<Key>: <value>\n"` list (the "manifest") followed by one extra `"\n"`
//!   (Gitpod's legacy empty salt). It is not checked for existence.
//! * **Workspace ref**: `<workspaceImageRepository>:<hex sha256(baseref + "\n" + "2" + "\n")>`
//!   (`2` = Gitpod's `workspaceBuildProcessVersion`).
//!
//! ## The manifest text
//!
//! For a **Git** context initializer the keys are exactly Gitpod's, so refs are identical to
//! the ones Gitpod computes (and images Gitpod built are found):
//!
//! ```text
//! CloneTarget: <clone_taget>
//! ContextPath: <context_path>
//! DockerfilePath: <dockerfile_path>
//! DockerfileVersion: <dockerfile_version>
//! RemoteURI: <remote_uri>
//! Source: git
//!
//! ```
//!
//! Gitpod rejects every other initializer ("unsupported context initializer"). We also
//! accept **empty**, **download** and **composite** ones (whose members may be any of these
//! three or git). Their manifest is
//!
//! ```text
//! ContextPath: <context_path>
//! DockerfilePath: <dockerfile_path>
//! DockerfileVersion: <dockerfile_version>
//! Initializer: <canonical JSON of the initializer>
//! Source: <empty | download | composite>
//!
//! ```
//!
//! It can never equal a Git text (`Source` differs and there is no `Initializer` key in those).
//! The canonical JSON is compact, with object keys in ascending order (as shown), and covers
//! only what determines the build context, never credentials:
//!
//! * empty: `{"empty":{}}`
//! * download: `{"download":{"files":[F...],"targetLocation":"<t>"}}`, files in request order,
//!   each `{"digest":"<d>","filePath":"<p>"}` when a digest is given (the content is verified
//!   against it, so the URL, which is often a signed, expiring one, does not matter), else
//!   `{"filePath":"<p>","url":"<u>"}`
//! * composite: `{"composite":[I...]}` with each member's canonical JSON
//! * git (inside a composite): `{"git":{"checkoutLocation":"<l>","cloneTarget":"<c>","remoteUri":"<u>","targetMode":"<MODE>"}}`
//!   (no `config`: it carries credentials)
//!
//! Snapshot, prebuild and backup initializers (and a missing initializer) stay unsupported.

use std::collections::BTreeMap;

use rf_api::builder::build_source::From as SourceFrom;
use rf_api::builder::{BuildSource, BuildSourceDockerfile};
use rf_api::contentservice::workspace_initializer::Spec;
use rf_api::contentservice::{CloneTargetMode, GitInitializer, WorkspaceInitializer};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

/// Gitpod's `workspaceBuildProcessVersion`, part of every workspace ref hash.
pub const WORKSPACE_BUILD_PROCESS_VERSION: u32 = 2;

/// Why no reference can be computed (all are the caller's fault: `InvalidArgument`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefError {
    /// `BuildSource.from` unset (Gitpod: "invalid base image").
    #[error("invalid base image: the build source has neither a ref nor a file")]
    NoSource,
    /// A Dockerfile source without a context initializer, or with one we cannot build from.
    #[error("unsupported context initializer: {0}")]
    UnsupportedInitializer(String),
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// `"<Key>: <value>\n"` for keys in ascending order, then `"\n"`.
fn manifest_text(manifest: &BTreeMap<&str, String>) -> String {
    let mut text = String::new();
    for (k, v) in manifest {
        text.push_str(k);
        text.push_str(": ");
        text.push_str(v);
        text.push('\n');
    }
    // Gitpod writes `fmt.Sprintf("\n%s", "")`: a legacy, empty salt.
    text.push('\n');
    text
}

/// The text whose sha256 is the tag of a Dockerfile source's base image (see the module
/// documentation).
pub fn dockerfile_manifest_text(file: &BuildSourceDockerfile) -> Result<String, RefError> {
    let mut m: BTreeMap<&str, String> = BTreeMap::new();
    m.insert("DockerfilePath", file.dockerfile_path.clone());
    m.insert("DockerfileVersion", file.dockerfile_version.clone());
    m.insert("ContextPath", file.context_path.clone());
    let spec = file
        .source
        .as_ref()
        .and_then(|s| s.spec.as_ref())
        .ok_or_else(|| RefError::UnsupportedInitializer("none given".into()))?;
    match spec {
        Spec::Git(git) => {
            m.insert("Source", "git".into());
            m.insert("CloneTarget", git.clone_taget.clone());
            m.insert("RemoteURI", git.remote_uri.clone());
        }
        Spec::Empty(_) | Spec::Download(_) | Spec::Composite(_) => {
            m.insert("Source", initializer_kind(spec).into());
            let canonical = canonical_initializer(spec)?;
            m.insert("Initializer", canonical_json(&canonical));
        }
        other => {
            return Err(RefError::UnsupportedInitializer(
                initializer_kind(other).into(),
            ))
        }
    }
    Ok(manifest_text(&m))
}

/// The initializer's name in the proto's `oneof spec`.
pub fn initializer_kind(spec: &Spec) -> &'static str {
    match spec {
        Spec::Empty(_) => "empty",
        Spec::Git(_) => "git",
        Spec::Snapshot(_) => "snapshot",
        Spec::Prebuild(_) => "prebuild",
        Spec::Composite(_) => "composite",
        Spec::Download(_) => "download",
        Spec::Backup(_) => "backup",
    }
}

fn canonical_git(git: &GitInitializer) -> Value {
    let mode = CloneTargetMode::try_from(git.target_mode)
        .map(|m| m.as_str_name().to_string())
        .unwrap_or_else(|_| git.target_mode.to_string());
    json!({"git": {
        "checkoutLocation": git.checkout_location,
        "cloneTarget": git.clone_taget,
        "remoteUri": git.remote_uri,
        "targetMode": mode,
    }})
}

/// Compact JSON with every object's keys in ascending (byte) order, at every depth: the text
/// does not depend on the order keys were written in or on serde_json's `preserve_order`.
fn canonical_json(value: &Value) -> String {
    fn write(value: &Value, out: &mut String) {
        match value {
            Value::Object(map) => {
                let mut entries: Vec<_> = map.iter().collect();
                entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
                out.push('{');
                for (i, (k, v)) in entries.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(k.clone()).to_string());
                    out.push(':');
                    write(v, out);
                }
                out.push('}');
            }
            Value::Array(items) => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(v, out);
                }
                out.push(']');
            }
            scalar => out.push_str(&scalar.to_string()),
        }
    }
    let mut out = String::new();
    write(value, &mut out);
    out
}

fn canonical_member(init: &WorkspaceInitializer) -> Result<Value, RefError> {
    let spec = init.spec.as_ref().ok_or_else(|| {
        RefError::UnsupportedInitializer("composite member without an initializer".into())
    })?;
    canonical_initializer(spec)
}

fn canonical_initializer(spec: &Spec) -> Result<Value, RefError> {
    Ok(match spec {
        Spec::Empty(_) => json!({"empty": {}}),
        Spec::Git(git) => canonical_git(git),
        Spec::Download(d) => {
            let files: Vec<Value> = d
                .files
                .iter()
                .map(|f| {
                    if f.digest.is_empty() {
                        json!({"filePath": f.file_path, "url": f.url})
                    } else {
                        json!({"digest": f.digest, "filePath": f.file_path})
                    }
                })
                .collect();
            json!({"download": {"files": files, "targetLocation": d.target_location}})
        }
        Spec::Composite(c) => {
            let members = c
                .initializer
                .iter()
                .map(canonical_member)
                .collect::<Result<Vec<_>, _>>()?;
            json!({ "composite": members })
        }
        other => {
            return Err(RefError::UnsupportedInitializer(format!(
                "{} (inside a composite)",
                initializer_kind(other)
            )))
        }
    })
}

/// `<baseImageRepository>:<hex sha256(manifest text)>` for a Dockerfile source.
pub fn dockerfile_base_ref(
    base_image_repository: &str,
    file: &BuildSourceDockerfile,
) -> Result<String, RefError> {
    let text = dockerfile_manifest_text(file)?;
    Ok(format!(
        "{base_image_repository}:{}",
        sha256_hex(text.as_bytes())
    ))
}

/// `<workspaceImageRepository>:<hex sha256(base_ref + "\n2\n")>`.
pub fn workspace_ref(workspace_image_repository: &str, base_ref: &str) -> String {
    let text = format!("{base_ref}\n{WORKSPACE_BUILD_PROCESS_VERSION}\n");
    format!(
        "{workspace_image_repository}:{}",
        sha256_hex(text.as_bytes())
    )
}

/// What the base ref of a build source is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseSource<'a> {
    /// An image reference to resolve to a digest.
    Reference(&'a str),
    /// A Dockerfile: the base ref is the computed one.
    Dockerfile(String),
}

/// Classifies a build source: the reference to resolve, or the computed Dockerfile base ref.
pub fn base_source<'a>(
    base_image_repository: &str,
    source: &'a BuildSource,
) -> Result<BaseSource<'a>, RefError> {
    match &source.from {
        Some(SourceFrom::Ref(r)) => Ok(BaseSource::Reference(&r.r#ref)),
        Some(SourceFrom::File(f)) => Ok(BaseSource::Dockerfile(dockerfile_base_ref(
            base_image_repository,
            f,
        )?)),
        None => Err(RefError::NoSource),
    }
}

/// The repository name of a reference as written (tag and digest removed; a registry port
/// is kept): `localhost:5000/ws:abc` → `localhost:5000/ws`.
pub fn ref_name(reference: &str) -> &str {
    let without_digest = reference.split('@').next().unwrap_or(reference);
    let last_slash = without_digest.rfind('/').map_or(0, |i| i + 1);
    match without_digest[last_slash..].rfind(':') {
        Some(i) => &without_digest[..last_slash + i],
        None => without_digest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rf_api::builder::BuildSourceReference;
    use rf_api::contentservice::file_download_initializer::FileInfo;
    use rf_api::contentservice::{
        CompositeInitializer, EmptyInitializer, FileDownloadInitializer, GitConfig,
        SnapshotInitializer,
    };

    fn git(remote: &str, target: &str) -> GitInitializer {
        GitInitializer {
            remote_uri: remote.into(),
            clone_taget: target.into(),
            ..Default::default()
        }
    }

    fn file(spec: Option<Spec>) -> BuildSourceDockerfile {
        BuildSourceDockerfile {
            source: Some(WorkspaceInitializer { spec }),
            dockerfile_version: String::new(),
            dockerfile_path: ".gitpod.dockerfile".into(),
            context_path: ".".into(),
        }
    }

    /// Gitpod's `example-build.json`.
    fn example_build() -> BuildSourceDockerfile {
        file(Some(Spec::Git(git(
            "https://github.com/AlexTugarev/test.repo",
            "good-workspace-image",
        ))))
    }

    const GITPOD_BASE_REPO: &str = "eu.gcr.io/gitpod-core-dev/build/base-images";

    #[test]
    fn gitpod_vector_workspace_ref_of_a_ref_source() {
        assert_eq!(
            workspace_ref("registry/workspace", "source-image:latest"),
            "registry/workspace:2b1325adbf901167f47a914a62d377c98f1e32e0837dafb95ca86ca9d08ab14e"
        );
    }

    #[test]
    fn gitpod_vector_example_build() {
        assert_eq!(
            dockerfile_manifest_text(&example_build()).unwrap(),
            "CloneTarget: good-workspace-image\nContextPath: .\nDockerfilePath: .gitpod.dockerfile\nDockerfileVersion: \nRemoteURI: https://github.com/AlexTugarev/test.repo\nSource: git\n\n"
        );
        let base = dockerfile_base_ref(GITPOD_BASE_REPO, &example_build()).unwrap();
        assert_eq!(
            base,
            format!("{GITPOD_BASE_REPO}:3efd79682470adfce9a2d4ddbc1a96e0ef592d0ca0b7c4b3be932a108cb9a4d4")
        );
        assert_eq!(
            workspace_ref("ws", &base),
            "ws:1f25f4b5378de5b8ed40f7b7a90e4163051c3c5ea4a32e00ac2c92cdf61d9248"
        );
    }

    #[test]
    fn git_hash_ignores_what_gitpod_ignores() {
        let mut g = git(
            "https://github.com/AlexTugarev/test.repo",
            "good-workspace-image",
        );
        g.checkout_location = "elsewhere".into();
        g.upstream_remote_uri = "https://github.com/upstream/test.repo".into();
        g.target_mode = CloneTargetMode::RemoteBranch as i32;
        g.full_clone = true;
        g.config = Some(GitConfig {
            auth_password: "git-token".into(),
            ..Default::default()
        });
        assert_eq!(
            dockerfile_base_ref(GITPOD_BASE_REPO, &file(Some(Spec::Git(g)))).unwrap(),
            dockerfile_base_ref(GITPOD_BASE_REPO, &example_build()).unwrap()
        );
        // ...and what it does not.
        let mut other = example_build();
        other.dockerfile_version = "1".into();
        assert_ne!(
            dockerfile_base_ref(GITPOD_BASE_REPO, &other).unwrap(),
            dockerfile_base_ref(GITPOD_BASE_REPO, &example_build()).unwrap()
        );
    }

    #[test]
    fn non_git_initializers_have_stable_documented_texts() {
        assert_eq!(
            dockerfile_manifest_text(&file(Some(Spec::Empty(EmptyInitializer {})))).unwrap(),
            "ContextPath: .\nDockerfilePath: .gitpod.dockerfile\nDockerfileVersion: \nInitializer: {\"empty\":{}}\nSource: empty\n\n"
        );
        let download = |url: &str, digest: &str| {
            Spec::Download(FileDownloadInitializer {
                files: vec![
                    FileInfo {
                        url: url.into(),
                        file_path: "Dockerfile".into(),
                        digest: digest.into(),
                    },
                    FileInfo {
                        url: "https://x/ctx.txt".into(),
                        file_path: "ctx.txt".into(),
                        digest: String::new(),
                    },
                ],
                target_location: "/workspace".into(),
            })
        };
        let t = dockerfile_manifest_text(&file(Some(download(
            "https://signed/url?sig=1",
            "sha256:abc",
        ))))
        .unwrap();
        assert_eq!(
            t,
            "ContextPath: .\nDockerfilePath: .gitpod.dockerfile\nDockerfileVersion: \nInitializer: {\"download\":{\"files\":[{\"digest\":\"sha256:abc\",\"filePath\":\"Dockerfile\"},{\"filePath\":\"ctx.txt\",\"url\":\"https://x/ctx.txt\"}],\"targetLocation\":\"/workspace\"}}\nSource: download\n\n"
        );
        // A re-signed URL with the same digest is the same build.
        assert_eq!(
            t,
            dockerfile_manifest_text(&file(Some(download(
                "https://signed/url?sig=2",
                "sha256:abc"
            ))))
            .unwrap()
        );
        let mut with_creds = git("https://g/r", "main");
        with_creds.config = Some(GitConfig {
            auth_user: "u".into(),
            auth_password: "git-secret".into(),
            ..Default::default()
        });
        let composite = Spec::Composite(CompositeInitializer {
            initializer: vec![
                WorkspaceInitializer {
                    spec: Some(Spec::Git(with_creds)),
                },
                WorkspaceInitializer {
                    spec: Some(Spec::Empty(EmptyInitializer {})),
                },
            ],
        });
        let t = dockerfile_manifest_text(&file(Some(composite))).unwrap();
        assert_eq!(
            t,
            "ContextPath: .\nDockerfilePath: .gitpod.dockerfile\nDockerfileVersion: \nInitializer: {\"composite\":[{\"git\":{\"checkoutLocation\":\"\",\"cloneTarget\":\"main\",\"remoteUri\":\"https://g/r\",\"targetMode\":\"REMOTE_HEAD\"}},{\"empty\":{}}]}\nSource: composite\n\n"
        );
        assert!(!t.contains("git-secret"));
        // Pinned hash of the empty text, so that a change of the scheme is noticed.
        assert_eq!(
            dockerfile_base_ref("r/base", &file(Some(Spec::Empty(EmptyInitializer {})))).unwrap(),
            format!(
                "r/base:{}",
                sha256_hex(b"ContextPath: .\nDockerfilePath: .gitpod.dockerfile\nDockerfileVersion: \nInitializer: {\"empty\":{}}\nSource: empty\n\n")
            )
        );
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_depth() {
        let written = json!({"b": [{"z": 1, "y": "\"q\""}], "a": {"d": null, "c": true}});
        let reordered = json!({"a": {"c": true, "d": null}, "b": [{"y": "\"q\"", "z": 1}]});
        let expected = r#"{"a":{"c":true,"d":null},"b":[{"y":"\"q\"","z":1}]}"#;
        assert_eq!(canonical_json(&written), expected);
        assert_eq!(canonical_json(&reordered), expected);
    }

    #[test]
    fn unsupported_initializers() {
        let snapshot = Spec::Snapshot(SnapshotInitializer::default());
        assert_eq!(
            dockerfile_base_ref("r", &file(Some(snapshot.clone()))),
            Err(RefError::UnsupportedInitializer("snapshot".into()))
        );
        assert!(matches!(
            dockerfile_base_ref("r", &file(None)),
            Err(RefError::UnsupportedInitializer(_))
        ));
        let mut no_source = example_build();
        no_source.source = None;
        assert!(dockerfile_base_ref("r", &no_source).is_err());
        let nested = Spec::Composite(CompositeInitializer {
            initializer: vec![WorkspaceInitializer {
                spec: Some(snapshot),
            }],
        });
        let e = dockerfile_base_ref("r", &file(Some(nested))).unwrap_err();
        assert!(e.to_string().contains("snapshot"), "{e}");
    }

    #[test]
    fn base_source_classification() {
        let r = BuildSource {
            from: Some(SourceFrom::Ref(BuildSourceReference {
                r#ref: "alpine:3".into(),
            })),
        };
        assert_eq!(base_source("b", &r), Ok(BaseSource::Reference("alpine:3")));
        let f = BuildSource {
            from: Some(SourceFrom::File(example_build())),
        };
        assert!(matches!(
            base_source(GITPOD_BASE_REPO, &f),
            Ok(BaseSource::Dockerfile(s)) if s.ends_with("3efd79682470adfce9a2d4ddbc1a96e0ef592d0ca0b7c4b3be932a108cb9a4d4")
        ));
        assert_eq!(
            base_source("b", &BuildSource { from: None }),
            Err(RefError::NoSource)
        );
    }

    #[test]
    fn ref_names_keep_ports() {
        assert_eq!(ref_name("localhost:5000/ws:abc"), "localhost:5000/ws");
        assert_eq!(ref_name("localhost:5000/ws"), "localhost:5000/ws");
        assert_eq!(
            ref_name("docker.io/library/alpine@sha256:0123"),
            "docker.io/library/alpine"
        );
        assert_eq!(ref_name("a/b:t@sha256:0123"), "a/b");
        assert_eq!(ref_name("alpine:3"), "alpine");
    }
}
