//! Compiles `proto/blixard.proto` without a system `protoc`: protox parses it
//! into a descriptor set, which the (madsim-aware) tonic codegen then reads.
use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/blixard.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out_dir.join("blixard_descriptor.bin");
    std::fs::write(&descriptor_path, descriptors.encode_to_vec())?;
    tonic_build::configure()
        .file_descriptor_set_path(&descriptor_path)
        .skip_protoc_run()
        .compile_protos(&[proto], &["proto"])?;
    Ok(())
}
