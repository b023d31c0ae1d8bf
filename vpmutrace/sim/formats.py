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
