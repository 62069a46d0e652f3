//! Tiny deterministic OCI layouts for the project's quickstart (no network): a busybox base
//! whose command greets with what the composition added, an IDE and a supervisor image.
//!
//! `cargo run -p rf-testkit --example write-quickstart -- DIR` writes them from the command line.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::layout::{
    busybox_entries, BuiltImage, Compression, Entry, ImageBuilder, Layer, OciLayout,
};

/// The images written by [`write_quickstart`] (each tagged `latest` in its layout).
#[derive(Debug, Clone)]
pub struct Quickstart {
    /// `dir/base`.
    pub base: BuiltImage,
    /// `dir/ide`.
    pub ide: BuiltImage,
    /// `dir/supervisor`.
    pub supervisor: BuiltImage,
}

/// The one layer of the committed quickstart base layout: busybox and the quickstart's files
/// ([`quickstart_base_entries`]). Its bytes are read from the committed layout, so the quickstart
/// does not depend on the busybox installed here; only when that blob is missing (layouts written
/// from scratch, or after a change to the entries) is it built from `/bin/busybox` (Debian's
/// busybox-static, GPL-2.0; see examples/quickstart/NOTICE), and this constant must then be set to
/// the digest `write-quickstart` writes.
pub const QUICKSTART_BASE_LAYER: &str =
    "sha256:c4cbb2d05d3b05da49c33e11636194725de3bc7c3bee21770143697a9dece8ca";

/// The command of the quickstart base image: a greeting that shows what the composition added.
pub const QUICKSTART_HELLO: &str = "/usr/bin/hello-workspace";

fn committed_layouts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/quickstart/layouts")
}

/// What the quickstart base layer holds: busybox, `/etc/quickstart-base` and the greeting
/// [`QUICKSTART_HELLO`].
pub fn quickstart_base_entries() -> Vec<Entry> {
    let mut entries = busybox_entries();
    entries.push(Entry::file(
        "/etc/quickstart-base",
        "NAME=\"Quickstart Base\"\nID=quickstart\nVERSION_ID=1\nPRETTY_NAME=\"registry-facade quickstart base image\"\n",
    ));
    entries.push(Entry::exec(
        QUICKSTART_HELLO,
        concat!(
            "#!/bin/sh\n",
            "echo \"Hello from a workspace image composed by registry-facade at pull time.\"\n",
            "echo \"PATH=$PATH\"\n",
            "echo \"IDE_NAME=$IDE_NAME\"\n",
            "echo \"Added to the base image:\"\n",
            "find /etc/registry-facade-static /ide /.supervisor /workspace -type f 2>/dev/null | sort | sed 's/^/  /'\n",
        ),
    ));
    entries
}

/// See [`QUICKSTART_BASE_LAYER`].
pub fn quickstart_base_layer() -> Layer {
    let hex = QUICKSTART_BASE_LAYER.trim_start_matches("sha256:");
    let committed = committed_layouts().join("base/blobs/sha256").join(hex);
    match std::fs::read(&committed) {
        Ok(blob) => Layer::from_gzip_blob(blob)
            .unwrap_or_else(|e| panic!("{}: not a gzip layer: {e}", committed.display())),
        Err(_) => Layer::build(quickstart_base_entries(), Compression::Gzip),
    }
}

/// The quickstart base image: one layer ([`quickstart_base_layer`]), `Env PATH=/usr/bin:/bin`,
/// `Cmd [QUICKSTART_HELLO]`, label `org.opencontainers.image.title=quickstart-base`.
pub fn quickstart_base() -> BuiltImage {
    ImageBuilder::new()
        .layer_with_history(
            quickstart_base_layer(),
            "busybox and the quickstart greeting",
        )
        .env("PATH=/usr/bin:/bin")
        .cmd([QUICKSTART_HELLO])
        .label("org.opencontainers.image.title", "quickstart-base")
        .build()
}

/// The quickstart IDE image: layer 1 `/ide/bin/ide-start`, layer 2 `/ide/lib/product.json`;
/// env `GITPOD_ENV_SET_IDE_NAME=quickstart-ide`, `GITPOD_ENV_APPEND_PATH=/ide/bin:`.
pub fn quickstart_ide() -> BuiltImage {
    let l1 = Layer::build(
        vec![Entry::exec(
            "/ide/bin/ide-start",
            "#!/bin/sh\necho \"quickstart IDE starting: IDE_NAME=$IDE_NAME\"\nexec \"$@\"\n",
        )],
        Compression::Gzip,
    );
    let l2 = Layer::build(
        vec![Entry::file(
            "/ide/lib/product.json",
            "{\"name\":\"quickstart-ide\",\"version\":\"1.0.0\"}\n",
        )],
        Compression::Gzip,
    );
    ImageBuilder::new()
        .layer_with_history(l1, "quickstart ide start script")
        .layer_with_history(l2, "quickstart ide product.json")
        .env("GITPOD_ENV_SET_IDE_NAME=quickstart-ide")
        .env("GITPOD_ENV_APPEND_PATH=/ide/bin:")
        .label("org.opencontainers.image.title", "quickstart-ide")
        .build()
}

/// The quickstart supervisor image: one layer with the `/.supervisor/supervisor` script;
/// env `GITPOD_ENV_PREPEND_PATH=:/.supervisor`.
pub fn quickstart_supervisor() -> BuiltImage {
    let layer = Layer::build(
        vec![Entry::exec(
            "/.supervisor/supervisor",
            "#!/bin/sh\necho \"quickstart supervisor stub: $*\"\nexec \"$@\"\n",
        )],
        Compression::Gzip,
    );
    ImageBuilder::new()
        .layer_with_history(layer, "quickstart supervisor stub")
        .env("GITPOD_ENV_PREPEND_PATH=:/.supervisor")
        .label("org.opencontainers.image.title", "quickstart-supervisor")
        .build()
}

/// Writes the OCI layouts `dir/base`, `dir/ide` and `dir/supervisor` (tag `latest` each).
/// Existing layouts at those paths are replaced; other contents of `dir` are left alone.
/// The output is byte-identical on every run and machine.
pub fn write_quickstart(dir: impl AsRef<Path>) -> Result<Quickstart> {
    let dir = dir.as_ref();
    let q = Quickstart {
        base: quickstart_base(),
        ide: quickstart_ide(),
        supervisor: quickstart_supervisor(),
    };
    for (name, img) in [
        ("base", &q.base),
        ("ide", &q.ide),
        ("supervisor", &q.supervisor),
    ] {
        let d = dir.join(name);
        if d.exists() {
            if !d.join("oci-layout").is_file() {
                bail!(
                    "{} exists and is not an OCI layout; not replacing it",
                    d.display()
                );
            }
            std::fs::remove_dir_all(&d)?;
        }
        OciLayout::create(&d)?.add_image(img, "latest")?;
    }
    Ok(q)
}
