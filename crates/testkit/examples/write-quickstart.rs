//! Writes the quickstart OCI layouts: `cargo run -p rf-testkit --example write-quickstart -- DIR`.

fn main() -> anyhow::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: write-quickstart DIR"))?;
    let q = rf_testkit::examples::write_quickstart(&dir)?;
    for (name, img) in [
        ("base", &q.base),
        ("ide", &q.ide),
        ("supervisor", &q.supervisor),
    ] {
        println!("{dir}/{name}:latest {}", img.manifest_digest);
    }
    Ok(())
}
