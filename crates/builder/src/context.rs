//! Build contexts from `WorkspaceInitializer`s: `git` (the `git` CLI), `empty`, `download`
//! (HTTP, digest-checked) and `composite` (in order). Other initializers are rejected.

use std::path::{Component, Path, PathBuf};
use std::process::Stdio;

use futures::future::BoxFuture;
use rf_api::contentservice::workspace_initializer::Spec;
use rf_api::contentservice::{
    CloneTargetMode, FileDownloadInitializer, GitAuthMethod, GitInitializer, WorkspaceInitializer,
};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt as _;
use tokio::process::Command;

use crate::builds::LogSink;
use crate::refs::initializer_kind;

/// Why a context could not be prepared.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ContextError {
    /// The request is unusable (maps to `INVALID_ARGUMENT`).
    #[error("{0}")]
    Invalid(String),
    /// Preparing failed (a build failure).
    #[error("{0}")]
    Failed(String),
}

/// The build source of a Dockerfile in a git repository (no credentials): `target` is the
/// branch or commit `mode` names (empty for the remote HEAD); paths are relative to the
/// repository root, an empty `context_path` meaning the Dockerfile's directory.
pub fn git_dockerfile_source(
    remote_uri: &str,
    mode: CloneTargetMode,
    target: &str,
    dockerfile_path: &str,
    context_path: &str,
) -> rf_api::builder::BuildSourceDockerfile {
    rf_api::builder::BuildSourceDockerfile {
        source: Some(WorkspaceInitializer {
            spec: Some(Spec::Git(GitInitializer {
                remote_uri: remote_uri.into(),
                target_mode: mode as i32,
                clone_taget: target.into(),
                ..Default::default()
            })),
        }),
        dockerfile_version: String::new(),
        dockerfile_path: dockerfile_path.into(),
        context_path: context_path.into(),
    }
}

/// Checks that every (nested) initializer is supported, before a build starts.
pub fn check_supported(init: &WorkspaceInitializer) -> Result<(), ContextError> {
    match &init.spec {
        None => Ok(()),
        Some(Spec::Empty(_) | Spec::Git(_) | Spec::Download(_)) => Ok(()),
        Some(Spec::Composite(c)) => c.initializer.iter().try_for_each(check_supported),
        Some(other) => Err(ContextError::Invalid(format!(
            "unsupported context initializer: {} (supported: git, empty, download, composite)",
            initializer_kind(other)
        ))),
    }
}

/// The secrets of the initializer (git passwords/tokens), for censoring.
pub fn secrets(init: &WorkspaceInitializer) -> Vec<String> {
    match &init.spec {
        Some(Spec::Git(g)) => g
            .config
            .iter()
            .flat_map(|c| [c.auth_password.clone(), c.auth_ots.clone()])
            .filter(|s| !s.is_empty())
            .collect(),
        Some(Spec::Composite(c)) => c.initializer.iter().flat_map(secrets).collect(),
        _ => Vec::new(),
    }
}

/// `rel` below `root`, rejecting absolute paths and `..`.
pub fn join_inside(root: &Path, rel: &str) -> Result<PathBuf, ContextError> {
    let rel = rel
        .trim_start_matches("/workspace/")
        .trim_start_matches('/');
    let mut out = root.to_path_buf();
    for c in Path::new(rel).components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            _ => {
                return Err(ContextError::Invalid(format!(
                    "path {rel:?} leaves the build context"
                )))
            }
        }
    }
    Ok(out)
}

/// Prepares `dir` (the workspace root) from `init`.
pub fn prepare<'a>(
    init: &'a WorkspaceInitializer,
    dir: &'a Path,
    http: &'a reqwest::Client,
    log: &'a LogSink,
) -> BoxFuture<'a, Result<(), ContextError>> {
    Box::pin(async move {
        std::fs::create_dir_all(dir)
            .map_err(|e| ContextError::Failed(format!("cannot create the build context: {e}")))?;
        match &init.spec {
            None | Some(Spec::Empty(_)) => Ok(()),
            Some(Spec::Git(g)) => git(g, dir, log).await,
            Some(Spec::Download(d)) => download(d, dir, http, log).await,
            Some(Spec::Composite(c)) => {
                for i in &c.initializer {
                    prepare(i, dir, http, log).await?;
                }
                Ok(())
            }
            Some(other) => Err(ContextError::Invalid(format!(
                "unsupported context initializer: {}",
                initializer_kind(other)
            ))),
        }
    })
}

