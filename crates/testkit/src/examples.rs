//! Tiny deterministic OCI layouts for the project's quickstart (plain text files only, no network).
//!
//! `cargo run -p rf-testkit --example write-quickstart -- DIR` writes them from the command line.

use std::path::Path;

use anyhow::{bail, Result};

use crate::layout::{BuiltImage, Compression, Entry, ImageBuilder, Layer, OciLayout};

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

/// The quickstart base image: one layer with `/etc/quickstart-base` and `/bin/README`,
/// `Env PATH=/usr/bin:/bin`, `Cmd ["/bin/sh"]`, label `org.opencontainers.image.title=quickstart-base`.
pub fn quickstart_base() -> BuiltImage {
    let layer = Layer::build(
        vec![
            Entry::file(
                "/etc/quickstart-base",
                "NAME=\"Quickstart Base\"\nID=quickstart\nVERSION_ID=1\nPRETTY_NAME=\"registry-facade quickstart base image\"\n",
            ),
            Entry::file(
                "/bin/README",
                "This is a placeholder base image for the registry-facade quickstart.\nIt contains text files only, no binaries.\n",
            ),
        ],
        Compression::Gzip,
    );
    ImageBuilder::new()
        .layer_with_history(layer, "quickstart base files")
        .env("PATH=/usr/bin:/bin")
        .cmd(["/bin/sh"])
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
