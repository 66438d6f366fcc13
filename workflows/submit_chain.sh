#!/usr/bin/env bash
# Submit the whole pipeline as one SLURM dependency chain and print the job ids:
#
#   train (train_ddp.sbatch) --afterok--> generate (generate_array.sbatch, a job array filling one store)
#                            --afterok--> evaluate (evaluate_dask.sbatch, a Dask cluster in the allocation)
#
#   workflows/submit_chain.sh --dataset "dataset=grf dataset.size=32" --run-dir runs/grf32 \
#       --train "train.max_minutes=600" --members 1024 --tasks 8 --generate "sampler=picard_sde"
#
# A job starts only when the one before it COMPLETED (afterok; an array: every task); if one fails, the jobs
# after it are cancelled by SLURM (--kill-on-invalid-dep=yes) instead of waiting forever. Resources come from
# the #SBATCH headers of the three templates (edit those once); --sbatch / --train-sbatch / ... add sbatch
# options on the command line, which win over the headers. Overrides are whitespace-separated Hydra overrides.
# Prints one line per job ("train 1234", "generate 1235", "evaluate 1236") on stdout; --wait also waits for
# the last job and exits 0 only if every job COMPLETED.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# ---- defaults (edit once, or give the flags) --------------------------------------------------------------------
DATASET="dataset=grf dataset.size=32"   # dataset overrides, given to all three stages
RUN_DIR=""                              # training run directory (default runs/chain-<dataset name>)
MEMBERS=256                             # ensemble size
TASKS=4                                 # generation array tasks (each fills its shard of the store)
STORE=""                                # default RUN_DIR/samples.zarr
EVAL_DIR=""                             # default RUN_DIR/evaluate
TRAIN_ARGS=""                           # extra sciencegen-train overrides, e.g. "train=gpu train.max_minutes=600"
GENERATE_ARGS="sampler=picard_sde"      # extra sciencegen-generate overrides
EVALUATE_ARGS=""                        # extra sciencegen-evaluate overrides
SBATCH_ARGS=""                          # sbatch options for every job, e.g. "--account=myproject"
TRAIN_SBATCH="" GENERATE_SBATCH="" EVALUATE_SBATCH=""   # sbatch options per stage
# -----------------------------------------------------------------------------------------------------------------
AFTER="" SKIP_TRAIN=0 EVALUATE=1 WAIT=0

usage() {
    cat <<EOF
usage: $0 [options]
  --dataset "OVERRIDES"       dataset overrides for all stages (default: "$DATASET")
  --run-dir DIR               training run directory (default: runs/chain-<dataset name>)
  --members N                 ensemble size (default: $MEMBERS)
  --tasks N                   generation array tasks (default: $TASKS)
  --store PATH                the ensemble store (default: RUN_DIR/samples.zarr)
  --eval-dir DIR              evaluation output (default: RUN_DIR/evaluate)
  --train "OVERRIDES"         extra sciencegen-train overrides
  --generate "OVERRIDES"      extra sciencegen-generate overrides (default: "$GENERATE_ARGS")
  --evaluate "OVERRIDES"      extra sciencegen-evaluate overrides
  --sbatch "OPTIONS"          sbatch options for every job
  --train-sbatch "OPTIONS"    sbatch options for the training job (likewise --generate-sbatch, --evaluate-sbatch)
  --after JOBID               the first job waits for JOBID (afterok)
  --skip-train                no training job: generate from the checkpoints already in RUN_DIR
  --no-evaluate               no evaluation job
  --wait                      wait for the last job; exit 0 only if every job COMPLETED
EOF
}

while [[ $# -gt 0 ]]; do
    case $1 in
        --dataset) DATASET=$2; shift 2 ;;
        --run-dir) RUN_DIR=$2; shift 2 ;;
        --members) MEMBERS=$2; shift 2 ;;
        --tasks) TASKS=$2; shift 2 ;;
        --store) STORE=$2; shift 2 ;;
        --eval-dir) EVAL_DIR=$2; shift 2 ;;
        --train) TRAIN_ARGS=$2; shift 2 ;;
        --generate) GENERATE_ARGS=$2; shift 2 ;;
        --evaluate) EVALUATE_ARGS=$2; shift 2 ;;
        --sbatch) SBATCH_ARGS=$2; shift 2 ;;
        --train-sbatch) TRAIN_SBATCH=$2; shift 2 ;;
        --generate-sbatch) GENERATE_SBATCH=$2; shift 2 ;;
        --evaluate-sbatch) EVALUATE_SBATCH=$2; shift 2 ;;
        --after) AFTER=$2; shift 2 ;;
        --skip-train) SKIP_TRAIN=1; shift ;;
        --no-evaluate) EVALUATE=0; shift ;;
        --wait) WAIT=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "submit_chain: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
done
[[ $MEMBERS =~ ^[1-9][0-9]*$ ]] || { echo "submit_chain: --members must be a positive integer" >&2; exit 2; }
[[ $TASKS =~ ^[1-9][0-9]*$ ]] || { echo "submit_chain: --tasks must be a positive integer" >&2; exit 2; }
command -v sbatch >/dev/null || { echo "submit_chain: sbatch not found (not on a SLURM login node?)" >&2; exit 2; }

read -ra DATASET_A <<<"$DATASET"
read -ra TRAIN_A <<<"$TRAIN_ARGS"
read -ra GENERATE_A <<<"$GENERATE_ARGS"
read -ra EVALUATE_A <<<"$EVALUATE_ARGS"
read -ra COMMON_S <<<"$SBATCH_ARGS"
read -ra TRAIN_S <<<"$TRAIN_SBATCH"
read -ra GENERATE_S <<<"$GENERATE_SBATCH"
read -ra EVALUATE_S <<<"$EVALUATE_SBATCH"

