#!/usr/bin/env bash
# The GPU measurements of BENCHMARKS.md in one prepared run, for a machine with a real GPU (an
# NVIDIA one: --run uses its Vulkan ICD where present). It needs no Rust there: build and strip
# the binary here, copy it along with the Vulkan loader and the PyTorch peer (all in .device/),
# and run this script there as one command from a copy of the repository:
#
#   here, once:   benches/device.sh --prepare        (fills .device/, ignored by git)
#   GPU machine:  benches/device.sh --run OUT        (with .device/ copied into the repository)
#
# --run writes everything to one log (bench tables, bench JSON, PyTorch JSON lines) under OUT:
# for each config, `bench --fusion on` and `--fusion off` (whole coupling layers against one
# launch per kernel; each JSON names the adapter), each also with `--precision f16`
# (activations stored as f16), and pytorch_flow.py on CUDA, then a summary.
# QUICK=1 runs only the tutorial (to try the script on any machine).
set -uo pipefail
cd "$(dirname "$0")/.."
DEV=.device

case "${1:-}" in
--prepare)
  set -e
  cargo build --release -q
  mkdir -p "$DEV/gl" /tmp/amd64/partial
  grep -qx "/$DEV/" .git/info/exclude 2>/dev/null || echo "/$DEV/" >>.git/info/exclude
  cp target/release/gomaflow-wgpu "$DEV/gomaflow-wgpu"
  strip "$DEV/gomaflow-wgpu"
  cp benches/peers/pytorch_flow.py "$DEV/"
  # The Vulkan loader and GL vendor libraries (x86-64 packages), which --run unpacks there.
  o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
  # shellcheck disable=SC2086
  apt-get $o update -qq && (cd "$DEV/gl" && apt-get $o download -qq libvulkan1 libegl1 \
    libglvnd0 libopengl0 libgl1 libglx0 libgles2)
  du -sh "$DEV"
  ;;
--run)
  OUT=${2:?usage: $0 --run OUTDIR}
  mkdir -p "$OUT"
  LOG="$OUT/device_log.txt"
  exec > >(tee "$LOG") 2>&1
  if ls "$DEV"/gl/*.deb >/dev/null 2>&1; then
    for f in "$DEV"/gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
  fi
  icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  [ -f "$icd" ] && export VK_DRIVER_FILES=$icd
  BIN=$DEV/gomaflow-wgpu
  [ -x "$BIN" ] || BIN=target/release/gomaflow-wgpu
  PEER=$DEV/pytorch_flow.py
  [ -f "$PEER" ] || PEER=benches/peers/pytorch_flow.py
  nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv 2>/dev/null || true
  $BIN devices
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())' || true
  # name | config | bench steps | pytorch args
  LIST='tutorial 2D L8 b64|configs/phi4_2d_L8.toml|50|--L 8 --d 2 --batch 64
2D L32 b256 [32,32]|configs/bench_2d_L32.toml|10|--L 32 --d 2 --batch 256 --hidden 32,32 --lam 5.113
3D L8 b64|configs/phi4_3d_L8.toml|20|--L 8 --d 3 --batch 64 --lam 5.113
3D L16 b64|configs/bench_3d_L16.toml|10|--L 16 --d 3 --batch 64 --lam 5.113
4D L8 b64|configs/bench_4d_L8.toml|10|'
  [ "${QUICK:-0}" = 1 ] && LIST=$(echo "$LIST" | head -1)
  summary=""
  while IFS='|' read -r name cfg steps args; do
    echo "=== $name ($cfg)"
    line="$name"
    # Whole layers and per kernel, each in f32 and in f16.
    for run in "on f32" "off f32" "on f16" "off f16"; do
      read -r fusion precision <<<"$run"
      echo "--- bench --fusion $fusion --precision $precision"
      json=$(timeout 240 $BIN bench "$cfg" --json --steps "$steps" --fusion "$fusion" --precision "$precision")
      echo "$json"
      s=$(echo "$json" | python3 -c 'import json,sys; j=json.load(sys.stdin); print("%.3f ms (%s, %d dispatches, %s activations %.1f MiB, %.0f proposals/s)" % (1e3*j["train_step_s"], "fused" if j["fused_layers"] else "per kernel", j["dispatches_per_step"], j["precision"], j["activation_bytes"] / 2**20, j["sample_per_s"]))' 2>/dev/null)
      line="$line | $fusion $precision: ${s:-failed}"
    done
    if [ -n "$args" ]; then
      echo "--- pytorch_flow.py (cuda)"
      # shellcheck disable=SC2086
      py=$(timeout 240 python3 "$PEER" $args --steps "$steps" --device cuda 2>&1 | tail -1)
      echo "$py"
      t=$(echo "$py" | python3 -c 'import json,sys; print("%.3f ms" % (1e3*json.loads(sys.stdin.read())["step_s_median"]))' 2>/dev/null)
      line="$line | pytorch cuda: ${t:-failed}"
    fi
    summary="$summary$line"$'\n'
  done <<<"$LIST"
  echo "=== summary (median training step)"
  printf '%s' "$summary"
  ;;
*)
  echo "usage: $0 --prepare | --run OUTDIR" >&2
  exit 2
  ;;
esac
