#!/usr/bin/env python3
"""Medians per variant of a bench/side-by-side.sh run: `python3 bench/side-by-side.py DIR`."""

from __future__ import annotations

import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any


def dig(x: Any, *keys: str) -> Any:
    for k in keys:
        x = x.get(k) if isinstance(x, dict) else None
    return x


def per_run(r: dict[str, Any]) -> dict[str, float | None]:
    m, s = r.get("medians", {}), r.get("scenarios", {})
    out: dict[str, float | None] = {
        "ingest @10 ev/s": dig(m, "1", "c10", "relay_per_s"),
        "ack p99 @10 ms": dig(m, "1", "c10", "relay_p99_ms"),
        "ingest @50 ev/s": dig(m, "1", "c50", "relay_per_s"),
        "ack p99 @50 ms": dig(m, "1", "c50", "relay_p99_ms"),
        "sends meanwhile /s": dig(m, "1", "c50", "delivered_during_per_s"),
        "pinned ratio": dig(m, "1p", "ratio"),
        "burst n/s": dig(m, "2", "burst_per_s"),
        "steady e2e p99 ms": dig(m, "2", "steady_p99_ms"),
        "drain n/s": dig(s, "4", "drain_per_s"),
        "noise %": dig(r, "noise", "foreign_cpu_pct_median"),
    }
    for run in s.get("2", []):
        w, n = run["burst"]["wrk"], run["burst"]["sink"].get("count", 0)
        if "relay_tree_cpu_s" in w and n:
            out["relay ms/notification"] = 1000 * w["relay_cpu_s"] / n
            out["all ms/notification"] = 1000 * w["relay_tree_cpu_s"] / n
    return out


def main(folder: str) -> None:
    table: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(Path(folder).glob("*.json")):
        variant = re.sub(r"-\d+$", "", path.stem)
        for key, value in per_run(json.loads(path.read_text())).items():
            if value is not None:
                table[variant][key].append(value)
    variants = list(table)
    keys = list(dict.fromkeys(k for v in variants for k in table[v]))
    print("metric".ljust(22) + "".join(v.rjust(14) for v in variants))
    for key in keys:
        cells = [f"{statistics.median(table[v][key]):.2f}" if table[v].get(key) else "-"
                 for v in variants]
        print(key.ljust(22) + "".join(c.rjust(14) for c in cells))


if __name__ == "__main__":
    main(sys.argv[1])
