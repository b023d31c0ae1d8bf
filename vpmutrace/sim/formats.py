"""Tracepoint formats of the kernel a simulated host claims to run.

The bundled reference formats are Linux 6.18's. Older kernels differ in the KVM events the
analyses read, by the commits that changed them (design §5.1; KVM pull requests): kvm_exit
gained ``requests`` in 6.14 (0e77b324110c); kvm_entry gained ``intr_info``/``error_code`` in 6.14
(3e633e7e7d07) and ``immediate_exit`` in 6.9 (9c9025ea003a, backported later to some stables:
the simulator follows mainline). The variants are the 6.18 format files with those fields and
their print-fmt parts removed, so a simulated 6.1 host writes what a 6.1 host's tracefs describes.
"""

from __future__ import annotations

from functools import cache

from vpmutrace.formats.event_format import EventFormat, parse_format
from vpmutrace.formats.known import reference_format_texts

_EDITS: tuple[tuple[tuple[int, int], str, tuple[str, ...], tuple[tuple[str, str], ...]], ...] = (
    ((6, 14), "kvm:kvm_exit", ("requests",), ((" requests 0x%016llx", ""), (", REC->requests", ""))),
    ((6, 14), "kvm:kvm_entry", ("intr_info", "error_code"),
     ((" intr_info 0x%08x error_code 0x%08x", ""), (", REC->intr_info, REC->error_code", ""))),
    ((6, 9), "kvm:kvm_entry", ("immediate_exit",),
     (("%s\"", "\""), (", REC->immediate_exit ? \"[immediate exit]\" : \"\"", ""))),
)


@cache
def kernel_format_texts(version: tuple[int, int]) -> dict[str, bytes]:
    texts = dict(reference_format_texts())
    for since, name, fields, prints in _EDITS:
        if version >= since:
            continue
        lines = texts[name].decode().split("\n")
        lines = [ln for ln in lines if not any(f"field:{t} {f};" in ln or ln.strip().endswith(f" {f};")
                                                for f in fields for t in ("u64", "u32", "bool"))]
        text = "\n".join(lines)
        for old, new in prints:
            if old not in text:
                raise AssertionError(f"{name}: {old!r} not in its reference print fmt")
            text = text.replace(old, new)
        texts[name] = text.encode()
    return texts


@cache
def kernel_formats(version: tuple[int, int]) -> dict[str, EventFormat]:
    out = {}
    for name, text in kernel_format_texts(version).items():
        fmt = parse_format(text.decode(), name.split(":")[0])
        out[fmt.full_name] = fmt
    return out


# ---- dynamic probe events (kprobe, kretprobe, fprobe entry/exit) -------------------------------------
# The format file the kernel writes for a probe event: the common fields, then the probe's head
# (kernel/trace/trace_kprobe.c kprobe_event_define_fields / kretprobe_event_define_fields,
# trace_fprobe.c fentry_/fexit_event_define_fields: ``unsigned long __probe_ip`` at entry,
# ``__probe_func`` and ``__probe_ret_ip`` at return), then each fetch argument packed right after it
# with no alignment (trace_probe.c traceprobe_define_arg_fields: offset = head size + parg->offset).
# An ``xN`` argument is declared ``uN`` and printed 0x%x / 0x%Lx; ``uN`` %u / %Lu; ``sN`` %d / %Ld
# (trace_probe.c fetch types; the recorded uprobe fixture, fixtures/uprobe.trace.dat, shows the same).
# Print fmt: "(%lx)" with REC->__probe_ip, or "(%lx <- %lx)" with REC->__probe_func, REC->__probe_ret_ip
# (trace_probe.c __set_print_fmt).
_PROBE_COMMON = ("\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n"
                 "\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;\n"
                 "\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;\n"
                 "\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n")


def probe_format_text(name: str, event_id: int, is_return: bool, args: list[tuple[str, str]]) -> str:
    """The tracefs format text of a probe event named ``name`` whose fetch args are ``args``
    ((name, type) with type u8..u64, s8..s64 or x8..x64)."""
    head = ["__probe_func", "__probe_ret_ip"] if is_return else ["__probe_ip"]
    lines = [f"\tfield:unsigned long {h};\toffset:{8 + 8 * i};\tsize:8;\tsigned:0;\n" for i, h in enumerate(head)]
    off = 8 + 8 * len(head)
    prints, refs = [], []
    for arg, typ in args:
        kind, bits = typ[0], int(typ[1:])
        size = bits // 8
        lines.append(f"\tfield:{'s' if kind == 's' else 'u'}{bits} {arg};\toffset:{off};\tsize:{size};"
                     f"\tsigned:{int(kind == 's')};\n")
        off += size
        long = "L" if bits == 64 else ""
        prints.append(f"{arg}=" + {"u": f"%{long}u", "s": f"%{long}d", "x": f"0x%{long}x"}[kind])
        refs.append(f"REC->{arg}")
    ip = "(%lx <- %lx)" if is_return else "(%lx)"
    fmt = " ".join([ip, *prints])
    rec = ", ".join([f"REC->{h}" for h in head] + refs)
    return (f"name: {name}\nID: {event_id}\nformat:\n{_PROBE_COMMON}\n{''.join(lines)}\n"
            f"print fmt: \"{fmt}\", {rec}\n")
