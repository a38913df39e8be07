#!/usr/bin/env python3
"""A fluid model of one cold layer pulled by N nodes at once, each running
ferry (one replica per node), for four ways of distributing it:

  upstream   every node fetches from the upstream itself (no cluster);
  owner      ferry.cluster without the tree: the owner sends N-1 copies;
  tree       ferry's fan-out tree: each node sends to at most `fanout`;
  p2p        piece-based P2P as Dragonfly describes it: a seed fetches the
             pieces once, peers exchange pieces (every node uploads about
             what it downloads).

Each node has a full-duplex link of L; one upstream connection gives at
most u; the site's link to the upstream carries at most W in all. Every
way streams (a node forwards bytes as they arrive), so the time until the
last node has the layer is the layer's size over the slowest rate on its
path, plus a per-level start-up delay (d per tree level, piece time for
P2P), which is negligible at these sizes. Prints a Markdown table and,
with --check, the check against the 12-replica measurement of
`cargo bench` scenario 10 (see docs/benchmarks.md).

Usage: scripts/fleet-model.py [--size-gb 10] [--uplink-gbps 1]
       [--site-gbps 10] [--fanout 4] [--check FLEET.json]
"""

import argparse
import json
import math


def depth(n, fanout):
    """Levels below the owner in a full tree of `fanout` holding n nodes."""
    levels, holds, width = 0, 1, 1
    while holds < n:
        width *= fanout
        holds += width
        levels += 1
    return levels


def model(n, link, size, uplink, site, fanout, level_delay=0.005):
    """(seconds until the last node has it, most bytes one node sends, upstream bytes)."""
    gb = 1e9 / 8  # bytes per second in a Gb/s
    ways = {}
    # Every node from the upstream: the site link is shared by n streams.
    rate = min(uplink, site / n) * gb
    ways["upstream"] = (size / rate, 0.0, n * size)
    # The owner alone: its link is shared by n-1 streams, none faster than
    # its own download.
    rate = min(uplink, link / max(n - 1, 1)) * gb
    ways["owner"] = (size / rate, (n - 1) * size, size)
    # The tree: each link is shared by at most `fanout` streams.
    rate = min(uplink, link / fanout) * gb
    ways["tree"] = (size / rate + depth(n, fanout) * level_delay, fanout * size, size)
    # Piece-based P2P: the seed's download bounds it, every node downloads
    # the whole layer over its link, and the swarm uploads what it downloads.
    rate = min(uplink, link) * gb
    pieces = 4 << 20
    ways["p2p"] = (size / rate + math.log2(n) * pieces / (link * gb), 2 * size, size)
    return ways


def table(args):
    size = args.size_gb * 1e9
    rows = []
    head = "| nodes | link | way | last node has it | most one node sends | upstream bytes |"
    rows.append(head)
    rows.append("| --- | --- | --- | --- | --- | --- |")
    for n in (100, 1000):
        for link in (10, 25):
            ways = model(n, link, size, args.uplink_gbps, args.site_gbps, args.fanout)
            for way in ("upstream", "owner", "tree", "p2p"):
                t, egress, up = ways[way]
                rows.append(
                    f"| {n} | {link} Gb/s | {way} | {fmt_time(t)} | {egress / 1e9:,.0f} GB | {up / 1e9:,.0f} GB |"
                )
    return "\n".join(rows)


def fmt_time(s):
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    if s >= 60:
        return f"{s / 60:.1f} min"
    return f"{s:.0f} s"


def check(path, fanout):
    """The model's predictions for the measured fleet: the most one replica
    sends (exact), and, on one machine whose CPU every replica shares, the
    time ratio of 12 replicas to 3 from the bytes each shape moves."""
    rows = json.load(open(path))

    def cell(label):
        for key, value in rows.items():
            if key.startswith(label) and isinstance(value, dict):
                return value["ferry"]
        raise SystemExit(f"no row {label!r} in {path}")

    out = []
    for n, way in ((12, "owner only"), (12, f"tree (fanout {fanout})")):
        label = f"fleet: {n} replicas, {way}, 24 clients: most sent to peers by one replica / blob"
        measured = float(cell(label))
        predicted = n - 1 if way == "owner only" else fanout
        out.append(f"{n} replicas, {way}: most sent by one replica {measured:.2f} blobs, model {predicted}")
    # Bytes handled per blob on one shared CPU: the upstream copy, the
    # copies sent to peers, one store write per replica, the clients' reads.
    def handled(n, clients=24):
        return 1 + (n - 1) + n + clients
    t3 = float(cell(f"fleet: 3 replicas, tree (fanout {fanout}), 24 clients: total median/max (s)").split("/")[1])
    t12 = float(cell(f"fleet: 12 replicas, tree (fanout {fanout}), 24 clients: total median/max (s)").split("/")[1])
    ratio = handled(12) / handled(3)
    out.append(
        f"slowest client, 12 replicas over 3: measured {t12 / t3:.2f}x, model (bytes moved on one CPU) {ratio:.2f}x"
    )
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-gb", type=float, default=10)
    p.add_argument("--uplink-gbps", type=float, default=1, help="one upstream connection")
    p.add_argument("--site-gbps", type=float, default=10, help="the site's link to the upstream")
    p.add_argument("--fanout", type=int, default=4)
    p.add_argument("--check", help="a fleet.json written by the bench (scenario 10)")
    args = p.parse_args()
    print(table(args))
    if args.check:
        print()
        print(check(args.check, args.fanout))


if __name__ == "__main__":
    main()
