#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine, and the job array of submit.sh through it:
#
#   examples/slurm/test_local_cluster.sh [CONFIG.toml [EPOCHS [N [SAMPLES_PER_SHARD]]]]
#
# Installs Debian's slurm-wlm and munge where missing, starts munged, slurmctld and slurmd on
# localhost (state, logs and pid files in a temporary directory), submits train -> N-task
# sample array -> merge, waits, and checks that the merged observables agree within 3 sigma with
# `hmc` and with one unsharded chain as long as all shards together (another seed), that the
# training ran once, and that every shard finished. Stops the daemons it started by their pid
# files (and removes the temporary directory unless KEEP=1). Defaults: the main config fully
# trained, 4 shards of 16,384 proposals.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
config=$(realpath "${1:-$root/configs/phi4_2d_L8_fast.toml}")
epochs=${2:-}
n=${3:-4}
samples=${4:-16384}
gomaflow=${GOMAFLOW:-$root/target/release/gomaflow-wgpu}
[ -x "$gomaflow" ] || { echo "build first: cargo build --release ($gomaflow)" >&2; exit 1; }

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null ||
    ! command -v python3 >/dev/null; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq slurm-wlm munge python3 >/dev/null
fi

work=$(mktemp -d /tmp/gomaflow-slurm.XXXXXX)
chmod 755 "$work"
host=$(hostname -s)
me=$(id -un)
mkdir -p "$work/state" "$work/spool" "$work/log" "$work/munge" "$work/munge-key"

# munge: its own key and socket, so nothing of the machine's is touched (the key's directory
# private, the socket's open to every user).
$SUDO dd if=/dev/urandom of="$work/munge-key/munge.key" bs=1024 count=1 status=none
$SUDO chmod 700 "$work/munge-key"
$SUDO chmod 400 "$work/munge-key/munge.key"
socket="$work/munge/munge.socket"
$SUDO munged --force --key-file="$work/munge-key/munge.key" --socket="$socket" \
    --pid-file="$work/munge/munged.pid" --log-file="$work/log/munged.log" \
    --seed-file="$work/munge-key/munge.seed"

cat >"$work/slurm.conf" <<CONF
ClusterName=gomaflow-test
SlurmctldHost=$host(127.0.0.1)
SlurmUser=$me
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$socket
CredType=cred/munge
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldLogFile=$work/log/slurmctld.log
SlurmdLogFile=$work/log/slurmd.log
SlurmctldPort=16817
SlurmdPort=16818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
NodeName=$host NodeAddr=127.0.0.1 CPUs=$(nproc) State=UNKNOWN
PartitionName=test Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF="$work/slurm.conf"

stop() {
    local rc=$? pid
    for p in slurmd slurmctld munge/munged; do
        pid=$(cat "$work/$p.pid" 2>/dev/null) || continue
        $SUDO kill "$pid" 2>/dev/null || continue
        # A daemon writes on its way out (munged its seed file into munge-key/): wait until it
        # has gone before removing the directory, or rm races it.
        for _ in $(seq 100); do
            $SUDO kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
    done
    # The run directory stays for inspection with KEEP=1. Cleaning up never changes the verdict.
    if [ -n "${KEEP:-}" ]; then
        echo "kept $work"
    else
        $SUDO rm -rf "$work" || echo "warning: could not remove $work" >&2
    fi
    exit "$rc"
}
trap stop EXIT
$SUDO env SLURM_CONF="$SLURM_CONF" slurmctld
$SUDO env SLURM_CONF="$SLURM_CONF" slurmd
for _ in $(seq 60); do
    sinfo -h -o %T 2>/dev/null | grep -q idle && break
    sleep 1
done
sinfo

run="$work/run"
ids=$(GOMAFLOW="$gomaflow" GPUS_PER_TASK=0 "$root/examples/slurm/submit.sh" \
    "$config" "$run" "$n" "$samples" $epochs)
echo "submitted jobs (train, sample array, merge): $ids"
merge=${ids##* }
# Wait until the merge job has left the queue (a failed job cancels its dependants).
deadline=$((SECONDS + ${TIMEOUT_S:-7200}))
while squeue -h -j "$merge" 2>/dev/null | grep -q .; do
    [ $SECONDS -lt $deadline ] || { squeue; echo "FAIL: timed out" >&2; exit 1; }
    sleep 5
done
for f in "$run"/slurm-*.out; do echo "== $f"; tail -n 40 "$f"; done

fail() { echo "FAIL: $*" >&2; exit 1; }
[ -f "$run/merged.json" ] || fail "no merged.json: the merge job did not run or failed"
trains=$(ls "$run"/slurm-train-*.out | wc -l)
[ "$trains" -eq 1 ] || fail "training ran $trains times"
shards=$(ls "$run"/shards/*-of-"$n".json | wc -l)
[ "$shards" -eq "$n" ] || fail "$shards of $n shards finished"

# The references: HMC, and one unsharded chain of the same total length from another seed.
"$gomaflow" hmc "$config" --json >"$work/hmc.json"
"$gomaflow" sample "$run" --samples $((n * samples)) --seed 99 --json >"$work/single.json"
python3 - "$run/merged.json" "$work/hmc.json" "$work/single.json" <<'PY'
import json, math, sys
merged, hmc, single = (json.load(open(p)) for p in sys.argv[1:4])
print(f"merged: {merged['shards']} shards, {merged['samples']} proposals, "
      f"acceptance {merged['acceptance']:.3f}, ESS {merged['ess_per_sample']:.3f}")
bad = []
for name, ref in (("hmc", hmc), ("single chain", single)):
    for k in ("abs_m", "phi2", "chi2", "ising_energy"):
        (a, ea), (b, eb) = merged["observables"][k], ref["observables"][k]
        z = abs(a - b) / math.hypot(ea, eb)
        print(f"  {k:<13} merged {a:.5f} ± {ea:.5f}   {name} {b:.5f} ± {eb:.5f}   {z:.2f} sigma")
        if not z < 3:
            bad.append(f"{k} against {name}: {z:.2f} sigma")
for k, c in merged["shard_consistency"].items():
    print(f"  shard means of {k}: chi2 {c['chi2']:.2f} / {c['dof']}, Q {c['q']:.3f}")
if bad:
    sys.exit("FAIL: " + "; ".join(bad))
print("OK: the merged shards agree with HMC and with one long chain")
PY
