//! Compiles the protobuf definitions under `<workspace>/proto` with `protox`
//! (a pure-Rust protobuf compiler), so no `protoc` binary is needed.

use std::{env, fs, path::PathBuf};

use prost::Message;

/// Proto files, relative to the include root.
const PROTOS: &[&str] = &[
    "registryfacade/imagespec.proto",
    "registryfacade/provider.proto",
    "contentservice/initializer.proto",
    "builder/imgbuilder.proto",
    "builder/subassembly.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest_dir.join("../../proto");

    println!("cargo:rerun-if-changed={}", proto_root.display());
    for proto in PROTOS {
        println!(
            "cargo:rerun-if-changed={}",
            proto_root.join(proto).display()
        );
    }

    let fds = protox::compile(PROTOS, [&proto_root])?;

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out_dir.join("file_descriptor_set.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;

    Ok(())
}