async fn run_git(args: &[String], cwd: &Path, log: &LogSink) -> Result<(), ContextError> {
    let out = Command::new("git")
        .args(args)
        .current_dir(cwd)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ASKPASS", "/bin/false")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| ContextError::Failed(format!("cannot run git: {e}")))?;
    let mut all = out.stdout.clone();
    all.extend_from_slice(&out.stderr);
    let text = String::from_utf8_lossy(&all);
    for l in text.lines() {
        log.line(l);
    }
    if out.status.success() {
        return Ok(());
    }
    let last = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    Err(ContextError::Failed(format!(
        "git {} failed ({}): {last}",
        args.iter()
            .find(|a| !a.starts_with('-') && !a.contains('='))
            .map_or("", String::as_str),
        out.status
    )))
}

async fn git(g: &GitInitializer, root: &Path, log: &LogSink) -> Result<(), ContextError> {
    if g.remote_uri.is_empty() {
        return Err(ContextError::Invalid(
            "git initializer without remote_uri".into(),
        ));
    }
    let dest = join_inside(root, &g.checkout_location)?;
    if dest.exists()
        && std::fs::read_dir(&dest)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
    {
        return Err(ContextError::Invalid(format!(
            "git checkout location {:?} is not empty",
            g.checkout_location
        )));
    }
    let mut url = g.remote_uri.clone();
    let mut authenticated = false;
    if let Some(cfg) = &g.config {
        let method = GitAuthMethod::try_from(cfg.authentication).unwrap_or(GitAuthMethod::NoAuth);
        let pass = match method {
            GitAuthMethod::NoAuth => None,
            GitAuthMethod::BasicAuth => Some(cfg.auth_password.as_str()),
            GitAuthMethod::BasicAuthOts => Some(cfg.auth_ots.as_str()),
        };
        if let Some(pass) = pass {
            let mut u = url::Url::parse(&url)
                .map_err(|e| ContextError::Invalid(format!("git remote_uri is not a URL: {e}")))?;
            let ok = u.set_username(&cfg.auth_user).is_ok() && u.set_password(Some(pass)).is_ok();
            if !ok {
                return Err(ContextError::Invalid(
                    "git basic auth needs an http(s) remote_uri".into(),
                ));
            }
            url = u.to_string();
            authenticated = true;
        }
    }
    let mut args: Vec<String> = Vec::new();
    if let Some(cfg) = &g.config {
        let mut kv: Vec<_> = cfg.custom_config.iter().collect();
        kv.sort();
        for (k, v) in kv {
            args.push("-c".into());
            args.push(format!("{k}={v}"));
        }
    }
    args.push("clone".into());
    let mode = CloneTargetMode::try_from(g.target_mode).unwrap_or(CloneTargetMode::RemoteHead);
    if mode == CloneTargetMode::RemoteBranch && !g.clone_taget.is_empty() {
        args.push("--branch".into());
        args.push(g.clone_taget.clone());
    }
    args.push("--".into());
    args.push(url);
    args.push(dest.display().to_string());
    log.line(&format!(
        "cloning {} ...",
        if authenticated {
            "the repository"
        } else {
            g.remote_uri.as_str()
        }
    ));
    run_git(&args, root, log).await?;
    match mode {
        CloneTargetMode::RemoteCommit if !g.clone_taget.is_empty() => {
            run_git(
                &["checkout".into(), "--detach".into(), g.clone_taget.clone()],
                &dest,
                log,
            )
            .await?
        }
        CloneTargetMode::LocalBranch if !g.clone_taget.is_empty() => {
            run_git(
                &["checkout".into(), "-B".into(), g.clone_taget.clone()],
                &dest,
                log,
            )
            .await?
        }
        _ => {}
    }
    if authenticated {
        run_git(
            &[
                "remote".into(),
                "set-url".into(),
                "origin".into(),
                g.remote_uri.clone(),
            ],
            &dest,
            log,
        )
        .await?;
    }
    Ok(())
}

