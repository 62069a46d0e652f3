//! Images from OCI image layouts on disk (built with the testkit).

mod common;

use common::{drain, test_image};
use rf_oci::{media, Digest, ImageRef};
use rf_testkit::{ImageBuilder, OciLayout};
use rf_upstream::{Upstream, UpstreamConfig, UpstreamError};

fn layout_ref(dir: &std::path::Path, suffix: &str) -> ImageRef {
    format!("oci:{}{suffix}", dir.display()).parse().unwrap()
}

fn d(s: &str) -> Digest {
    s.parse().unwrap()
}

#[tokio::test]
async fn manifests_by_tag_default_and_digest() {
    let tmp = tempfile::tempdir().unwrap();
    let img = test_image("layout");
    let other = ImageBuilder::new().env("OTHER=1").build();
    let mut layout = OciLayout::create(tmp.path()).unwrap();
    layout.add_image(&img, "latest").unwrap();
    layout.add_image(&other, "example.com/app:v2").unwrap();
    let up = Upstream::new(UpstreamConfig::default()).unwrap();

    for suffix in [":latest", ""] {
        let m = up
            .fetch_manifest(&layout_ref(tmp.path(), suffix))
            .await
            .unwrap();
        assert_eq!(m.bytes, img.manifest, "{suffix:?}");
        assert_eq!(m.digest, d(&img.manifest_digest));
        assert_eq!(m.media_type, media::OCI_MANIFEST);
    }
    // Full ref names answer to their tag part, and to themselves.
    let m = up
        .fetch_manifest(&layout_ref(tmp.path(), ":v2"))
        .await
        .unwrap();
    assert_eq!(m.digest, d(&other.manifest_digest));
    let full = ImageRef::Layout {
        dir: tmp.path().into(),
        tag: Some("example.com/app:v2".into()),
        digest: None,
    };
    assert_eq!(
        up.fetch_manifest(&full).await.unwrap().digest,
        d(&other.manifest_digest)
    );

    let by_digest = layout_ref(tmp.path(), &format!("@{}", other.manifest_digest));
    let m = up.fetch_manifest(&by_digest).await.unwrap();
    assert_eq!(m.bytes, other.manifest);
    let head = up.head_manifest(&by_digest).await.unwrap();
    assert_eq!(head.digest, d(&other.manifest_digest));
    assert_eq!(head.size, other.manifest.len() as u64);
    assert_eq!(head.media_type, media::OCI_MANIFEST);
    assert!(m.parse().is_ok());

    let missing = up
        .fetch_manifest(&layout_ref(tmp.path(), ":nope"))
        .await
        .unwrap_err();
    assert!(
        matches!(missing, UpstreamError::NotFound { .. }),
        "{missing}"
    );
    let unknown_digest = layout_ref(tmp.path(), &format!("@{}", Digest::sha256_of(b"x")));
    assert!(up
        .fetch_manifest(&unknown_digest)
        .await
        .unwrap_err()
        .is_not_found());
    let no_layout = layout_ref(&tmp.path().join("absent"), "");
    assert!(up
        .fetch_manifest(&no_layout)
        .await
        .unwrap_err()
        .is_not_found());
}

#[tokio::test]
async fn untagged_choice_needs_latest_when_ambiguous() {
    let tmp = tempfile::tempdir().unwrap();
    let mut layout = OciLayout::create(tmp.path()).unwrap();
    layout
        .add_image(&ImageBuilder::new().env("A=1").build(), "a")
        .unwrap();
    layout
        .add_image(&ImageBuilder::new().env("B=1").build(), "b")
        .unwrap();
    let up = Upstream::new(UpstreamConfig::default()).unwrap();
    let e = up
        .fetch_manifest(&layout_ref(tmp.path(), ""))
        .await
        .unwrap_err();
    assert!(matches!(e, UpstreamError::InvalidReference(_)), "{e}");
}

#[tokio::test]
async fn blobs_stream_in_chunks_and_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let img = test_image("blobs");
    let mut layout = OciLayout::create(tmp.path()).unwrap();
    layout.add_image(&img, "latest").unwrap();
    let up = Upstream::new(UpstreamConfig::default()).unwrap();
    let image = layout_ref(tmp.path(), ":latest");

    let cfg = up
        .fetch_blob_bytes(&image, &d(&img.config_digest), 1 << 20)
        .await
        .unwrap();
    assert_eq!(cfg, img.config);
    let e = up
        .fetch_blob_bytes(&image, &d(&img.config_digest), 10)
        .await
        .unwrap_err();
    assert!(matches!(e, UpstreamError::TooLarge { limit: 10 }), "{e}");

    let big = &img.layers[1];
    let blob = up.open_blob(&image, &d(&big.digest), 0).await.unwrap();
    assert_eq!(blob.size, Some(big.size));
    let (bytes, chunks, err) = drain(blob).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(bytes, big.blob);
    assert!(chunks >= 3, "{chunks} chunks");

    let offset = big.size - 1000;
    let blob = up.open_blob(&image, &d(&big.digest), offset).await.unwrap();
    assert_eq!(blob.size, Some(big.size));
    let (bytes, _, err) = drain(blob).await;
    assert!(err.is_none());
    assert_eq!(bytes, big.blob[offset as usize..]);

    let e = up
        .open_blob(&image, &Digest::sha256_of(b"absent"), 0)
        .await
        .unwrap_err();
    assert!(e.is_not_found(), "{e}");
}

#[tokio::test]
async fn tampered_files_are_digest_mismatches() {
    let tmp = tempfile::tempdir().unwrap();
    let img = test_image("tampered");
    let mut layout = OciLayout::create(tmp.path()).unwrap();
    layout.add_image(&img, "latest").unwrap();
    let up = Upstream::new(UpstreamConfig::default()).unwrap();
    let image = layout_ref(tmp.path(), ":latest");

    // Same length, one byte flipped: only the hash can tell.
    let big = &img.layers[1];
    let path = layout.blob_path(&big.digest);
    let mut data = std::fs::read(&path).unwrap();
    data[1 << 20] ^= 0xff;
    std::fs::write(&path, &data).unwrap();
    let (bytes, _, err) = drain(up.open_blob(&image, &d(&big.digest), 0).await.unwrap()).await;
    assert_eq!(bytes.len(), data.len());
    match err {
        Some(UpstreamError::DigestMismatch { expected, actual }) => {
            assert_eq!(expected, d(&big.digest));
            assert_eq!(actual, Digest::sha256_of(&data).to_string());
        }
        other => panic!("expected a digest mismatch, got {other:?}"),
    }

    std::fs::write(layout.blob_path(&img.config_digest), b"{}").unwrap();
    let e = up
        .fetch_blob_bytes(&image, &d(&img.config_digest), 1 << 20)
        .await
        .unwrap_err();
    assert!(matches!(e, UpstreamError::DigestMismatch { .. }), "{e}");

    std::fs::write(
        layout.blob_path(&img.manifest_digest),
        b"{\"schemaVersion\":2}",
    )
    .unwrap();
    let e = up.fetch_manifest(&image).await.unwrap_err();
    assert!(matches!(e, UpstreamError::DigestMismatch { .. }), "{e}");
}
