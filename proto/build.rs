//! Generates the `sekisho.v1` wire types with a vendored `protoc`, so a build
//! needs nothing but cargo.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // Build scripts are single threaded; tonic-prost-build reads PROTOC.
    std::env::set_var("PROTOC", protoc);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(
            &[
                "proto/sekisho/v1/policy.proto",
                "proto/sekisho/v1/logon.proto",
                "proto/sekisho/v1/audit.proto",
            ],
            &["proto"],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
