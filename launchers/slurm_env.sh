#!/usr/bin/env bash
# One training process per Slurm task, no torchrun/deepspeed launcher in between:
#
#   srun --kill-on-bad-exit=1 bash launchers/slurm_env.sh python launchers/train.py --config mvar_d30 ...
#
# Maps Slurm's task variables to the ones torch.distributed's env:// rendezvous reads, then execs the
# command (so Slurm's signals reach the trainer itself). See docs/multinode.md.
#   RANK        <- SLURM_PROCID   (global rank, 0 .. ntasks-1)
#   LOCAL_RANK  <- SLURM_LOCALID  (rank within the node: which GPU)
#   WORLD_SIZE  <- SLURM_NTASKS
#   MASTER_ADDR <- first host of the step's node list (`scontrol show hostnames`), unless already set
#   MASTER_PORT <- 20000 + SLURM_JOB_ID % 20000, unless already set: the same on every node of the job,
#                  and two jobs sharing a node do not collide
set -euo pipefail

if [[ -z "${SLURM_PROCID:-}" || -z "${SLURM_LOCALID:-}" || -z "${SLURM_NTASKS:-}" ]]; then
    echo "slurm_env.sh: SLURM_PROCID, SLURM_LOCALID and SLURM_NTASKS are not all set: run it under srun" >&2
    exit 2
fi
export RANK="$SLURM_PROCID" LOCAL_RANK="$SLURM_LOCALID" WORLD_SIZE="$SLURM_NTASKS"

if [[ -z "${MASTER_ADDR:-}" ]]; then
    nodelist="${SLURM_STEP_NODELIST:-${SLURM_JOB_NODELIST:-}}"
    if [[ -z "$nodelist" ]]; then
        echo "slurm_env.sh: neither SLURM_STEP_NODELIST nor SLURM_JOB_NODELIST is set; set MASTER_ADDR" >&2
        exit 2
    fi
    # No fallback to localhost: a node that cannot resolve the list must fail, not form a world of its own.
    hosts="$(scontrol show hostnames "$nodelist")"
    MASTER_ADDR="${hosts%%$'\n'*}"
fi
if [[ -z "${MASTER_PORT:-}" ]]; then
    MASTER_PORT=$((20000 + ${SLURM_JOB_ID:?set SLURM_JOB_ID or MASTER_PORT} % 20000))
fi
export MASTER_ADDR MASTER_PORT

exec "$@"
