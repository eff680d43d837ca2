# Lines for .ci/run (before "cargo test"): etcd for tests/etcd.rs. Without /usr/bin/etcd those
# tests print a skip line and pass, so install it to exercise them.
echo "== etcd for tests/etcd.rs"
if ! command -v etcd >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends etcd-server >/dev/null
fi
# Debian's etcd-server package starts a system etcd on 127.0.0.1:2379; the tests use their own
# instances on free ports, so it is not needed (and harmless if it keeps running).
# No protoc package is needed: .cargo/config.toml points PROTOC at tools/protoc (vendored protoc).
# No extra cargo flags: the etcd backend is always built.
