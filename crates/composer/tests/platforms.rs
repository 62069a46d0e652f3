//! A platform of a multi-platform base that an added image lacks is left out of the composed
//! index with a warning that names the image and the platform, and is counted: arm64 nodes
//! otherwise fail with "no match for platform" and nothing says why.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

use rf_composer::{Composer, ComposerSettings, FixedSpecProvider, SpecProvider};
use rf_oci::{media, Accept};
use rf_testkit::{Compression, Entry, ImageBuilder, IndexStyle, Layer, OciLayout, Platform};
use rf_upstream::{Upstream, UpstreamConfig};
use serde_json::json;

/// Collects what the fmt subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn image(role: &str, arch: &str) -> rf_testkit::BuiltImage {
    ImageBuilder::new()
        .platform(&Platform::new("linux", arch))
        .layer(Layer::build(
            vec![Entry::file(format!("/{role}"), format!("{role} {arch}\n"))],
            Compression::Gzip,
        ))
        .build()
}

#[tokio::test]
async fn a_platform_an_added_image_lacks_is_warned_about_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let base_amd = image("base", "amd64");
    let base_arm = image("base", "arm64");
    let base_dir = dir.path().join("base");
    OciLayout::create(&base_dir)
        .unwrap()
        .add_index(
            &[
                (&base_amd, Platform::new("linux", "amd64")),
                (&base_arm, Platform::new("linux", "arm64")),
            ],
            "latest",
            IndexStyle::Oci,
        )
        .unwrap();
    let ide_amd = image("ide", "amd64");
    let ide_dir = dir.path().join("ide");
    OciLayout::create(&ide_dir)
        .unwrap()
        .add_index(
            &[(&ide_amd, Platform::new("linux", "amd64"))],
            "latest",
            IndexStyle::Oci,
        )
        .unwrap();
    let ide_ref = format!("oci:{}:latest", ide_dir.display());
    let specs = json!({"ws": {
        "baseRef": format!("oci:{}:latest", base_dir.display()),
        "ideRef": ide_ref,
    }});
    let fixed = FixedSpecProvider::from_json(specs.to_string().as_bytes()).unwrap();
    let providers = HashMap::from([(
        "fixed".to_string(),
        Arc::new(fixed) as Arc<dyn SpecProvider>,
    )]);
    let composer = Composer::new(
        providers,
        Upstream::new(UpstreamConfig::default()).unwrap(),
        None,
        ComposerSettings::default(),
    )
    .await
    .unwrap();

    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let accept = Accept::parse([media::OCI_INDEX]);
    let index = composer
        .manifest("fixed", "ws", "latest", &accept)
        .await
        .unwrap();
    assert_eq!(index.media_type, media::OCI_INDEX);
    let doc: serde_json::Value = serde_json::from_slice(&index.bytes).unwrap();
    assert_eq!(doc["manifests"].as_array().unwrap().len(), 1, "amd64 only");
    assert_eq!(composer.platforms_dropped(), 1);

    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("platform left out of the composed index"))
        .unwrap_or_else(|| panic!("no warning in:\n{log}"));
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("linux/arm64"), "{line}");
    assert!(line.contains(&ide_ref), "{line}");

    // the composition is cached: asking again neither warns nor counts again
    composer
        .manifest("fixed", "ws", "latest", &accept)
        .await
        .unwrap();
    assert_eq!(composer.platforms_dropped(), 1);
}
