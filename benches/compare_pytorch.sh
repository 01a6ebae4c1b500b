#!/usr/bin/env bash
# Side-by-side step times: gomaflow-wgpu's `bench --json` and the PyTorch reference
# (benches/peers/pytorch_flow.py, or PYTORCH_FLOW=path) on the same machine and configs.
# Usage: benches/compare_pytorch.sh PYTHON [THREADS] [DEVICE]
#   PYTHON  a Python with torch (e.g. a virtualenv outside the repo: python -m venv ~/torchenv &&
#           ~/torchenv/bin/pip install torch numpy)
#   THREADS torch CPU threads (default: nproc); DEVICE cpu or cuda (default: cpu)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:?usage: $0 PYTHON [THREADS] [DEVICE]}
THREADS=${2:-$(nproc)}
DEVICE=${3:-cpu}
PEER=${PYTORCH_FLOW:-benches/peers/pytorch_flow.py}
BIN=target/release/gomaflow-wgpu
cargo build --release -q
# name | our config | steps | pytorch args
while IFS='|' read -r name cfg steps args; do
  ours=$($BIN bench "$cfg" --json --step-only --steps "$steps" | python3 -c 'import json,sys; j=json.load(sys.stdin); print(j["train_step_s"], j["adapter"])')
  if [ -n "$args" ]; then
    # shellcheck disable=SC2086
    theirs=$("$PY" "$PEER" $args --steps "$steps" --threads "$THREADS" --device "$DEVICE" 2>/dev/null |
      python3 -c 'import json,sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])["step_s_median"])')
  else
    theirs="-"
  fi
  echo "$name | ours ${ours%% *} s | pytorch $theirs s | ${ours#* }"
done <<'LIST'
tutorial 2D L8 b64|configs/phi4_2d_L8.toml|20|--L 8 --d 2 --batch 64
2D L32 b256 [32,32]|configs/bench_2d_L32.toml|3|--L 32 --d 2 --batch 256 --hidden 32,32 --lam 5.113
3D L8 b64|configs/phi4_3d_L8.toml|5|--L 8 --d 3 --batch 64 --lam 5.113
3D L16 b64|configs/bench_3d_L16.toml|3|--L 16 --d 3 --batch 64 --lam 5.113
4D L8 b64|configs/bench_4d_L8.toml|3|
LIST
