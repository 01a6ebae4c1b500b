#!/usr/bin/env bash
# Training-step time of the tutorial model (16 layers, hidden [8, 8]) against lattice volume V and
# batch B: where does the cost become linear in V*B? Prints "L B V*B step_ms us_per_site_sample fused"
# (fused: whether the coupling layers ran as whole-layer dispatches). FUSION=on|off|auto (default
# auto) is passed to `bench --fusion`.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
run() { # L batch
  sed -e "s/^L = 8/L = $1/" configs/phi4_2d_L8.toml > "$tmp/c.toml"
  target/release/gomaflow-wgpu bench "$tmp/c.toml" --json --steps "${3:-10}" --batch "$2" --fusion "${FUSION:-auto}" |
    python3 -c 'import json,sys; j=json.load(sys.stdin); vb=j["l"]**j["nd"]*j["batch"]; print(j["l"], j["batch"], vb, "%.3f" % (1e3*j["train_step_s"]), "%.3f" % (1e6*j["train_step_s"]/vb), j["fused_layers"])'
}
echo "L B V*B step_ms us_per_site_sample fused"
for L in 4 8 16 32; do run "$L" 64; done
for B in 1 4 16 256 1024; do run 8 "$B"; done
