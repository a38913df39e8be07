#!/usr/bin/env python3
"""Draws per-client completion times of the cold N-client bench scenario
(one panel per N, one group of bars per target) from target/ferry-bench/pull.json.

Usage: bench-chart.py pull.json out.png
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    data = json.load(open(sys.argv[1]))
    series = data["cold_n_client_totals"]
    ns = sorted({s["clients"] for s in series})
    targets = [t for t in ["direct", "ferry", "distribution", "nginx"] if any(s["target"] == t for s in series)]
    fig, axes = plt.subplots(1, len(ns), figsize=(6 * len(ns), 4.5), squeeze=False)
    for ax, n in zip(axes[0], ns):
        for i, t in enumerate(targets):
            totals = next((s["totals_s"] for s in series if s["target"] == t and s["clients"] == n), [])
            ax.plot(range(1, len(totals) + 1), sorted(totals), marker="o", markersize=3, label=t)
        ax.set_title(f"cold blob, {n} clients at once")
        ax.set_xlabel("client (sorted by completion)")
        ax.set_ylabel("seconds to the whole blob")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=110)
    print(f"chart written to {sys.argv[2]}")


if __name__ == "__main__":
    main()
