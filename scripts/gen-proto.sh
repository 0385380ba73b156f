#!/usr/bin/env bash
# Regenerates src/onnx/proto.rs from proto/onnx.proto with prost-build + protox (pure Rust, no protoc).
# Run by hand when the vendored schema changes; the build never runs it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
mkdir -p "$work/src" "$work/out"
cat > "$work/Cargo.toml" <<TOML
[package]
name = "protogen"
version = "0.1.0"
edition = "2021"
[dependencies]
prost-build = "0.14"
protox = "0.10"
TOML
cat > "$work/src/main.rs" <<RS
fn main() {
    let fds = protox::compile(["onnx.proto"], ["$root/proto"]).unwrap();
    prost_build::Config::new().out_dir("$work/out").compile_fds(fds).unwrap();
}
RS
(cd "$work" && cargo run -q)
{ echo '// Generated once by prost-build 0.14 from proto/onnx.proto (see scripts/gen-proto.sh); do not edit.'; cat "$work/out/onnx.rs"; } > "$root/src/onnx/proto.rs"
