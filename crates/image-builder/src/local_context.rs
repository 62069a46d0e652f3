//! `image-builder build --dockerfile <file> --context <dir>`: a build context from a local
//! directory, handed to the server as a `download` initializer.
//!
//! The gRPC API has no upload: the server prepares contexts from `WorkspaceInitializer`s. So
//! the client serves the files itself over HTTP for the duration of the build and sends one
//! `FileInfo { url, file_path, digest }` per file; the server downloads each file and checks
//! it against its digest. The workspace ref hashes paths and digests, not URLs (see
//! `rf_builder::refs`), so an unchanged directory maps to the same image and is not rebuilt.
//!
//! Layout sent: the context's files under `context/`, the Dockerfile as `Dockerfile`. What
//! does not survive the trip: file modes (the server writes plain files, so `RUN ./script`
//! needs a `chmod` or `sh script`), empty directories and symlinks (skipped with a warning).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context as _};
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use rf_api::builder::BuildSourceDockerfile;
use rf_api::contentservice::file_download_initializer::FileInfo;
use rf_api::contentservice::workspace_initializer::Spec;
use rf_api::contentservice::{FileDownloadInitializer, WorkspaceInitializer};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncReadExt as _;

/// Where the context lives inside the prepared build directory on the server.
const CONTEXT_DIR: &str = "context";
const DOCKERFILE: &str = "Dockerfile";

/// One file offered to the server.
struct Offered {
    local: PathBuf,
    file_path: String,
    digest: String,
}

/// The running file server; dropping it stops serving.
pub struct LocalContext {
    pub source: BuildSourceDockerfile,
    pub files: usize,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for LocalContext {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Hashes the files of `context` and `dockerfile`, starts serving them on `serve_address`
/// and returns the build source naming them. `serve_url` (default `http://<bound address>`)
/// is the base URL the server reaches this process at.
pub async fn serve(
    dockerfile: &Path,
    context: &Path,
    serve_address: &str,
    serve_url: Option<&str>,
) -> anyhow::Result<LocalContext> {
    if !context.is_dir() {
        bail!("--context {}: not a directory", context.display());
    }
    if !dockerfile.is_file() {
        bail!("--dockerfile {}: not a file", dockerfile.display());
    }
    let mut offered = vec![Offered {
        local: dockerfile.to_path_buf(),
        file_path: DOCKERFILE.to_string(),
        digest: sha256_file(dockerfile).await?,
    }];
    let mut rel_paths = Vec::new();
    collect_files(context, Path::new(""), &mut rel_paths)?;
    rel_paths.sort();
    for rel in rel_paths {
        let local = context.join(&rel);
        offered.push(Offered {
            digest: sha256_file(&local).await?,
            file_path: format!("{CONTEXT_DIR}/{}", rel.to_string_lossy()),
            local,
        });
    }

    let listener = rf_serve::bind(serve_address)
        .await
        .context("--serve-address")?;
    let bound: SocketAddr = listener.local_addr()?;
    let base = serve_url
        .map(|u| u.trim_end_matches('/').to_string())
        .unwrap_or_else(|| format!("http://{bound}"));
    let files: Vec<FileInfo> = offered
        .iter()
        .enumerate()
        .map(|(i, o)| FileInfo {
            url: format!("{base}/files/{i}"),
            file_path: o.file_path.clone(),
            digest: o.digest.clone(),
        })
        .collect();
    let count = offered.len();
    let app = axum::Router::new()
        .route("/files/{index}", axum::routing::get(serve_file))
        .with_state(Arc::new(offered));
    let server = tokio::spawn(async move {
        let server = rf_serve::Server::new(listener);
        if let Err(e) = server.serve(app, std::future::pending()).await {
            tracing::warn!(error = %e, "context file server stopped");
        }
    });
    Ok(LocalContext {
        source: BuildSourceDockerfile {
            source: Some(WorkspaceInitializer {
                spec: Some(Spec::Download(FileDownloadInitializer {
                    files,
                    target_location: String::new(),
                })),
            }),
            dockerfile_version: String::new(),
            dockerfile_path: DOCKERFILE.to_string(),
            context_path: CONTEXT_DIR.to_string(),
        },
        files: count,
        server,
    })
}

async fn serve_file(
    State(offered): State<Arc<Vec<Offered>>>,
    UrlPath(index): UrlPath<usize>,
) -> Response {
    let Some(o) = offered.get(index) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    match tokio::fs::File::open(&o.local).await {
        Ok(f) => {
            axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(f)).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Regular files below `dir` (relative to the context root), depth first.
fn collect_files(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let dir = root.join(rel);
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let rel_path = rel.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_dir() {
            collect_files(root, &rel_path, out)?;
        } else if kind.is_file() {
            out.push(rel_path);
        } else {
            tracing::warn!(path = %rel_path.display(), "not a regular file: left out of the context");
        }
    }
    Ok(())
}

async fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut f = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}