async fn download(
    d: &FileDownloadInitializer,
    root: &Path,
    http: &reqwest::Client,
    log: &LogSink,
) -> Result<(), ContextError> {
    let base = join_inside(root, &d.target_location)?;
    for f in &d.files {
        let path = join_inside(&base, &f.file_path)?;
        if path == base {
            return Err(ContextError::Invalid("download without a file path".into()));
        }
        log.line(&format!("downloading {} ...", f.file_path));
        let want = match f.digest.as_str() {
            "" => None,
            d => Some(d.strip_prefix("sha256:").ok_or_else(|| {
                ContextError::Invalid(format!(
                    "unsupported digest {:?} for {} (only sha256)",
                    f.digest, f.file_path
                ))
            })?),
        };
        let failed = |e: reqwest::Error| {
            ContextError::Failed(format!(
                "cannot download {}: {}",
                f.file_path,
                e.without_url()
            ))
        };
        let io_failed =
            |e: std::io::Error| ContextError::Failed(format!("cannot write {}: {e}", f.file_path));
        let mut resp = http
            .get(&f.url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(failed)?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| ContextError::Failed(format!("cannot create {}: {e}", f.file_path)))?;
        }
        // Streamed to a temp file next to the target and renamed once the digest matched: a
        // wrong or truncated download never appears in the context.
        let part = path.with_file_name(format!(
            ".{}.part",
            path.file_name().unwrap_or_default().to_string_lossy()
        ));
        let mut out = tokio::fs::File::create(&part).await.map_err(io_failed)?;
        let mut hasher = Sha256::new();
        let copied: Result<(), ContextError> = async {
            while let Some(chunk) = resp.chunk().await.map_err(failed)? {
                hasher.update(&chunk);
                out.write_all(&chunk).await.map_err(io_failed)?;
            }
            out.flush().await.map_err(io_failed)
        }
        .await;
        drop(out);
        let got = hex::encode(hasher.finalize());
        let verdict = copied.and_then(|()| match want {
            Some(want) if got != want => Err(ContextError::Failed(format!(
                "{}: digest mismatch: expected sha256:{want}, got sha256:{got}",
                f.file_path
            ))),
            _ => Ok(()),
        });
        if let Err(e) = verdict {
            let _ = std::fs::remove_file(&part);
            return Err(e);
        }
        std::fs::rename(&part, &path).map_err(io_failed)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside() {
        let root = Path::new("/ctx");
        assert_eq!(join_inside(root, "a/b").unwrap(), Path::new("/ctx/a/b"));
        assert_eq!(
            join_inside(root, "/workspace/a").unwrap(),
            Path::new("/ctx/a")
        );
        assert_eq!(join_inside(root, "").unwrap(), Path::new("/ctx"));
        assert!(join_inside(root, "../x").is_err());
        assert!(join_inside(root, "a/../../x").is_err());
    }

    /// A loopback HTTP server answering every request with `body`; returns its base URL.
    async fn serve(body: &'static [u8]) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().fallback(move || async move { body });
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    fn download_of(url: &str, digest: &str) -> WorkspaceInitializer {
        use rf_api::contentservice::file_download_initializer::FileInfo;
        WorkspaceInitializer {
            spec: Some(Spec::Download(FileDownloadInitializer {
                files: vec![FileInfo {
                    url: format!("{url}/file"),
                    file_path: "sub/file.txt".into(),
                    digest: digest.into(),
                }],
                target_location: String::new(),
            })),
        }
    }

    #[tokio::test]
    async fn downloads_are_verified_before_they_appear() {
        let url = serve(b"context file\n").await;
        let good = format!("sha256:{}", hex::encode(Sha256::digest(b"context file\n")));
        let bad = format!("sha256:{}", hex::encode(Sha256::digest(b"other")));
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::new();
        let log = crate::builds::LogHub::new(crate::censor::Censor::new(Vec::<String>::new()));
        let dir = tempfile::tempdir().unwrap();

        let e = prepare(&download_of(&url, &bad), dir.path(), &http, &log)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("digest mismatch"), "{e}");
        // Neither the file nor a partial download is left behind.
        let left: Vec<_> = std::fs::read_dir(dir.path().join("sub"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "{left:?}");

        let e = prepare(&download_of(&url, "md5:abc"), dir.path(), &http, &log)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("only sha256"), "{e}");

        prepare(&download_of(&url, &good), dir.path(), &http, &log)
            .await
            .unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("sub/file.txt")).unwrap(),
            b"context file\n"
        );
    }
}
