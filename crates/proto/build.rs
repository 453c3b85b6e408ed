//! Generates the gRPC code from proto/driftkv.proto with protox, a pure-Rust protobuf
//! compiler, so building needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../proto");
    let schema = format!("{proto_dir}/driftkv.proto");
    println!("cargo:rerun-if-changed={schema}");
    let descriptors = protox::compile([&schema], [proto_dir])?;
    tonic_prost_build::configure()
        // Values travel as `bytes::Bytes`, so they are never copied between the wire and storage.
        .bytes(".driftkv.v1.LiveValue.value")
        // Messages are encoded into room of their exact size (see `codec`).
        .codec_path("crate::codec::ExactCodec")
        .compile_fds(descriptors)?;
    Ok(())
}
