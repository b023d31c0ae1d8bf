"""Compare an analysis document with a simulator truth: every key the truth has must match."""

from __future__ import annotations

from typing import Any

# list items are matched by these keys (order-free); other lists compare element by element
LIST_KEYS = {"by_reason": ("reason", "exit_reason", "isa"), "by_msr": ("msr",), "per_cpu": ("cpu",),
             "gaps": ("cpu", "start_ns"), "windows": ("kind", "pid", "start_ns")}


def mismatches(doc: Any, truth: Any, path: str = "") -> list[str]:
    out: list[str] = []
    if isinstance(truth, dict):
        if not isinstance(doc, dict):
            return [f"{path}: expected an object, got {doc!r}"[:300]]
        if path == ".diff" and "divergences" in truth:
            got = {d["rule"]: d["count"] for d in doc.get("divergences", [])}
            if got != truth["divergences"]:
                out.append(f"{path}.divergences: expected {truth['divergences']}, got {got}")
            truth = {k: v for k, v in truth.items() if k != "divergences"}
        for k, v in truth.items():
            out += mismatches(doc.get(k), v, f"{path}.{k}")
        return out
    if isinstance(truth, list):
        key = LIST_KEYS.get(path.rsplit(".", 1)[-1])
        if not isinstance(doc, list):
            return [f"{path}: expected a list, got {doc!r}"[:300]]
        if key:
            index = {tuple(d.get(k) for k in key): d for d in doc}
            if len(doc) != len(truth):
                out.append(f"{path}: expected {len(truth)} items, got {len(doc)}")
            for item in truth:
                k = tuple(item.get(x) for x in key)
                if k not in index:
                    out.append(f"{path}: missing item {dict(zip(key, k, strict=True))}")
                else:
                    out += mismatches(index[k], item, f"{path}[{k}]")
            return out
        if len(doc) != len(truth):
            return [f"{path}: expected {len(truth)} items, got {len(doc)}"]
        for i, (a, b) in enumerate(zip(doc, truth, strict=True)):
            out += mismatches(a, b, f"{path}[{i}]")
        return out
    if isinstance(truth, float) and isinstance(doc, int | float):
        return [] if abs(doc - truth) < 1e-6 * max(1.0, abs(truth)) else [f"{path}: expected {truth}, got {doc}"]
    if doc != truth:
        return [f"{path}: expected {truth!r}, got {doc!r}"[:300]]
    return []
