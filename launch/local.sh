#!/usr/bin/env bash
# Runs one gptjax config on this machine, optionally on simulated CPU devices or as several
# simulated hosts, to try a mesh or a multi-host set-up before paying for accelerators.
#
#   launch/local.sh --config=experiments/configs/tiny.py --config.train.num_steps=50
#   launch/local.sh --devices=8 --config.mesh.data=2 --config.mesh.fsdp=4        # 8 CPU devices
#   launch/local.sh --processes=2 --devices=4 --config.mesh.fsdp=8               # 2 "hosts" x 4
#
# Run `launch/local.sh --help` for every option. Arguments this script does not know
# (--config.x.y=value overrides and absl flags) go to `python -m gptjax.main` unchanged.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() {
  cat <<EOF
Usage: launch/local.sh [options] [--config.SECTION.FIELD=VALUE ...]

Options:
  --config=PATH[:ARG]  config file (default: experiments/configs/tiny.py of this repository)
  --workdir=DIR        run directory (default: runs/<config file name>); rerunning the same
                       command resumes from its latest checkpoint
  --devices=N          run on N simulated CPU devices (sets JAX_PLATFORMS=cpu and
                       XLA_FLAGS=--xla_force_host_platform_device_count=N); without it JAX uses
                       whatever accelerator it finds
  --processes=P        start P processes joined by jax.distributed on localhost, each with
                       --devices devices (CPU only, gloo collectives): the multi-host code path
                       on one machine. Process 0 prints to this terminal; the others log to
                       WORKDIR/logs/process_<i>.log
  --python=PY          interpreter (default: \$PYTHON, else python3)
  -h, --help           this text

Everything else is passed to python -m gptjax.main, e.g. --config.train.num_steps=5.
EOF
}

die() {
  echo "local.sh: $*" >&2
  exit 2
}

config="$REPO/experiments/configs/tiny.py"
workdir=""
devices=""
processes=1
python="${PYTHON:-python3}"
overrides=()

while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --config=*) config="${1#*=}" ;;
    --workdir=*) workdir="${1#*=}" ;;
    --devices=*) devices="${1#*=}" ;;
    --processes=*) processes="${1#*=}" ;;
    --python=*) python="${1#*=}" ;;
    --config|--workdir|--devices|--processes|--python)
      [[ $# -ge 2 ]] || die "$1 needs a value, e.g. $1=8"
      case "$1" in
        --config) config="$2" ;;
        --workdir) workdir="$2" ;;
        --devices) devices="$2" ;;
        --processes) processes="$2" ;;
        --python) python="$2" ;;
      esac
      shift ;;
    *) overrides+=("$1") ;;
  esac
  shift
done

[[ -z "$devices" || "$devices" =~ ^[1-9][0-9]*$ ]] || die "--devices=$devices is not a positive integer."
[[ "$processes" =~ ^[1-9][0-9]*$ ]] || die "--processes=$processes is not a positive integer."
if [[ -z "$workdir" ]]; then
  name="$(basename "${config%%:*}" .py)"
  [[ "$config" == *:* ]] && name="$name-${config#*:}"
  workdir="runs/$name"
fi
command -v "$python" >/dev/null || die "no interpreter '$python'; pass --python=PATH or set PYTHON."

# The repository on the path, so this works from any directory without `pip install -e .`.
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
if [[ -n "$devices" || "$processes" -gt 1 ]]; then
  export JAX_PLATFORMS=cpu
  export XLA_FLAGS="--xla_force_host_platform_device_count=${devices:-1}${XLA_FLAGS:+ $XLA_FLAGS}"
fi
run=("$python" -m gptjax.main "--config=$config" "--workdir=$workdir" ${overrides[@]+"${overrides[@]}"})

if [[ "$processes" -eq 1 ]]; then
  echo "+ ${run[*]}" >&2
  exec "${run[@]}"
fi

# Several simulated hosts: what a TPU pod or SLURM job does, on one machine.
port="$("$python" -c 'import socket; s = socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])')"
mkdir -p "$workdir/logs"
pids=()
stop_all() {  # $1: the signal
  for pid in ${pids[@]+"${pids[@]}"}; do
    kill "-$1" "$pid" 2>/dev/null || true
  done
}
stopping=0
trap 'stopping=1; stop_all TERM' INT TERM  # SIGTERM: every process saves a checkpoint and stops
for ((i = 0; i < processes; i++)); do
  dist=(--config.distributed.enabled=True "--config.distributed.coordinator_address=localhost:$port"
        "--config.distributed.num_processes=$processes" "--config.distributed.process_id=$i")
  if [[ $i -eq 0 ]]; then
    echo "+ ${run[*]} ${dist[*]}" >&2
    "${run[@]}" "${dist[@]}" &
  else
    "${run[@]}" "${dist[@]}" >"$workdir/logs/process_$i.log" 2>&1 &
  fi
  pids+=($!)
done
status=0
for ((n = 0; n < processes; n++)); do
  wait -n && continue
  [[ $stopping -eq 1 ]] && break  # interrupted by our trap: the processes are saving
  [[ $status -eq 1 ]] || echo "local.sh: a process failed; see $workdir/logs/ (process 0: above)." >&2
  status=1
  stop_all KILL  # the rest would wait for the failed one in their next collective
done
if [[ $stopping -eq 1 ]]; then
  while [[ -n "$(jobs -rp)" ]]; do
    wait || true  # until every process has saved its checkpoint and exited
  done
  exit 143
fi
exit "$status"
