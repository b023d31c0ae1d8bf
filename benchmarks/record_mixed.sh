#!/usr/bin/env bash
# Record a mixed KVM host capture, as a KVM engineer enables it, with both backends:
#   perf:    perf record -a -e 'kvm:*' -e sched:sched_switch -e sched:sched_wakeup
#            -e irq_vectors:local_timer_entry [EXTRA]  -> OUT/mixed.perf.data
#   tracefs: the same events in a private tracefs instance, written by trace-cmd extract
#            -> OUT/mixed.trace.dat
# each around the bundled guest in real mode (collectors/microguest.py) and, where a guest with
# long mode is at hand (../shared/tools/microguest.py on project machines), in long mode with
# an in-kernel APIC.
# Usage: benchmarks/record_mixed.sh OUT_DIR ITERATIONS [EXTRA_EVENTS...]
#   ITERATIONS per mode: 30000 gives about 5.5 M events (545 MB perf.data); 15 gives a fixture.
# Needs root, /dev/kvm, perf and trace-cmd (extract only; `trace-cmd record` is not used).
# PERF_RECORD_OPTS adds perf record options (the fixtures use --synth=task: no maps of the
# processes that ran before the capture).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
real_guest="$here/../collectors/microguest.py"
long_guest="$here/../../shared/tools/microguest.py"
if [ "${1:-}" = "--workload" ]; then  # the recorded command itself
  n=$2
  python3 "$real_guest" --iterations "$n" --timeout 600 -q
  if [ -f "$long_guest" ] && python3 "$long_guest" --help 2>/dev/null | grep -q -- "--mode"; then
    python3 "$long_guest" --mode long --lapic --ops cpuid,msr,rdpmc,pio,touch --iterations "$n" --timeout 600 -q
  fi
  exit 0
fi
out=$1; n=$2; shift 2
mkdir -p "$out"
events=("kvm:*" "sched:sched_switch" "sched:sched_wakeup" "irq_vectors:local_timer_entry" "$@")

# perf backend
perf_args=()
for e in "${events[@]}"; do perf_args+=(-e "$e"); done
perf record -q -a -m 64M ${PERF_RECORD_OPTS:-} "${perf_args[@]}" -o "$out/mixed.perf.data" -- "$0" --workload "$n" \
  2>"$out/perf-record.log" || { cat "$out/perf-record.log" >&2; exit 1; }

# tracefs backend: a private instance, never the top-level buffer
inst=/sys/kernel/tracing/instances/vpmutrace-bench.$$
mkdir "$inst"
trap '[ -d "$inst" ] && { echo 0 > "$inst/tracing_on"; rmdir "$inst"; }' EXIT
echo $(( (8 + n / 80) * 1024 )) > "$inst/buffer_size_kb"  # per CPU: the buffer holds the whole run
for e in "${events[@]}"; do echo "$e" >> "$inst/set_event"; done
echo 1 > "$inst/tracing_on"
"$0" --workload "$n"
echo 0 > "$inst/tracing_on"
grep -h overrun "$inst"/per_cpu/cpu*/stats | grep -v ": 0$" >&2 || true
grep -av '^#' "$inst/trace" > "$out/mixed.ftrace.txt"  # the kernel's own text of the same buffer
trace-cmd extract -B "$(basename "$inst")" -o "$out/mixed.trace.dat" \
  >/dev/null 2>&1  # (removes the instance)
ls -la "$out"/mixed.*
