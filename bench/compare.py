"""A/B of two checkouts on this machine: the steady-load and burst benches interleaved, medians compared.

How a refactor shows that it kept the measured speed. This machine is shared and noisy, so the two sides
alternate round by round (the side that goes first alternates too) and only medians are compared.

What it runs, per round and side, each in a subprocess whose ``PYTHONPATH`` and working directory are that
side's checkout (a ``git worktree`` of the base commit, say) with this interpreter:

- ``python -m bench.steady --jobs N... --duration D --json F``: the node under N jobs every second, paired
  with the bare dispatcher in the same run. Compared: node p99 − bare p99 (what the scheduler adds to the
  drift) and node CPU µs per firing; lost, duplicates and rows not terminal must stay 0.
- ``python -m bench.dispatch_burst --n B --repeat R``: the dispatcher alone, one burst of B requests, R times.
  Compared: drift p99 and the client's CPU from the second on (read from its text output, which older
  checkouts print the same way).

Example (the issue-9 check)::

    git worktree add --detach ../wt-base e30fc99
    .venv/bin/python -m bench.compare --base ../wt-base --new . --rounds 3 --jobs 1000 5000 --duration 30
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["burst_figures", "main", "steady_figures"]

_BURST_P99 = re.compile(r"drift ms \(sink receive - scheduled\):.*?p99 ([\d.]+).*?lost (\d+)\s+dup (\d+)")
_BURST_CPU = re.compile(r"client done at \+[\d.]+ ms \(cpu ([\d.]+) ms\)")


def steady_figures(results: list[dict[str, Any]]) -> dict[int, dict[str, float]]:
    """Per N, from one ``bench.steady --json`` file: the node's p99 over the bare dispatcher's, its CPU per
    firing, and what must be zero."""
    by_n: dict[int, dict[str, dict[str, Any]]] = {}
    for r in results:
        by_n.setdefault(r["jobs"], {})[r["scenario"]] = r
    out = {}
    for n, pair in by_n.items():
        node, bare = pair["steady"], pair["bare_dispatcher"]
        out[n] = {
            "node_p99": node["drift_ms"]["p99"],
            "bare_p99": bare["drift_ms"]["p99"],
            "added_p99": round(node["drift_ms"]["p99"] - bare["drift_ms"]["p99"], 1),
            "cpu_us_per_firing": node["node_cpu_per_firing_us"],
            "lost": node["lost"] + bare["lost"],
            "duplicates": node["duplicates"] + bare["duplicates"],
            "not_terminal": node["db_rows_not_terminal"],
        }
    return out


def burst_figures(text: str) -> list[dict[str, float]]:
    """Each burst in ``bench.dispatch_burst``'s output: drift p99, client CPU, lost, duplicates."""
    return [
        {"p99": float(m[1]), "lost": int(m[2]), "duplicates": int(m[3]), "cpu_ms": float(c[1])}
        for m, c in zip(_BURST_P99.finditer(text), _BURST_CPU.finditer(text), strict=True)
    ]


def _run(checkout: Path, args: list[str]) -> str:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    done = subprocess.run(
        [sys.executable, "-m", *args], cwd=checkout, env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"{checkout}: {' '.join(args)} failed: {done.stderr.strip().splitlines()[-1:]}")
    return done.stdout


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 1)


def _change(base: float, new: float) -> str:
    return f"{(new - base) / base * 100:+.1f} %" if base else "-"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.splitlines()[0])
    p.add_argument("--base", type=Path, required=True, help="the checkout to compare against")
    p.add_argument("--new", type=Path, default=Path("."), help="the checkout under test (default: here)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--jobs", type=int, nargs="+", default=[1000, 5000])
    p.add_argument("--duration", type=int, default=30)
    p.add_argument("--burst", type=int, default=5000, help="requests per burst (0: no burst bench)")
    p.add_argument("--burst-repeat", type=int, default=3)
    p.add_argument("--json", type=Path, help="also write every figure here")
    args = p.parse_args(argv)
    sides = {"base": args.base.resolve(), "new": args.new.resolve()}
    steady: dict[str, list[dict[int, dict[str, float]]]] = {"base": [], "new": []}
    burst: dict[str, list[dict[str, float]]] = {"base": [], "new": []}
    with tempfile.TemporaryDirectory(prefix="sw-compare-") as tmp:
        for r in range(args.rounds):
            for side in ("base", "new") if r % 2 == 0 else ("new", "base"):
                out = Path(tmp) / f"steady-{side}-{r}.json"
                jobs = [str(n) for n in args.jobs]
                _run(sides[side], ["bench.steady", "--jobs", *jobs, "--duration", str(args.duration),
                                   "--json", str(out)])  # fmt: skip
                steady[side].append(steady_figures(json.loads(out.read_text())))
                if args.burst:
                    text = _run(sides[side], ["bench.dispatch_burst", "--n", str(args.burst),
                                              "--repeat", str(args.burst_repeat)])  # fmt: skip
                    burst[side].extend(burst_figures(text))
                print(f"round {r + 1}: {side} done", file=sys.stderr, flush=True)
    lines = ["| figure | base (median) | new (median) | change |", "|---|---|---|---|"]
    for n in args.jobs:
        for key, label in (
            ("added_p99", "node p99 − bare p99 ms"),
            ("cpu_us_per_firing", "node CPU µs/firing"),
        ):
            b = _median([run[n][key] for run in steady["base"]])
            nw = _median([run[n][key] for run in steady["new"]])
            lines.append(f"| N={n}: {label} | {b} | {nw} | {_change(b, nw)} |")
    if args.burst:
        for key, label in (("p99", "burst drift p99 ms"), ("cpu_ms", "burst client CPU ms")):
            b, nw = _median([x[key] for x in burst["base"]]), _median([x[key] for x in burst["new"]])
            lines.append(f"| {args.burst} burst: {label} | {b} | {nw} | {_change(b, nw)} |")
    bad = {
        side: sum(
            run[n][k] for run in steady[side] for n in run for k in ("lost", "duplicates", "not_terminal")
        )
        + sum(x["lost"] + x["duplicates"] for x in burst[side])
        for side in ("base", "new")
    }
    lines.append(
        f"| lost + duplicates + rows not terminal, all runs (sum) | {bad['base']} | {bad['new']} | |"
    )
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps({"steady": steady, "burst": burst}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
