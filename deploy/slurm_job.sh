#!/bin/bash
# Run a radflow reduction as a SLURM job: this job holds the Dask scheduler and the runner
# (small: 1 core, a few GB); the workers are separate SLURM jobs submitted by dask-jobqueue
# from the profile (deploy/slurm.yaml). Submit with:
#   sbatch deploy/slurm_job.sh alma_sd /data/eb1.ms /data/eb2.ms ...
# Extra radflow options go in RADFLOW_ARGS, e.g. RADFLOW_ARGS="--set baseline.order=2".
#SBATCH --job-name=radflow-run
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=1
#SBATCH --mem=4G
#SBATCH --time=12:00:00
#SBATCH --output=radflow-run-%j.out
set -euo pipefail

RADFLOW=${RADFLOW:-radflow}                  # e.g. /path/to/venv/bin/radflow
PROFILE=${RADFLOW_PROFILE:-deploy/slurm.yaml}
RECIPE=${1:?usage: sbatch slurm_job.sh RECIPE EB [EB ...]}
shift

# The workers must reach this job's scheduler: compute nodes usually see each other on the
# cluster network; set `interface:` in the profile (e.g. ib0) if the default route is wrong.
# shellcheck disable=SC2086
exec "$RADFLOW" run "$RECIPE" "$@" --cluster "$PROFILE" ${RADFLOW_ARGS:-}
