//! Build script: none of hooksign's own code is generated. It exists so that the
//! `protoc-bin-vendored` build-dependency is part of the build, which makes cargo fetch the
//! vendored protoc that `tools/protoc` (named by `PROTOC` in `.cargo/config.toml`) gives to
//! etcd-client's build script.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // Touch the crate so it is linked into the build script, not just declared.
    let _ = protoc_bin_vendored::protoc_bin_path();
}
