#!/usr/bin/env bash
# Train once, sample N shards as a job array, merge in a dependent job:
#
#   examples/slurm/submit.sh CONFIG.toml RUN_DIR N SAMPLES_PER_SHARD [EPOCHS]
#
# The array starts when training has succeeded, the merge when every shard has. Each job asks
# for one GPU (GPUS_PER_TASK=0 for none: lavapipe, or a CPU partition); SBATCH_EXTRA adds flags
# to every sbatch (a partition, an account, a time limit). GOMAFLOW names the binary
# (default: gomaflow-wgpu on the PATH). Prints the three job ids.
set -euo pipefail
if [ $# -lt 4 ]; then
    sed -n '2,9p' "$0" >&2
    exit 2
fi
config=$1 run=$2 n=$3 samples=$4 epochs=${5:-}
here=$(cd "$(dirname "$0")" && pwd)
gpus=${GPUS_PER_TASK:-1}
# A failed job cancels the jobs that wait on it, rather than leaving them pending forever.
common=(--parsable --export=ALL --kill-on-invalid-dep=yes)
[ "$gpus" -gt 0 ] && common+=(--gres="gpu:$gpus")
# shellcheck disable=SC2206
[ -n "${SBATCH_EXTRA:-}" ] && common+=($SBATCH_EXTRA)
mkdir -p "$run/shards"
run=$(cd "$run" && pwd)
train=$(sbatch "${common[@]}" --output="$run/slurm-train-%j.out" "$here/train.sbatch" "$(realpath "$config")" "$run" $epochs)
shards=$(sbatch "${common[@]}" --dependency="afterok:$train" --array="0-$((n - 1))" \
    --output="$run/slurm-sample-%A_%a.out" \
    "$here/sample.sbatch" "$run" "$samples")
merge=$(sbatch "${common[@]}" --dependency="afterok:$shards" --output="$run/slurm-merge-%j.out" \
    "$here/merge.sbatch" "$run")
echo "$train $shards $merge"
