//! Compiles `proto/` into the Rust API (messages, clients and servers) and writes the
//! file descriptor set that the service's reflection endpoint serves to grpcurl.
//!
//! prost needs a `protoc` binary; `.cargo/config.toml` points `PROTOC` at
//! `scripts/protoc`, which finds the real one or says how to install it.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/deephardway/v1/jobs.proto",
        "proto/deephardway/v1/inputs.proto",
        "proto/deephardway/v1/models.proto",
        "proto/deephardway/v1/datasets.proto",
        "proto/deephardway/v1/access.proto",
        "proto/deephardway/worker/v1/worker.proto",
    ];
    let descriptor = PathBuf::from(env::var("OUT_DIR")?).join("deephardway_descriptor.bin");
    tonic_prost_build::configure()
        // `WorkerService.Connect` would collide with the generated `connect` constructor;
        // clients are built from a channel instead (see `deephardway::connect`).
        .build_transport(false)
        // google.rpc.Status (job errors) is tonic-types' type, so that its helpers for
        // error details (google.rpc.BadRequest) apply to it.
        .extern_path(".google.rpc", "::tonic_types::pb")
        .file_descriptor_set_path(&descriptor)
        .compile_protos(&protos, &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
