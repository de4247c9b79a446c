//! Generates the CSI v1.12.0 gRPC code (servers and clients) from `proto/csi/v1/csi.proto` with
//! a vendored `protoc`, so a fresh machine needs no system protobuf compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // tonic-prost-build runs the compiler named by PROTOC.
    unsafe_env_set("PROTOC", protoc);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto");
    let file = root.join("csi/v1/csi.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    tonic_prost_build::configure().compile_protos(&[file], &[root])?;
    Ok(())
}

#[allow(unsafe_code)]
fn unsafe_env_set(key: &str, value: std::path::PathBuf) {
    // SAFETY: called before any other thread exists in this build script.
    unsafe { std::env::set_var(key, value) }
}
