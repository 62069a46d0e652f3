//! Certificates for TLS tests, made with the `openssl` CLI: a CA and a server certificate for
//! `localhost` and `127.0.0.1` signed by it (P-256, valid one day).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The PEM files written by [`server_cert`].
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The CA certificate clients trust.
    pub ca: PathBuf,
    /// The server certificate (`localhost`, `127.0.0.1`), signed by the CA.
    pub cert: PathBuf,
    /// The server's private key.
    pub key: PathBuf,
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("running openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes a CA and a server certificate signed by it into `dir`.
pub fn server_cert(dir: &Path) -> TlsFiles {
    crate::require_tool("openssl");
    let p = |n: &str| dir.join(n).to_string_lossy().into_owned();
    let (ca_key, ca, key, csr, cert, ext) = (
        p("ca.key"),
        p("ca.pem"),
        p("server.key"),
        p("server.csr"),
        p("server.pem"),
        p("ext.cnf"),
    );
    let new_key = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut args = vec!["req", "-x509"];
    args.extend(new_key);
    args.extend([
        "-keyout",
        &ca_key,
        "-out",
        &ca,
        "-days",
        "1",
        "-subj",
        "/CN=rf-testkit CA",
    ]);
    openssl(&args);
    let mut args = vec!["req"];
    args.extend(new_key);
    args.extend(["-keyout", &key, "-out", &csr, "-subj", "/CN=localhost"]);
    openssl(&args);
    // A leaf, not a CA: rustls refuses a CA certificate as a server's end-entity certificate.
    std::fs::write(
        &ext,
        "basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .expect("writing the extension file");
    openssl(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-out",
        &cert,
        "-days",
        "1",
        "-extfile",
        &ext,
    ]);
    TlsFiles {
        ca: ca.into(),
        cert: cert.into(),
        key: key.into(),
    }
}
