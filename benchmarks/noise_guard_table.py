"""Markdown table of figures/noise_guard_*.jsonl (bench_noise_guard.py's log).

Run: python benchmarks/noise_guard_table.py [--seeds N]
One row per configuration, dataset and fraction (the last line logged for each seed set).
"""

import argparse
import glob
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=None, help="only runs over this many seeds")
    parser.add_argument("--compact", action="store_true",
                        help="one row per configuration: acc (minus budget, minus infobatch) "
                             "per dataset and fraction")
    args = parser.parse_args()
    rows = {}
    for path in sorted(glob.glob(os.path.join(HERE, "figures", "noise_guard_*.jsonl"))):
        with open(path) as f:
            for line in f:
                d = json.loads(line)
                if args.seeds is not None and len(d["seeds"]) != args.seeds:
                    continue
                rows[(d["config"], d["dataset"], d["fraction"], len(d["seeds"]))] = d
    if args.compact:
        return compact(rows)
    print("| config | dataset | fraction | seeds | GRAFT acc | - budget | - rs2 | - infobatch "
          "| - uniform | flagged |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for d in rows.values():
        m = d["minus"]
        cells = [f"{m[b][0]:+.2f} +- {m[b][1]:.2f}" for b in ("budget", "rs2", "infobatch",
                                                           "uniform")]
        print(f"| {d['config']} | {d['dataset']} | {d['fraction']} | {len(d['seeds'])} "
              f"| {d['acc']:.2f} +- {d['acc_std']:.2f} | " + " | ".join(cells)
              + f" | {100 * d['flagged_share']:.1f}% |")


def compact(rows):
    columns = sorted({(d["dataset"], d["fraction"]) for d in rows.values()},
                     key=lambda c: (c[0] != "mnist1d", c[0] != "noisy_digits", c))
    configs = list(dict.fromkeys(k[0] for k in rows))
    print("| config | " + " | ".join(f"{ds} {fr}" for ds, fr in columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for config in configs:
        cells = []
        for ds, fr in columns:
            found = [d for k, d in rows.items() if k[:3] == (config, ds, fr)]
            if not found:
                cells.append("")
                continue
            d = max(found, key=lambda d: len(d["seeds"]))
            m = d["minus"]
            cells.append(f"{d['acc']:.2f} ({m['budget'][0]:+.2f}, {m['infobatch'][0]:+.2f})")
        print(f"| {config} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