name=grf
for o in "${DATASET_A[@]}"; do [[ $o == dataset=* ]] && name=${o#dataset=}; done
RUN_DIR=$(realpath -m "${RUN_DIR:-runs/chain-$name}")   # absolute: the jobs may start elsewhere
STORE=$(realpath -m "${STORE:-$RUN_DIR/samples.zarr}")
EVAL_DIR=$(realpath -m "${EVAL_DIR:-$RUN_DIR/evaluate}")
mkdir -p "$RUN_DIR"

submit() {   # sbatch --parsable ...; prints the job id (the cluster name after ';' dropped)
    local out
    out=$(sbatch --parsable "$@") || { echo "submit_chain: sbatch failed: sbatch $*" >&2; exit 1; }
    echo "${out%%;*}"
}
dep=()
[[ -n $AFTER ]] && dep=(--dependency="afterok:$AFTER" --kill-on-invalid-dep=yes)
ids=()

if [[ $SKIP_TRAIN == 0 ]]; then
    train=$(submit "${dep[@]}" --export="ALL,RUN_DIR=$RUN_DIR" --output="$RUN_DIR/train-%j.out" \
        "${COMMON_S[@]}" "${TRAIN_S[@]}" "$HERE/train_ddp.sbatch" "${DATASET_A[@]}" "${TRAIN_A[@]}")
    echo "train $train"
    ids+=("$train")
    dep=(--dependency="afterok:$train" --kill-on-invalid-dep=yes)
fi

generate=$(submit "${dep[@]}" --array="0-$((TASKS - 1))" --export="ALL,STORE=$STORE" \
    --output="$RUN_DIR/generate-%A_%a.out" "${COMMON_S[@]}" "${GENERATE_S[@]}" "$HERE/generate_array.sbatch" \
    "${DATASET_A[@]}" model=unet model.checkpoint="$RUN_DIR" generate.members="$MEMBERS" "${GENERATE_A[@]}")
echo "generate $generate"
ids+=("$generate")

if [[ $EVALUATE == 1 ]]; then
    evaluate=$(submit --dependency="afterok:$generate" --kill-on-invalid-dep=yes \
        --export="ALL,SAMPLES=$STORE,EVAL_DIR=$EVAL_DIR" --output="$RUN_DIR/evaluate-%j.out" \
        "${COMMON_S[@]}" "${EVALUATE_S[@]}" "$HERE/evaluate_dask.sbatch" "${DATASET_A[@]}" "${EVALUATE_A[@]}")
    echo "evaluate $evaluate"
    ids+=("$evaluate")
fi
echo "submit_chain: run dir $RUN_DIR, store $STORE$([[ $EVALUATE == 1 ]] && echo ", evaluation $EVAL_DIR");" \
     "follow with: squeue -j $(IFS=,; echo "${ids[*]}")" >&2

[[ $WAIT == 1 ]] || exit 0

# --wait: until no job of the chain is queued or running, then until sacct has a final state for every job
# (its rows arrive a little after the jobs end)
list=$(IFS=,; echo "${ids[*]}")
# a job pending for a reason that waiting does not cure (it asks for more than the partition or its nodes
# have, or for an account/QOS it may not use) ends the wait at once, naming it; the jobs stay queued
never='^(PartitionConfig|PartitionNodeLimit|PartitionTimeLimit|BadConstraints|InvalidAccount|InvalidQOS)$'
while [[ -n $(squeue -h -j "$list" -o %A 2>/dev/null) ]]; do
    stuck=$(squeue -h -j "$list" -t PD -o '%i %r' 2>/dev/null | awk -v re="$never" '$2 ~ re' || true)
    if [[ -n $stuck ]]; then
        while read -r job reason; do
            echo "submit_chain: job $job can never start: $reason ($(scontrol show job -o "${job%%_*}" 2>/dev/null |
                grep -o 'TRES=[^ ]*' | head -n 1); nodes: $(sinfo -h -o '%P %D nodes %c CPUs %m MB' | paste -sd ';'))" >&2
        done <<<"$stuck"
        echo "submit_chain: fix the sbatch options and resubmit; cancel the chain with: scancel $list" >&2
        exit 1
    fi
    sleep 5
done
expected=$(( ${#ids[@]} - 1 + TASKS ))   # one row per job, one per array task
final='^(COMPLETED|FAILED|CANCELLED.*|TIMEOUT|OUT_OF_MEMORY|NODE_FAIL|PREEMPTED|BOOT_FAIL|DEADLINE)$'
for _ in $(seq 60); do
    states=$(sacct -n -P -X -j "$list" -o JobID,State 2>/dev/null || true)
    pending=0
    while IFS='|' read -r _ state; do
        [[ -z $state || $state =~ $final ]] || pending=1
    done <<<"$states"
    # done when every row is final and either all rows are there or one already failed (a cancelled array
    # that never started is a single row)
    if [[ $pending == 0 && -n $states ]]; then
        [[ $(grep -c . <<<"$states") -ge $expected ]] && break
        awk -F'|' '$2 != "COMPLETED" {bad = 1} END {exit !bad}' <<<"$states" && break
    fi
    sleep 2
done
while IFS= read -r row; do echo "  $row"; done <<<"$states" >&2
bad=$(awk -F'|' '$2 != "COMPLETED"' <<<"$states")
[[ -z $bad ]] || { echo "submit_chain: not every job COMPLETED" >&2; exit 1; }
echo "submit_chain: every job COMPLETED" >&2
