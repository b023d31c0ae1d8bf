"""docs/analyze.md, generated from the analyzer registry: ``python -m vpmutrace.analyze.docs``."""

from __future__ import annotations

from vpmutrace.analyze import keys, registry
from vpmutrace.analyze.base import NEEDS


def _inputs(names: tuple[str, ...]) -> str:
    return ", ".join(f"`{n}`" for n in names) or "-"


def render_markdown() -> str:
    reg = registry()
    out = ["# `vpmutrace analyze`", "",
           "Generated from the analyzer registry (`python -m vpmutrace.analyze.docs > docs/analyze.md`).", "",
           "`vpmutrace analyze TRACE --json` prints one JSON document with the stable top-level keys "
           + ", ".join(f"`{k}`" for k in keys()) + ". Timestamps and durations are integer nanoseconds on the "
           "trace clock (`trace.time_unit` is `ns`). When a trace's clock counts ticks that could not be "
           "converted (x86-tsc without TSC2NSEC, no `--tsc-khz`, no host snapshot `tsc_khz`, no events to "
           "estimate the rate from), `trace.time_unit` names the ticks, the analyzers that compare times "
           "with physical constants (marked *ns* below) are not computable, and the others carry "
           "`time_unit` in their result: their `*_ns` fields then hold ticks. An analyzer whose required "
           "inputs are missing reports `{\"computable\": false, "
           "\"needs\": [...], \"reason\": \"not computable: needs ...\"}` (plus any partial counts that need no "
           "pairing), never zeros. Every analyzer's result carries its `findings`; the top-level `findings` "
           "lists them all, most severe first. A finding is a *fact* when it follows from the trace and the "
           "kernel code its rule cites, a *candidate* when it rests on timing or a pattern; a candidate is "
           "never of high severity and always carries its evidence.", "",
           "`config` records what the analyses assumed and where it came from: the vPMU design, the CPU "
           "vendor, the host and guest PMU shapes, the kernel release and the NMI event order it implies, "
           "the watchdog, and the tunables. Each is taken from `--model`/`--guest-gp`/`--guest-fixed`, else "
           "the host snapshot (`host.json` of `vpmutrace record`), else the trace, else it is unknown.", "",
           "| key | what it answers | requires | uses when present | findings (severity, certainty) |",
           "|---|---|---|---|---|"]
    for a in reg.values():
        kinds = "; ".join(f"`{k.id}` ({k.severity}, {k.certainty})" for k in a.findings) or "-"
        req = _inputs(a.requires) + ("; *ns*" if a.needs_ns else "")
        out.append(f"| `{a.name}` | {a.title} | {req} | {_inputs(a.optional)} | {kinds} |")
    out += ["", "Inputs: " + "; ".join(f"`{k}` = {v}" for k, v in NEEDS.items()) + "; `lost` = the lost table.", ""]
    for a in reg.values():
        out += [f"## `{a.name}` (`vpmutrace {a.command}`)", "", a.title[0].upper() + a.title[1:] + ".", "",
                a.rule, ""]
        if a.limits:
            out += ["**On a real host:** " + a.limits, ""]
    return "\n".join(out).rstrip("\n") + "\n"


if __name__ == "__main__":
    print(render_markdown(), end="")
