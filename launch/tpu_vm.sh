#!/usr/bin/env bash
# Trains a gptjax config on a Cloud TPU VM slice, one process per host, with gcloud:
# create the slice (directly or through a queued resource), copy and install the code on every
# worker, run the config on every worker at once, copy the metrics back from worker 0, delete.
#
#   launch/tpu_vm.sh --name=gptjax-v4 --zone=us-central2-b --accelerator-type=v4-32 \
#       --config=experiments/configs/gpt2.py:124m --workdir=gs://my-bucket/runs/gpt2-124m \
#       --queued --spot --delete -- --config.mesh.fsdp=16
#
# `--dry-run` prints every command instead of running it; `--help` lists the options.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ALL_STEPS="create,setup,run,fetch"

usage() {
  cat <<'EOF'
Usage: launch/tpu_vm.sh --name=NAME --zone=ZONE --config=CONFIG --workdir=DIR [options] [-- OVERRIDES]

Required:
  --name=NAME              TPU VM (and queued resource) name
  --zone=ZONE              e.g. us-central2-b (v4), us-west4-a (v5e)
  --config=PATH[:ARG]      config file, relative to the repository root,
                           e.g. experiments/configs/gpt2.py:124m
  --workdir=DIR            where checkpoints, metrics and the token cache go. Every worker must
                           see the same directory: a shared mount (NFS/Filestore, gcsfuse) path,
                           or gs://BUCKET/PATH, which this script mounts with gcsfuse at
                           ~/gcs/BUCKET on every worker (installing gcsfuse if missing). A worker's
                           local disk only works on a single-host slice (v4-8, v5litepod-8, ...).
Slice:
  --accelerator-type=TYPE  e.g. v4-8 (1 host), v4-32 (16 chips, 4 hosts), v5litepod-16, v6e-8;
                           needed by the create step
  --version=RUNTIME        TPU software version (default tpu-ubuntu2204-base, for v4 and older;
                           v5e: v2-alpha-tpuv5-lite, v5p: v2-alpha-tpuv5, v6e: v2-alpha-tpuv6e)
  --project=PROJECT        Google Cloud project (default: gcloud's configured project)
  --queued                 request the slice as a queued resource and wait until it is ACTIVE
  --spot                   spot (preemptible) capacity: cheaper, may be reclaimed; rerun with
                           --steps=setup,run,fetch on a new slice to resume from the checkpoint
Code:
  --repo=URL|PATH          git URL to clone on every worker, or a local checkout to copy there
                           (default: the checkout holding this script, without .git and runs/)
  --ref=BRANCH|TAG         branch or tag to clone (git URL only)
Run:
  --extra="OVERRIDES"      --config.x.y=value overrides, inserted verbatim into the command;
                           arguments after -- are forwarded the same way, each one quoted
  --detach                 start the run in the background on every worker (log in
                           ~/gptjax-NAME.log) and return; fetch later with --steps=fetch
  --steps=LIST             comma-separated subset of create,setup,run,fetch (default: all);
                           e.g. --steps=run,fetch to rerun (resume) on an existing slice
  --fetch-to=DIR           local directory for config.json, metrics.jsonl and tensorboard/
                           (default runs/NAME)
  --delete                 delete the slice (and queued resource) at the end, even if the run
                           failed
  --dry-run                print every command instead of running it
  -h, --help               this text

The run is `python3 -m gptjax.main --config=CONFIG --workdir=DIR --config.distributed.enabled=True`
on all workers at once (gcloud ... ssh --worker=all); on TPU VMs jax.distributed finds the
coordinator, process count and process index by itself.
EOF
}

die() {
  echo "tpu_vm.sh: $*" >&2
  exit 2
}

quote() {  # one shell word: bare when safe, else single-quoted (also for the remote shell)
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@%+,~-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

name="" zone="" accelerator_type="" version="tpu-ubuntu2204-base" project=""
queued=0 spot=0 config="" workdir="" repo="$REPO" ref="" extra="" detach=0
steps="$ALL_STEPS" fetch_to="" delete=0 dry_run=0
forwarded=()

while [[ $# -gt 0 ]]; do
  arg="$1"
  if [[ "$arg" =~ ^--(name|zone|accelerator-type|version|project|config|workdir|repo|ref|extra|steps|fetch-to)$ ]]; then
    [[ $# -ge 2 ]] || die "$arg needs a value."
    arg="$arg=$2"
    shift
  fi
  case "$arg" in
    -h|--help) usage; exit 0 ;;
    --name=*) name="${arg#*=}" ;;
    --zone=*) zone="${arg#*=}" ;;
    --accelerator-type=*) accelerator_type="${arg#*=}" ;;
    --version=*) version="${arg#*=}" ;;
    --project=*) project="${arg#*=}" ;;
    --queued) queued=1 ;;
    --spot) spot=1 ;;
    --config=*) config="${arg#*=}" ;;
    --workdir=*) workdir="${arg#*=}" ;;
    --repo=*) repo="${arg#*=}" ;;
    --ref=*) ref="${arg#*=}" ;;
    --extra=*) extra="${arg#*=}" ;;
    --detach) detach=1 ;;
    --steps=*) steps="${arg#*=}" ;;
    --fetch-to=*) fetch_to="${arg#*=}" ;;
    --delete) delete=1 ;;
    --dry-run) dry_run=1 ;;
    --) shift; forwarded=("$@"); break ;;
    --config.*) die "$arg: put config overrides after -- or in --extra=\"...\"." ;;
    *) die "unknown argument '$arg'; see --help." ;;
  esac
  shift
