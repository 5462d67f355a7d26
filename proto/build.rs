//! Compiles the API with protox (a Rust protobuf compiler), so no system
//! `protoc` is needed on a fresh machine. See docs/decisions/0003-proto-build-with-protox.md.

use std::{env, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["healthcode/v1/events.proto", "healthcode/v1/ingest.proto", "healthcode/v1/lookup.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["."])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    // compile_fds does not write the descriptor set; reflection needs it.
    std::fs::write(out_dir.join("healthcode_descriptor.bin"), descriptors.encode_to_vec())?;
    let feature = |name: &str| env::var_os(format!("CARGO_FEATURE_{name}")).is_some();
    tonic_prost_build::configure()
        .build_server(feature("SERVER"))
        .build_client(feature("CLIENT"))
        .compile_fds(descriptors)?;
    Ok(())
}
