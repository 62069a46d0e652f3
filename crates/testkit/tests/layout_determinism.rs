//! (a) The quickstart layouts (and images in general) are byte-identical on every build.

use std::collections::BTreeMap;
use std::path::Path;

use rf_testkit::examples::write_quickstart;
use rf_testkit::layout::{OciLayout, REF_NAME_ANNOTATION};

fn read_tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if p.is_dir() {
                out.insert(format!("{rel}/"), Vec::new());
                walk(root, &p, out);
            } else {
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

#[test]
fn quickstart_layouts_are_byte_identical() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let qa = write_quickstart(a.path()).unwrap();
    let qb = write_quickstart(b.path()).unwrap();
    let (ta, tb) = (read_tree(a.path()), read_tree(b.path()));
    assert_eq!(ta.keys().collect::<Vec<_>>(), tb.keys().collect::<Vec<_>>());
    assert!(ta == tb, "trees differ");
    assert_eq!(qa.base.manifest_digest, qb.base.manifest_digest);

    // writing again into the same dir replaces the layouts and gives the same bytes
    write_quickstart(a.path()).unwrap();
    assert!(read_tree(a.path()) == tb);

    // structure: three layouts, tag latest, every referenced blob present
    for (name, img, n_layers) in [
        ("base", &qa.base, 1),
        ("ide", &qa.ide, 2),
        ("supervisor", &qa.supervisor, 1),
    ] {
        let dir = a.path().join(name);
        assert_eq!(
            std::fs::read_to_string(dir.join("oci-layout")).unwrap(),
            r#"{"imageLayoutVersion":"1.0.0"}"#
        );
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
        assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
        assert_eq!(index["manifests"][0]["digest"], img.manifest_digest);
        assert_eq!(
            index["manifests"][0]["annotations"][REF_NAME_ANNOTATION],
            "latest"
        );
        let layout = OciLayout::open(&dir).unwrap();
        let manifest = std::fs::read(layout.blob_path(&img.manifest_digest)).unwrap();
        assert_eq!(manifest, img.manifest);
        assert_eq!(rf_testkit::sha256_digest(&manifest), img.manifest_digest);
        assert_eq!(img.layers.len(), n_layers);
        for (digest, bytes) in img.blobs() {
            assert_eq!(std::fs::read(layout.blob_path(digest)).unwrap(), bytes);
        }
        // tiny: plain text files only, but for the base, which must run its greeting (issue 8:
        // "the quickstart image runs"), so it carries busybox (about 1 MiB gzipped)
        let total: u64 = img.layers.iter().map(|l| l.size).sum();
        let limit = if name == "base" { 2 << 20 } else { 4096 };
        assert!(total < limit, "{name} layers are {total} bytes");
    }

    let env = |img: &rf_testkit::BuiltImage| img.config_json()["config"]["Env"].clone();
    assert_eq!(env(&qa.base), serde_json::json!(["PATH=/usr/bin:/bin"]));
    assert_eq!(
        env(&qa.ide),
        serde_json::json!([
            "GITPOD_ENV_SET_IDE_NAME=quickstart-ide",
            "GITPOD_ENV_APPEND_PATH=/ide/bin:"
        ])
    );
    assert_eq!(
        env(&qa.supervisor),
        serde_json::json!(["GITPOD_ENV_PREPEND_PATH=:/.supervisor"])
    );
    assert_eq!(
        qa.ide.layers[0].tar_paths().unwrap(),
        ["ide/", "ide/bin/", "ide/bin/ide-start"]
    );
    assert_eq!(
        qa.ide.layers[1].tar_paths().unwrap(),
        ["ide/", "ide/lib/", "ide/lib/product.json"]
    );
}

#[test]
fn busybox_image_is_deterministic() {
    use rf_testkit::layout::{busybox_entries, Compression, Layer};
    let a = rf_testkit::busybox_image().build();
    let b = rf_testkit::busybox_image().build();
    assert_eq!(a, b);
    // independent of the per-process cache
    assert_eq!(
        Layer::build(busybox_entries(), Compression::Gzip),
        a.layers[0]
    );
    let paths = a.layers[0].tar_paths().unwrap();
    for p in [
        "bin/",
        "bin/busybox",
        "bin/sh",
        "etc/passwd",
        "etc/group",
        "tmp/",
        "root/",
        "proc/",
    ] {
        assert!(
            paths.iter().any(|x| x == p),
            "{p} missing from the busybox layer"
        );
    }
}
