//! Fixed-seed image content shared by the phases: incompressible bytes and gzip layers of them.
//! A leaf (rf-testkit aside).

use anyhow::Result;
use rf_testkit::Layer;

/// `n` bytes from xoshiro256** seeded through splitmix64: deterministic, incompressible.
pub fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
    let mut sm = seed;
    let mut next_sm = || {
        sm = sm.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = sm;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut s = [next_sm(), next_sm(), next_sm(), next_sm()];
    let mut out = vec![0u8; n];
    for chunk in out.chunks_mut(8) {
        let r = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        chunk.copy_from_slice(&r.to_le_bytes()[..chunk.len()]);
    }
    out
}

/// A gzip layer of `tar` made of stored (uncompressed) deflate blocks: what gzip produces for
/// incompressible data anyway, without spending a minute compressing. (skopeo would gzip a plain
/// tar layer on push, changing its digest.)
pub fn stored_gzip_layer(tar: Vec<u8>) -> Result<Layer> {
    use std::io::Write as _;
    let diff_id = rf_testkit::sha256_digest(&tar);
    let mut enc = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(
            Vec::with_capacity(tar.len() + tar.len() / 1000 + 1024),
            flate2::Compression::none(),
        );
    enc.write_all(&tar)?;
    drop(tar);
    let blob = enc.finish()?;
    Ok(Layer {
        digest: rf_testkit::sha256_digest(&blob),
        diff_id,
        size: blob.len() as u64,
        blob,
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
    })
}
