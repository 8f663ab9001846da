"""How well an early rung ranks students: Kendall tau within size bands (issue 20, point 2).

    python benchmarks/rank_fidelity.py docs/results/fidelity_full.json \\
        docs/results/fidelity_early.json

Each argument is a table written by record_table.py: the same students trained to the end under
one training plan (the first, the reference: every epoch on all the images). For every epoch of
every plan it prints Kendall's tau between the students' validation accuracy after that epoch
and their final one (under the same plan, and under the reference), counted only over pairs of
students in the same half-decade of params: across sizes the larger student wins almost always,
which would flatter any rung. Also each plan's cost (seconds up to each epoch) and final accuracy
against the reference, and the students whose rank in their band falls at a rung and comes back
(the slow starters a rung there would wrongly stop).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def band(n_params: int) -> int:
    """The half-decade of a size: 10k-31.6k, 31.6k-100k, ... (a factor of 3.16 wide)."""
    return math.floor(2 * math.log10(n_params))


def banded_tau(rows: list[dict], early: list[float], final: list[float]) -> tuple[float, int]:
    """Kendall's tau over the untied pairs in the same band: (concordant - discordant) over
    the pairs that are one or the other (a tied pair counts in neither). (tau, those pairs)."""
    concordant = discordant = 0
    for i in range(len(rows)):
        for j in range(i + 1, len(rows)):
            if band(rows[i]["n_params"]) != band(rows[j]["n_params"]):
                continue
            s = (early[i] - early[j]) * (final[i] - final[j])
            concordant += s > 0
            discordant += s < 0
    pairs = concordant + discordant
    return ((concordant - discordant) / pairs if pairs else float("nan")), pairs


def slow_starters(rows: list[dict], epoch: int) -> list[str]:
    """Students last in their band at `epoch` but not last at the end (of a band of >= 2)."""
    names = []
    for b in {band(r["n_params"]) for r in rows}:
        members = [r for r in rows if band(r["n_params"]) == b]
        if len(members) < 2:
            continue
        worst_then = min(members, key=lambda r: r["val"][epoch - 1])
        worst_end = min(members, key=lambda r: r["val"][-1])
        if worst_then is not worst_end:
            names.append(f"{_name(worst_then)} (band {b})")
    return names


def _name(row: dict) -> str:
    p = row["params"]
    family = p.get("family", "")
    keys = ("blocks", "base_width", "expansion")
    shape = "-".join(str(p[f"{family}.{k}"]) for k in keys if f"{family}.{k}" in p)
    return f"{family} {shape} ({row['n_params']:,})"


def _key(row: dict) -> str:
    """A student's identity across tables: its parameters."""
    return json.dumps(row["params"], sort_keys=True)


def report(paths: list[Path]) -> str:
    tables = [json.loads(p.read_text()) for p in paths]
    ref_by = {_key(r): r for r in tables[0]["rows"]}
    common = set(ref_by)  # the students every table holds
    for t in tables[1:]:
        common &= {_key(r) for r in t["rows"]}
    lines = []
    for path, table in zip(paths, tables, strict=True):
        rows = sorted((r for r in table["rows"] if _key(r) in common), key=lambda r: r["n_params"])
        ref = [ref_by[_key(r)] for r in rows]
        final = [r["val"][-1] for r in rows]
        ref_final = [r["val"][-1] for r in ref]
        total = sum(sum(r["seconds"]) for r in rows)
        ref_total = sum(sum(r["seconds"]) for r in ref)
        gap = sum(f - g for f, g in zip(final, ref_final, strict=True)) / len(rows)
        lines += [f"## {path.name}: {len(rows)} students, {table['meta'].get('command', '')}", "",
                  f"final validation accuracy, mean over students: {sum(final) / len(rows):.4f} "
                  f"({100 * gap:+.2f} points against {paths[0].name}); "
                  f"training seconds {total:.0f} ({total / ref_total:.2f} of the reference)", "",
                  "| epoch | tau vs own final | tau vs reference final | pairs | "
                  "cost so far (of reference run) | last in band then, not at the end |",
                  "| --- | --- | --- | --- | --- | --- |"]
        epochs = len(rows[0]["val"])
        for e in range(1, epochs + 1):
            tau, pairs = banded_tau(rows, [r["val"][e - 1] for r in rows], final)
            tau_ref, _ = banded_tau(rows, [r["val"][e - 1] for r in rows], ref_final)
            cost = (sum(sum(r["seconds"][:e]) for r in rows) / ref_total)
            slow = ", ".join(slow_starters(rows, e)) or "-"
            lines.append(f"| {e} | {tau:.3f} | {tau_ref:.3f} | {pairs} | {cost:.3f} | {slow} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tables", type=Path, nargs="+", help="record_table.py tables; first: reference")
    args = ap.parse_args(argv)
    print(report(args.tables))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
