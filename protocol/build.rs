//! Generates the V2 gRPC messages and service (tonic + prost) from `proto/`, with the
//! pure-Rust `protox` compiler: a clone builds with cargo alone, no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/grpc_service.proto", "proto/model_config.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        // Tensor bytes stay slices of the received message: no copy per input.
        .bytes(".")
        .compile_fds(descriptors)?;
    Ok(())
}
