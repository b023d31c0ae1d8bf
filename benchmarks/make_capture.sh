#!/usr/bin/env bash
# Record the scalar-only benchmark input on a KVM host: >= 5 M kvm tracepoint events around the
# microguest, of events whose fields are all scalars (the favourable case; the mixed capture a KVM
# engineer records is benchmarks/record_mixed.sh). bench_readers.py builds the trace.dat of the
# same payloads.
# Usage: benchmarks/make_capture.sh [ITERATIONS]   (default 400000 -> about 6.8 M events)
# Writes benchmarks/data/scalar.perf.data.
set -euo pipefail
cd "$(dirname "$0")"
N=${1:-400000}
mkdir -p data
GUEST=../collectors/microguest.py
[ -f "$GUEST" ] || GUEST=../../shared/tools/microguest.py
EV="-e kvm:kvm_msr -e kvm:kvm_pio -e kvm:kvm_cpuid -e kvm:kvm_inj_exception -e kvm:kvm_userspace_exit"
perf record -q -a -m 64M $EV -o data/scalar.perf.data -- python3 "$GUEST" --iterations "$N" --timeout 300 -q
ls -la data/scalar.perf.data
