#!/usr/bin/env bash
# Runs a command with a training run stopped (SIGSTOP), then continues it (SIGCONT), and appends the pause's
# length to RUN/pauses.tsv, so that the run's budget can be stated net of the time it spent stopped while the
# cores measured or built something else (subtract the sum as a `sigstop-pauses` row of RUN/budget.tsv when the
# training invocation ends).
#
#   RUN=out/extend benches/headline/paused.sh CMD ARGS...
#
# The training processes are found by their command line: `sparsec... train ... --output-dir RUN/train`.
set -uo pipefail
RUN=${RUN:?set RUN to the run folder}
pat="sparsec[^ ]* train .*--output-dir $(realpath -m "$RUN")/train"
pids=$(pgrep -f "$pat" || true)
t0=$(date +%s)
if [ -z "$pids" ]; then
  echo "paused.sh: no training process matches '$pat'; running the command without stopping anything" >&2
else
  # Whatever happens to this script, the run is continued.
  trap 'kill -CONT $pids 2>/dev/null' EXIT INT TERM
  kill -STOP $pids
fi
"$@"
rc=$?
if [ -n "$pids" ]; then
  kill -CONT $pids
  echo -e "$(date -u +%FT%TZ)\t$(( $(date +%s) - t0 ))\t$*" >> "$RUN/pauses.tsv"
fi
exit $rc
