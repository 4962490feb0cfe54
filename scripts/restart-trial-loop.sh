#!/usr/bin/env bash
# Runs one end-to-end trial (by default the API server restart) N times in a row, one after the
# other against one shared control plane, while every core is kept busy; prints each run's verdict
# and figures, and a summary: how many passed, and the distributions of our delay (PV after the
# hand-over), of the watches' recovery and of the binder's.
#
#   bash scripts/restart-trial-loop.sh [RUNS] [TRIAL]   # defaults: 30, claims_converge_across_an_apiserver_restart
#
# LOAD=0 runs without the CPU burners. Needs the control plane (KUBEBUILDER_ASSETS; built by
# scripts/build-control-plane.sh when unset). Every log is kept in $OUT (printed first).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-30}
trial=${2:-claims_converge_across_an_apiserver_restart}
if [ -z "${KUBEBUILDER_ASSETS:-}" ]; then
  KUBEBUILDER_ASSETS="$(bash scripts/build-control-plane.sh)"
  export KUBEBUILDER_ASSETS
fi
export E2E_REQUIRE=1 E2E_KEEP=1
OUT=${OUT:-$(mktemp -d /tmp/trial-loop-XXXXXX)}
mkdir -p "$OUT"
echo "trial loop: $runs runs of $trial; logs in $OUT" >&2
cargo test --locked --test e2e --no-run 2>"$OUT/build.log" || { cat "$OUT/build.log" >&2; exit 1; }

burners=()
if [ "${LOAD:-1}" != 0 ]; then
  for _ in $(seq "$(nproc)"); do
    python3 -c 'while True: pass' &
    burners+=($!)
  done
fi
trap '[ ${#burners[@]} -eq 0 ] || kill "${burners[@]}" 2>/dev/null || true' EXIT

uptime | sed 's/^/load before: /'
status=0
E2E_REPEAT=$runs cargo test --locked --test e2e -- "$trial::run_" --test-threads 1 >"$OUT/loop.log" 2>&1 || status=$?
uptime | sed 's/^/load after: /'
grep -E "^test $trial::run_|^(restart|outage|rbac|stale-watch) trial:|^test result" "$OUT/loop.log" || true

python3 - "$OUT/loop.log" <<'PY'
import re, statistics, sys
text = open(sys.argv[1]).read()
def secs(v):
    m = re.match(r"([\d.]+)(ns|µs|ms|s)", v)
    return float(m.group(1)) * {"ns": 1e-9, "µs": 1e-6, "ms": 1e-3, "s": 1}[m.group(2)]
d = r"([\d.]+(?:ns|µs|ms|s))"
for label, pattern in [
    ("API server back for us after it went away", rf"answered {d} after it went away"),
    ("every watch current after the API server answered", rf"every watch current {d}"),
    ("our PV after the hand-over, worst claim of each run", rf"max {d} \("),
    ("our PV after the hand-over, median claim of each run", rf"median {d},"),
    ("the binder's last hand-over after the API server answered", rf"last claim {d}"),
]:
    v = sorted(secs(x) for x in re.findall(pattern, text))
    if v:
        print(f"{label} (s): n={len(v)} min {v[0]:.2f} median {statistics.median(v):.2f} "
              f"p90 {v[int(0.9 * (len(v) - 1))]:.2f} max {v[-1]:.2f}")
PY
exit "$status"