done

[[ -n "$name" ]] || die "--name is required."
[[ -n "$zone" ]] || die "--zone is required."
IFS=, read -r -a step_list <<<"$steps"
for step in "${step_list[@]}"; do
  [[ ",$ALL_STEPS," == *",$step,"* ]] || die "--steps: unknown step '$step'; choose from $ALL_STEPS."
done
wants() { [[ ",$steps," == *",$1,"* ]]; }
if wants create; then
  [[ -n "$accelerator_type" ]] || die "--accelerator-type is required to create the slice (e.g. v4-32)."
fi
if wants run || wants fetch; then
  [[ -n "$config" ]] || die "--config is required, e.g. --config=experiments/configs/tiny.py."
  [[ -n "$workdir" ]] || die "--workdir is required: a directory every worker shares, or gs://BUCKET/PATH."
fi
is_git_url() { [[ "$1" =~ ^(https?|git|ssh):// || "$1" =~ ^[A-Za-z0-9._-]+@[^:/]+: ]]; }
if wants setup && ! is_git_url "$repo"; then
  [[ -d "$repo/gptjax" ]] || die "--repo=$repo is neither a git URL nor a gptjax checkout."
fi
[[ -z "$ref" ]] || is_git_url "$repo" || die "--ref only applies to a git URL --repo."
if [[ $detach -eq 1 && $delete -eq 1 ]]; then
  die "--detach with --delete would delete the slice under the run; delete it later with --steps= --delete."
fi

# gs://BUCKET/PATH is mounted with gcsfuse at ~/gcs/BUCKET on every worker.
bucket=""
remote_workdir="$workdir"
if [[ "$workdir" == gs://* ]]; then
  rest="${workdir#gs://}"
  bucket="${rest%%/*}"
  [[ -n "$bucket" ]] || die "--workdir=$workdir names no bucket."
  remote_workdir="~/gcs/$bucket${rest:${#bucket}}"
fi

gflags=("--zone=$zone")
[[ -n "$project" ]] && gflags+=("--project=$project")

run() {  # prints a command; runs it unless --dry-run
  local word line="+"
  for word in "$@"; do
    if [[ "$word" =~ ^--[a-z-]+= ]]; then  # --flag='value', easier to read than '--flag=value'
      line+=" ${word%%=*}=$(quote "${word#*=}")"
    else
      line+=" $(quote "$word")"
    fi
  done
  echo "$line"
  [[ $dry_run -eq 1 ]] || "$@"
}

on_workers() {  # $1: worker index or "all"; $2: command for the remote shell
  run gcloud compute tpus tpu-vm ssh "$name" "${gflags[@]}" "--worker=$1" "--command=$2"
}

create_slice() {
  local capacity=()
  [[ $spot -eq 1 ]] && capacity=(--spot)
  if [[ $queued -eq 0 ]]; then
    run gcloud compute tpus tpu-vm create "$name" "${gflags[@]}" \
      "--accelerator-type=$accelerator_type" "--version=$version" ${capacity[@]+"${capacity[@]}"}
    return
  fi
  run gcloud compute tpus queued-resources create "$name" "${gflags[@]}" "--node-id=$name" \
    "--accelerator-type=$accelerator_type" "--runtime-version=$version" ${capacity[@]+"${capacity[@]}"}
  local describe=(gcloud compute tpus queued-resources describe "$name" "${gflags[@]}"
                  "--format=value(state.state)")
  if [[ $dry_run -eq 1 ]]; then
    run "${describe[@]}"  # polled every 30 s until ACTIVE
    return
  fi
  local state="" previous=""
  while true; do
    state="$("${describe[@]}")"
    [[ "$state" != "$previous" ]] && echo "queued resource $name: $state"
    previous="$state"
    case "$state" in
      ACTIVE) return ;;
      FAILED|SUSPENDING|SUSPENDED)
        die "queued resource $name is $state; see: gcloud compute tpus queued-resources describe $name --zone=$zone" ;;
    esac
    sleep 30
  done
}

setup_workers() {
  if is_git_url "$repo"; then
    local branch=""
    [[ -n "$ref" ]] && branch="--branch $(quote "$ref") "
    on_workers all "rm -rf ~/gptjax && git clone --depth=1 $branch$(quote "$repo") ~/gptjax"
  else
    local tarball="${TMPDIR:-/tmp}/gptjax-src-$name.tgz"
    run tar -czf "$tarball" -C "$repo" --exclude=.git --exclude=runs --exclude=.venv --exclude=venv \
      --exclude=__pycache__ --exclude='*.egg-info' .
    run gcloud compute tpus tpu-vm scp "$tarball" "$name:gptjax-src.tgz" "${gflags[@]}" --worker=all
    on_workers all "rm -rf ~/gptjax && mkdir -p ~/gptjax && tar -xzf ~/gptjax-src.tgz -C ~/gptjax && rm ~/gptjax-src.tgz"
  fi
  # The package with its TPU extra (jax[tpu], which brings libtpu), from setup.cfg.
  on_workers all "cd ~/gptjax && python3 -m pip install --quiet --upgrade pip && python3 -m pip install --quiet -e \".[tpu]\""
  if [[ -n "$bucket" ]]; then
    # Directory renames (orbax commits a checkpoint by renaming its temporary directory) need
    # --rename-dir-limit; no metadata caching, so each host sees what the others just wrote.
    on_workers all "$(cat <<EOF
if ! command -v gcsfuse >/dev/null; then
  echo "deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -c -s) main" | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null
  curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null
  sudo apt-get update -qq && sudo apt-get install -y -qq gcsfuse
fi
mkdir -p ~/gcs/$bucket
mountpoint -q ~/gcs/$bucket || gcsfuse --implicit-dirs --rename-dir-limit=1000000 --metadata-cache-ttl-secs=0 $bucket ~/gcs/$bucket
EOF
)"
  fi
}

run_config() {
  local command="python3 -m gptjax.main --config=$(quote "$config") --workdir=$(quote "$remote_workdir") --config.distributed.enabled=True"
  [[ -n "$extra" ]] && command+=" $extra"
  local word
  for word in ${forwarded[@]+"${forwarded[@]}"}; do
    command+=" $(quote "$word")"
  done
  if [[ $detach -eq 1 ]]; then
    command="setsid nohup bash -c $(quote "$command") >~/gptjax-$name.log 2>&1 </dev/null &"
  fi
  on_workers all "cd ~/gptjax && $command"
}

fetch_results() {
  local dest="${fetch_to:-runs/$name}" source="$remote_workdir"
  case "$source" in  # scp paths are relative to the home directory
    /*) ;;
    "~/"*) source="${source#\~/}" ;;
    *) source="gptjax/$source" ;;  # the run's working directory is ~/gptjax
  esac
  run mkdir -p "$dest"
  run gcloud compute tpus tpu-vm scp "$name:$source/config.json" "$name:$source/metrics.jsonl" "$dest/" \
    "${gflags[@]}" --worker=0
  run gcloud compute tpus tpu-vm scp "$name:$source/tensorboard" "$dest/" "${gflags[@]}" --worker=0 --recurse
}

delete_slice() {
  if [[ $queued -eq 1 ]]; then
    run gcloud compute tpus queued-resources delete "$name" "${gflags[@]}" --force --quiet
  else
    run gcloud compute tpus tpu-vm delete "$name" "${gflags[@]}" --quiet
  fi
}

status=0
if wants create; then create_slice; fi
if wants setup; then setup_workers; fi
if wants run; then run_config || status=$?; fi
if wants fetch && [[ $status -eq 0 && $detach -eq 0 ]]; then fetch_results || status=$?; fi
if [[ $delete -eq 1 ]]; then
  [[ $status -eq 0 ]] || echo "tpu_vm.sh: the run or fetch failed (exit $status); deleting the slice as asked." >&2
  delete_slice
fi
exit "$status"
