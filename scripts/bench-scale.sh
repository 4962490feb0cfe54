#!/usr/bin/env bash
# The scale matrix of the provision bench (benches/provision.rs) for one provisioner binary:
# N = 100 and 1000 (3 runs each) and N = 10 000 (1 run), each against a control plane whose
# kube-controller-manager runs at its default client limits (--kube-api-qps=20 --kube-api-burst=30,
# what most clusters run) and at 200/400. Writes the bench's Markdown, with `uptime` before and
# after every step, to one file; progress and every component's log location go to a .log beside it.
#
#   bash scripts/bench-scale.sh PROVISIONER_BINARY [OUTPUT.md]
#
# e.g. before and after a change, each build copied out of target/ first:
#   bash scripts/bench-scale.sh /tmp/provisioner-before /tmp/scale-before.md
#   bash scripts/bench-scale.sh /tmp/provisioner-after /tmp/scale-after.md
#
# The small sizes run first at both settings, then the large one: a failure there (each step is a
# bench invocation of its own, with a fresh control plane) leaves the other steps' results, and a
# failed step's runs that finished are in the file too. Knobs (defaults in brackets):
#   SCALE_KCM ["20/30 200/400"]   kube-controller-manager qps/burst settings
#   SCALE_SMALL ["100,1000"] with SCALE_SMALL_RUNS [3], SCALE_LARGE ["10000"] with SCALE_LARGE_RUNS [1]
#     (set empty: those steps left out)
#   BENCH_IDLE_SECS [30], BENCH_ARCHIVE [1]: passed to the bench; SCALE_LARGE_ARCHIVE [BENCH_ARCHIVE]
#     is BENCH_ARCHIVE for the large steps alone (0 leaves out their second, archiving batch: at
#     kcm 20/30 and N = 10 000 that saves over an hour)
#   KUBEBUILDER_ASSETS: the control plane binaries, else scripts/build-control-plane.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
  exit 2
fi
binary="$(realpath "$1")"
[ -x "$binary" ] || { echo "bench-scale.sh: $binary is not an executable" >&2; exit 2; }
out="${2:-target/bench-scale/$(date +%Y%m%d-%H%M%S)-$(basename "$binary").md}"
mkdir -p "$(dirname "$out")"
out="$(realpath "$out")"
log="${out%.md}.log"

if [ -z "${KUBEBUILDER_ASSETS:-}" ]; then
  KUBEBUILDER_ASSETS="$(bash scripts/build-control-plane.sh)"
  export KUBEBUILDER_ASSETS
fi
export BENCH_PROVISIONER_BIN="$binary"

kcm_settings="${SCALE_KCM:-20/30 200/400}"
# Set but empty, SCALE_SMALL or SCALE_LARGE leaves those steps out.
small="${SCALE_SMALL-100,1000}"
large="${SCALE_LARGE-10000}"
steps=()
archive="${BENCH_ARCHIVE:-1}"
for kcm in $kcm_settings; do
  [ -z "$small" ] || steps+=("$kcm $small ${SCALE_SMALL_RUNS:-3} $archive")
done
for kcm in $kcm_settings; do
  [ -z "$large" ] || steps+=("$kcm $large ${SCALE_LARGE_RUNS:-1} ${SCALE_LARGE_ARCHIVE:-$archive}")
done
[ ${#steps[@]} -gt 0 ] || { echo "bench-scale.sh: no steps to run" >&2; exit 2; }

# The bench itself, built once (release) before anything is timed.
cargo bench --bench provision --no-run >>"$log" 2>&1

{
  echo "# Scale matrix of \`provision\`"
  echo
  echo "- provisioner: \`$binary\` (sha256 $(sha256sum "$binary" | cut -c1-16), $(stat -c %s "$binary") bytes)"
  echo "- bench sources: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- benches tests/e2e/support || echo ' (modified)')"
  echo "- machine: $(nproc) cores; $(uname -r)"
  echo "- started: $(date -Is); \`uptime\`: $(uptime)"
  echo "- steps (kcm qps/burst, N, runs, archive batch): ${steps[*]/%/;}"
} >"$out"

failed=0
for step in "${steps[@]}"; do
  read -r kcm sizes runs archive <<<"$step"
  started=$(date +%s)
  {
    echo
    echo "## kube-controller-manager $kcm, N = $sizes, $runs run(s)$([ "$archive" != 0 ] || echo ', no archive batch')"
    echo
    echo "Before: \`$(uptime)\`"
  } >>"$out"
  echo "bench-scale.sh: $(date -Is) kcm $kcm, N = $sizes, $runs run(s)" | tee -a "$log" >&2
  status=0
  BENCH_KCM_QPS="$kcm" BENCH_N="$sizes" BENCH_RUNS="$runs" BENCH_ARCHIVE="$archive" \
    cargo bench --bench provision >>"$out" 2>>"$log" || status=$?
  elapsed=$(($(date +%s) - started))
  {
    echo
    echo "After: \`$(uptime)\`; this step took ${elapsed} s$([ "$status" = 0 ] || echo "; **FAILED** (exit $status), see $(basename "$log")")"
  } >>"$out"
  echo "bench-scale.sh: step done in ${elapsed} s, exit $status" | tee -a "$log" >&2
  [ "$status" = 0 ] || failed=$((failed + 1))
done

echo >>"$out"
echo "Finished: $(date -Is); $failed step(s) failed." >>"$out"
echo "bench-scale.sh: results in $out, progress and errors in $log" >&2
[ "$failed" = 0 ]
