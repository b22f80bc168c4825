"""Draws the charts of BENCHMARKS.md from a scripts/bench results.json (needs matplotlib).

    python plot.py results/bench/<stamp>/results.json docs/bench
"""

import json
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SYSTEMS = ["floor-http", "floor-proxy", "tether-mem", "tether-sqlite", "supergateway", "mcp-proxy-npm", "mcp-proxy-py"]
LABEL = {
    "floor-http": "floor: bare HTTP",
    "floor-proxy": "floor: minimal stdio proxy",
    "tether-mem": "tether (memory)",
    "tether-sqlite": "tether (SQLite)",
    "supergateway": "supergateway --stateful",
    "mcp-proxy-npm": "mcp-proxy (npm)",
    "mcp-proxy-py": "mcp-proxy (PyPI)",
}
COLOR = {
    "floor-http": "#b0b0b0",
    "floor-proxy": "#707070",
    "tether-mem": "#1f6feb",
    "tether-sqlite": "#6ea8fe",
    "supergateway": "#d62728",
    "mcp-proxy-npm": "#ff9f1c",
    "mcp-proxy-py": "#2ca02c",
}
LOADS = [("c1", "1 connection"), ("c16", "1 session,\n16 connections"), ("s100", "100 sessions")]
UPSTREAMS = [("echo", "tether-echo upstream (fast)"), ("everything", "server-everything upstream")]


def bars(ax, rows, upstream, key, scale, fmt):
    loads = [ld for ld in LOADS if any(r["load"] == ld[0] and r["upstream"] == upstream for r in rows)]
    systems = [s for s in SYSTEMS if any(r["system"] == s and r["upstream"] == upstream for r in rows)]
    width = 0.8 / max(len(systems), 1)
    for i, s in enumerate(systems):
        xs, ys = [], []
        for j, (ld, _) in enumerate(loads):
            r = next((r for r in rows if r["system"] == s and r["load"] == ld and r["upstream"] == upstream), None)
            if r:
                xs.append(j + (i - (len(systems) - 1) / 2) * width)
                ys.append(r[key] * scale)
        b = ax.bar(xs, ys, width, label=LABEL[s], color=COLOR[s])
        ax.bar_label(b, labels=[fmt(y) for y in ys], fontsize=6, padding=1, rotation=90 if len(systems) > 3 else 0)
    ax.set_xticks(range(len(loads)), [label for _, label in loads], fontsize=8)
    ax.tick_params(axis="y", labelsize=8)
    ax.margins(y=0.12)


def medians(rows):
    """One row per (upstream, system, load): the median of the rounds."""
    groups = {}
    for r in rows:
        if r.get("load") != "failed":
            groups.setdefault((r["upstream"], r["system"], r["load"]), []).append(r)
    return [
        {"upstream": u, "system": s, "load": ld, **{k: statistics.median(r[k] for r in rs) for k in ("rps", "p50_us", "p99_us")}}
        for (u, s, ld), rs in groups.items()
    ]


def main():
    results = json.loads(Path(sys.argv[1]).read_text())
    out = Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    rows = medians(results["load"])
    ups = [u for u in UPSTREAMS if any(r["upstream"] == u[0] for r in rows)]

    fig, axes = plt.subplots(1, len(ups), figsize=(5 * len(ups), 3.6), squeeze=False)
    for ax, (u, title) in zip(axes[0], ups):
        bars(ax, rows, u, "rps", 1, lambda y: f"{y:,.0f}")
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("tools/call per second", fontsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.suptitle("Throughput (higher is better; wrk on the same 2-core machine)", fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(out / "throughput.png", dpi=90)

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, (key, title) in zip(axes, [("p50_us", "p50"), ("p99_us", "p99")]):
        bars(ax, rows, "echo", key, 1e-3, lambda y: f"{y:.2f}")
        ax.set_yscale("log")
        ax.set_title(f"{title} latency, tether-echo upstream (lower is better)", fontsize=9)
        ax.set_ylabel("ms (log scale)", fontsize=8)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(out / "latency.png", dpi=90)


if __name__ == "__main__":
    main()
