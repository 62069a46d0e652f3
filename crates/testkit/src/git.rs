//! Real git repositories for build tests: a bare repository in a temp dir, cloned over
//! `file://` (no network, no daemon).

use std::path::Path;
use std::process::Command;

/// Runs `git <args>` in `dir` with a fixed identity and `main` as the default branch; panics
/// with git's stderr on failure.
pub fn git(dir: &Path, args: &[&str]) {
    crate::require_tool("git");
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=test",
            "-c",
            "user.email=test@example.com",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A bare repository `root/repo.git` with one commit on `main` holding `files` (path relative
/// to the repository root, content); returns its `file://` URL.
pub fn git_repo(root: &Path, files: &[(&str, String)]) -> String {
    let bare = root.join("repo.git");
    let work = root.join("work");
    std::fs::create_dir_all(&bare).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    git(&bare, &["init", "--bare", "-q"]);
    git(&work, &["init", "-q"]);
    for (name, content) in files {
        let path = work.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(path, content).unwrap();
    }
    git(&work, &["add", "."]);
    git(&work, &["commit", "-q", "-m", "initial"]);
    git(
        &work,
        &[
            "push",
            "-q",
            &format!("file://{}", bare.display()),
            "HEAD:main",
        ],
    );
    format!("file://{}", bare.display())
}
