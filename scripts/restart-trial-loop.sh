#!/usr/bin/env bash
# Runs one end-to-end trial (by default the API server restart) N times in a row while every core
# is kept busy, and prints what each run measured and a summary: how many passed, and the
# distribution of our delay (PV after hand-over), of the binder's recovery and of the watches'.
#
#   bash scripts/restart-trial-loop.sh [RUNS] [TRIAL]      # defaults: 30, claims_converge_across_an_apiserver_restart
#
# LOAD=0 runs without the CPU burners. Needs the control plane (KUBEBUILDER_ASSETS, built by
# scripts/build-control-plane.sh when unset). Logs of every run go to $OUT (printed at the start).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-30}
trial=${2:-claims_converge_across_an_apiserver_restart}
if [ -z "${KUBEBUILDER_ASSETS:-}" ]; then
  KUBEBUILDER_ASSETS="$(bash scripts/build-control-plane.sh)"
  export KUBEBUILDER_ASSETS
fi
export E2E_REQUIRE=1
OUT=${OUT:-$(mktemp -d /tmp/trial-loop-XXXXXX)}
echo "trial loop: $runs runs of $trial; logs in $OUT" >&2

cargo test --locked --test e2e --no-run 2>"$OUT/build.log" || { cat "$OUT/build.log" >&2; exit 1; }
binary=$(cargo test --locked --test e2e --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "e2e" and m.get("executable"):
        print(m["executable"])')

burners=()
if [ "${LOAD:-1}" != 0 ]; then
  for _ in $(seq "$(nproc)"); do
    python3 -c 'while True: pass' &
    burners+=($!)
  done
fi
trap '[ ${#burners[@]} -eq 0 ] || kill "${burners[@]}" 2>/dev/null || true' EXIT

passed=0
for i in $(seq "$runs"); do
  log="$OUT/run-$i.log"
  if "$binary" --exact "$trial" >"$log" 2>&1; then
    passed=$((passed + 1))
    verdict=ok
  else
    verdict=FAILED
  fi
  load=$(cut -d' ' -f1-3 /proc/loadavg)
  echo "run $i/$runs: $verdict (load $load)"
  grep -E '^(restart|outage|rbac|stale-watch) trial:' "$log" | sed 's/^/    /' || true
done

echo "$passed passed, $((runs - passed)) failed"
python3 - "$OUT" "$runs" <<'EOF'
import re, statistics, sys
out, runs = sys.argv[1], int(sys.argv[2])
series = {"our PV after hand-over, max per run (s)": [], "watches current after the API answered (s)": [],
          "binder's last hand-over after the API answered (s)": [], "API server back for us after it went away (s)": []}
def secs(text):
    m = re.match(r"([\d.]+)(ns|µs|ms|s)", text)
    return float(m.group(1)) * {"ns": 1e-9, "µs": 1e-6, "ms": 1e-3, "s": 1}[m.group(2)]
for i in range(1, runs + 1):
    try:
        text = open(f"{out}/run-{i}.log").read()
    except OSError:
        continue
    for key, pattern in [("our PV after hand-over, max per run (s)", r"max ([\d.]+(?:ns|µs|ms|s))"),
                         ("watches current after the API answered (s)", r"every watch current ([\d.]+(?:ns|µs|ms|s))"),
                         ("binder's last hand-over after the API answered (s)", r"last claim ([\d.]+(?:ns|µs|ms|s))"),
                         ("API server back for us after it went away (s)", r"answered ([\d.]+(?:ns|µs|ms|s)) after it went away")]:
        m = re.search(pattern, text)
        if m:
            series[key].append(secs(m.group(1)))
for key, values in series.items():
    if values:
        values.sort()
        print(f"{key}: n={len(values)} min {values[0]:.2f} median {statistics.median(values):.2f} "
              f"p90 {values[int(0.9 * (len(values) - 1))]:.2f} max {values[-1]:.2f}")
EOF
[ "$passed" -eq "$runs" ]
