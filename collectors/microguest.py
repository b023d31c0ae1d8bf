#!/usr/bin/env python3
"""A small KVM guest that runs a PMU workload, using only the Python standard library.

The guest is 16-bit real-mode code generated from an op list and run through the
KVM ioctl API (/dev/kvm). Each iteration performs the workload's ops in order:

  cpuid LEAF        CPUID (e.g. leaf 0xA, the architectural PMU leaf)
  wrmsr MSR VALUE   WRMSR; a #GP is caught by the guest's handler and counted
  rdmsr MSR         RDMSR, same
  rdpmc INDEX       RDPMC, same
  out PORT VALUE    OUT to an I/O port (exits to this process)
  hlt               HLT (exits to this process; with --irq the host injects an interrupt)

The run ends when all iterations are done (the guest writes port 0xF4), on an
unexpected guest exception (reported with its vector, via port 0xEF) or at the
wall-clock cap. The result (what the guest did, exits seen, faults, interrupts
taken) is printed as JSON with --json, so a recorder can check a trace against it.

Run: python3 collectors/microguest.py --workload intel --iterations 1000 --json
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import json
import mmap
import os
import signal
import struct
import sys
import time
from dataclasses import asdict, dataclass, field

# ioctl numbers and structures from include/uapi/linux/kvm.h (x86-64)
KVM_CREATE_VM = 0xAE01
KVM_GET_VCPU_MMAP_SIZE = 0xAE04
KVM_CREATE_VCPU = 0xAE41
KVM_SET_USER_MEMORY_REGION = 0x4020AE46
KVM_SET_TSS_ADDR = 0xAE47
KVM_RUN = 0xAE80
KVM_GET_REGS = 0x8090AE81
KVM_SET_REGS = 0x4090AE82
KVM_GET_SREGS = 0x8138AE83
KVM_SET_SREGS = 0x4138AE84
KVM_INTERRUPT = 0x4004AE86
KVM_GET_SUPPORTED_CPUID = 0xC008AE05
KVM_SET_CPUID2 = 0x4008AE90
EXIT_NAMES = {2: "IO", 5: "HLT", 6: "MMIO", 7: "IRQ_WINDOW_OPEN", 8: "SHUTDOWN", 9: "FAIL_ENTRY",
              10: "INTR", 17: "INTERNAL_ERROR"}
KVM_EXIT_IO, KVM_EXIT_HLT = 2, 5

MEM_SIZE = 1 << 20
CODE, STACK = 0x1000, 0x9000
GP_HANDLER, IRQ_HANDLER, STUBS = 0x0500, 0x0580, 0x0700
GP_COUNT, IRQ_COUNT = 0x0600, 0x0604
PORT_DONE, PORT_BADEXC = 0xF4, 0xEF
IRQ_VECTOR = 0x20

# Architectural PMU MSRs (Intel SDM vol. 4; AMD APM vol. 2), as listed in the project's vPMU design §1.1
INTEL_MSRS = {"PERFEVTSEL0": 0x186, "PMC0": 0xC1, "FIXED_CTR_CTRL": 0x38D, "GLOBAL_STATUS": 0x38E,
              "GLOBAL_CTRL": 0x38F, "GLOBAL_OVF_CTRL": 0x390}
AMD_MSRS = {"PERF_CTL0": 0xC0010200, "PERF_CTR0": 0xC0010201, "K7_EVNTSEL0": 0xC0010000,
            "K7_PERFCTR0": 0xC0010004, "GLOBAL_STATUS": 0xC0000300, "GLOBAL_CTL": 0xC0000301}

WORKLOADS: dict[str, list[tuple]] = {
    # program counter 0 for "instructions retired in the guest", read it back, enable globally, read status
    "intel": [("cpuid", 0xA), ("wrmsr", 0x186, 0x4300C0), ("rdmsr", 0x186), ("wrmsr", 0xC1, 0), ("rdmsr", 0xC1),
              ("wrmsr", 0x38F, 0x1), ("rdmsr", 0x38F), ("rdmsr", 0x38E), ("wrmsr", 0x38D, 0), ("rdpmc", 0),
              ("out", 0x80, 0x5A), ("hlt",)],
    "amd": [("cpuid", 0x80000022), ("wrmsr", 0xC0010200, 0x4300C0), ("rdmsr", 0xC0010200),
            ("wrmsr", 0xC0010201, 0), ("rdmsr", 0xC0010201), ("wrmsr", 0xC0000301, 0x1), ("rdmsr", 0xC0000301),
            ("rdmsr", 0xC0000300), ("rdpmc", 0), ("out", 0x80, 0x5A), ("hlt",)],
    "io": [("out", 0x80, 0x11), ("hlt",)],
}


def parse_ops(text: str) -> list[tuple]:
    """'cpuid 0xa; wrmsr 0x186 0x4300c0; rdpmc 0; out 0x80 1; hlt' -> op tuples."""
    ops: list[tuple] = []
    arity = {"cpuid": 1, "wrmsr": 2, "rdmsr": 1, "rdpmc": 1, "out": 2, "hlt": 0}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        words = part.split()
        name = words[0].lower()
        if name not in arity or len(words) - 1 != arity[name]:
            raise ValueError(f"bad op {part!r}: expected one of " + ", ".join(
                f"{k} {' '.join(['ARG'] * v)}".strip() for k, v in arity.items()))
        ops.append((name, *(int(w, 0) for w in words[1:])))
    return ops


def assemble(ops: list[tuple], iterations: int, irq: bool) -> bytes:
    """Real-mode machine code: the op list in a loop counted in ESI, then OUT to PORT_DONE."""
    def d32(v: int) -> bytes:
        return struct.pack("<I", v & 0xFFFFFFFF)

    body = b""
    for op in ops:
        kind = op[0]
        if kind == "cpuid":
            body += b"\x66\xb8" + d32(op[1]) + b"\x66\x31\xc9" + b"\x0f\xa2"  # mov eax; xor ecx,ecx; cpuid
        elif kind == "wrmsr":
            body += (b"\x66\xb9" + d32(op[1]) + b"\x66\xb8" + d32(op[2]) + b"\x66\xba" + d32(op[2] >> 32)
                     + b"\x0f\x30")  # mov ecx; mov eax; mov edx; wrmsr
        elif kind == "rdmsr":
            body += b"\x66\xb9" + d32(op[1]) + b"\x0f\x32"
        elif kind == "rdpmc":
            body += b"\x66\xb9" + d32(op[1]) + b"\x0f\x33"
        elif kind == "out":
            body += b"\xba" + struct.pack("<H", op[1]) + b"\xb0" + bytes([op[2] & 0xFF]) + b"\xee"
        elif kind == "hlt":
            body += b"\xfb\xf4\xfa" if irq else b"\xf4"  # sti; hlt; cli  (or a plain hlt)
    code = b"\xfa" + b"\x66\xbe" + d32(iterations)  # cli; mov esi, N
    loop_start = len(code)
    code += body + b"\x66\x4e"  # dec esi
    rel = loop_start - (len(code) + 4)
    code += b"\x0f\x85" + struct.pack("<h", rel)  # jnz loop
    code += b"\xba" + struct.pack("<H", PORT_DONE) + b"\xee" + b"\xf4\xeb\xfe"  # out 0xf4; hlt; jmp $
    if len(code) > STACK - CODE - 0x100:
        raise ValueError("workload too long")
    return code


def handlers() -> dict[int, bytes]:
    gp = (b"\x66\xff\x06" + struct.pack("<H", GP_COUNT)  # inc dword [GP_COUNT]
          + b"\x55\x89\xe5\x83\x46\x02\x02\x5d\xcf")  # push bp; mov bp,sp; add word [bp+2],2; pop bp; iret
    irq = b"\x66\xff\x06" + struct.pack("<H", IRQ_COUNT) + b"\xcf"
    out = {GP_HANDLER: gp, IRQ_HANDLER: irq}
    for v in range(32):  # any other exception: report its vector on PORT_BADEXC and stop
        out[STUBS + 8 * v] = b"\xb0" + bytes([v]) + b"\xba" + struct.pack("<H", PORT_BADEXC) + b"\xee\xf4\x90"
    return out


@dataclass
class GuestResult:
    workload: list[list]
    iterations_requested: int
    iterations_done: int = 0
    outcome: str = "running"  # done, timeout, exception, error
    detail: str = ""
    gp_faults: int = 0
    interrupts_taken: int = 0
    interrupts_injected: int = 0
    exits: dict[str, int] = field(default_factory=dict)
    io_writes: dict[str, int] = field(default_factory=dict)  # "port=value" -> count
    pid: int = 0
    tid: int = 0
    seconds: float = 0.0


class _Timeout(Exception):
    pass


def _on_alarm(signum, frame) -> None:  # noqa: ANN001 - signal handler signature
    raise _Timeout()


_LIBC = ctypes.CDLL(None, use_errno=True)


def _ioctl(fd: int, req: int, arg=0):  # noqa: ANN001, ANN202 - thin wrapper
    """fcntl.ioctl, except integer arguments beyond a C int (passed as unsigned long through libc)."""
    if isinstance(arg, int) and arg > 0x7FFFFFFF:
        r = _LIBC.ioctl(fd, ctypes.c_ulong(req), ctypes.c_ulong(arg))
        if r < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return r
    return fcntl.ioctl(fd, req, arg)


def run(ops: list[tuple], iterations: int, irq: bool = False, timeout: float = 20.0) -> GuestResult:
    res = GuestResult([list(o) for o in ops], iterations, pid=os.getpid(), tid=threading_tid())
    start = time.monotonic()
    kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    vm = vcpu = -1
    try:
        vm = _ioctl(kvm, KVM_CREATE_VM, 0)
        mem = mmap.mmap(-1, MEM_SIZE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, mmap.PROT_READ | mmap.PROT_WRITE)
        addr = ctypes.addressof(ctypes.c_char.from_buffer(mem))
        _ioctl(vm, KVM_SET_USER_MEMORY_REGION, struct.pack("<IIQQQ", 0, 0, 0, MEM_SIZE, addr))
        try:
            _ioctl(vm, KVM_SET_TSS_ADDR, 0xFFFBD000)
        except OSError:
            pass  # not needed where real mode runs natively
        for vec in range(32):
            struct.pack_into("<HH", mem, 4 * vec, STUBS + 8 * vec, 0)
        struct.pack_into("<HH", mem, 4 * 13, GP_HANDLER, 0)
        struct.pack_into("<HH", mem, 4 * IRQ_VECTOR, IRQ_HANDLER, 0)
        for at, code in handlers().items():
            mem[at:at + len(code)] = code
        code = assemble(ops, iterations, irq)
        mem[CODE:CODE + len(code)] = code
        vcpu = _ioctl(vm, KVM_CREATE_VCPU, 0)
        _set_cpuid(kvm, vcpu)
        sregs = bytearray(_ioctl(vcpu, KVM_GET_SREGS, bytes(312)))
        for seg in range(6):  # cs ds es fs gs ss: base 0, selector 0
            struct.pack_into("<Q", sregs, 24 * seg, 0)
            struct.pack_into("<H", sregs, 24 * seg + 12, 0)
        _ioctl(vcpu, KVM_SET_SREGS, bytes(sregs))
        regs = bytearray(144)
        struct.pack_into("<Q", regs, 6 * 8, STACK)  # rsp
        struct.pack_into("<QQ", regs, 16 * 8, CODE, 0x2)  # rip, rflags
        _ioctl(vcpu, KVM_SET_REGS, bytes(regs))
        size = _ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0)
        run_mm = mmap.mmap(vcpu, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        _loop(vcpu, run_mm, mem, res, irq, timeout)
        res.gp_faults = struct.unpack_from("<I", mem, GP_COUNT)[0]
        res.interrupts_taken = struct.unpack_from("<I", mem, IRQ_COUNT)[0]
        esi = struct.unpack_from("<Q", _ioctl(vcpu, KVM_GET_REGS, bytes(144)), 4 * 8)[0] & 0xFFFFFFFF
        res.iterations_done = iterations - esi if res.outcome != "done" else iterations
    except OSError as e:
        res.outcome, res.detail = "error", f"{e.strerror or e} (KVM ioctl)"
    finally:
        for fd in (vcpu, vm, kvm):
            if fd >= 0:
                os.close(fd)
        res.seconds = time.monotonic() - start
    return res


def threading_tid() -> int:
    return _LIBC.syscall(186)  # gettid (x86-64): the thread that runs the vCPU


def _set_cpuid(kvm: int, vcpu: int) -> None:
    """Give the guest what KVM supports (so CPUID 0xA shows the vPMU KVM offers)."""
    nent = 256
    buf = bytearray(struct.pack("<II", nent, 0) + bytes(40 * nent))
    try:
        _ioctl(kvm, KVM_GET_SUPPORTED_CPUID, buf)
    except OSError:
        return
    _ioctl(vcpu, KVM_SET_CPUID2, bytearray(buf[:8 + 40 * struct.unpack_from("<I", buf)[0]]))  # > 1 KiB: a buffer


def _loop(vcpu: int, run_mm: mmap.mmap, mem: mmap.mmap, res: GuestResult, irq: bool, timeout: float) -> None:
    old = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        while True:
            try:
                _ioctl(vcpu, KVM_RUN, 0)
            except _Timeout:
                res.outcome, res.detail = "timeout", f"wall-clock cap of {timeout:g} s reached"
                return
            reason = struct.unpack_from("<I", run_mm, 8)[0]
            name = EXIT_NAMES.get(reason, str(reason))
            res.exits[name] = res.exits.get(name, 0) + 1
            if reason == KVM_EXIT_IO:
                direction, size, port, count, off = struct.unpack_from("<BBHIQ", run_mm, 32)
                value = run_mm[off] if size >= 1 else 0
                if direction == 1 and port == PORT_DONE:
                    res.outcome = "done"
                    return
                if direction == 1 and port == PORT_BADEXC:
                    res.outcome, res.detail = "exception", f"unexpected guest exception, vector {value}"
                    return
                if direction == 1:
                    key = f"{port:#x}={value:#x}"
                    res.io_writes[key] = res.io_writes.get(key, 0) + 1
            elif reason == KVM_EXIT_HLT:
                if irq:
                    _ioctl(vcpu, KVM_INTERRUPT, struct.pack("<I", IRQ_VECTOR))
                    res.interrupts_injected += 1
            else:
                res.outcome, res.detail = "error", f"unexpected exit {name}"
                return
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workload", choices=sorted(WORKLOADS), default="intel",
                    help="built-in op list (intel or amd PMU MSR sets, or io only)")
    ap.add_argument("--ops", help="own op list, e.g. 'cpuid 0xa; wrmsr 0x186 0x4300c0; rdpmc 0; out 0x80 1; hlt'")
    ap.add_argument("--iterations", "-n", type=int, default=1000)
    ap.add_argument("--irq", action="store_true", help="inject vector 0x20 at every HLT exit")
    ap.add_argument("--timeout", type=float, default=20.0, help="wall-clock cap in seconds")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    ap.add_argument("--json-out", help="also write the JSON result to this file")
    ap.add_argument("-q", "--quiet", action="store_true")
    a = ap.parse_args(argv)
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        print("microguest: /dev/kvm is missing or not accessible (load kvm, or run as a member of group kvm)",
              file=sys.stderr)
        return 2
    try:
        ops = parse_ops(a.ops) if a.ops else WORKLOADS[a.workload]
    except ValueError as e:
        print(f"microguest: {e}", file=sys.stderr)
        return 2
    res = run(ops, a.iterations, a.irq, a.timeout)
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(asdict(res), f)
    if a.json:
        print(json.dumps(asdict(res)))
    elif not a.quiet:
        print(f"{res.outcome}: {res.iterations_done}/{res.iterations_requested} iterations, {res.gp_faults} #GP, "
              f"{res.interrupts_taken} interrupts, exits {res.exits}, {res.seconds:.2f} s {res.detail}")
    return 0 if res.outcome == "done" else 1


if __name__ == "__main__":
    sys.exit(main())
