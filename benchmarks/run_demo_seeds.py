"""The demo's 5-seed figures, one seed at a time (each seed's JSON is kept as it finishes).

Run: python benchmarks/run_demo_seeds.py DATASET OUT [--seeds N]
Equivalent to ``graft-select demo --full --dataset DATASET --threads 1`` (the full
protocol: every strategy, the seeds one after the other, strategies interleaved within
each seed; ``graft-select demo`` without ``--full`` runs 3 seeds of 3 strategies), but writes
OUT/seed_K.json after every seed, then OUT/results.{json,csv,png} and the table.
"""

import argparse
import json
from pathlib import Path

from graft_select.demo import DemoConfig, compare, format_tables, run_demo, summarize
from graft_select.demo.report import write_results


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("dataset")
    parser.add_argument("out")
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    merged = None
    for seed in range(args.seeds):
        path = out / f"seed_{seed}.json"
        if path.exists():
            result = json.loads(path.read_text())
        else:
            result = run_demo(DemoConfig(dataset=args.dataset, seeds=(seed,), threads=1),
                              progress=False)
            path.write_text(json.dumps(result))
        if merged is None:
            merged = result
        else:
            merged["runs"] += result["runs"]
        merged["config"]["seeds"] = list(range(seed + 1))
        merged["summary"] = summarize(merged)
        merged["comparisons"] = compare(merged)
        write_results(merged, out)
        (out / "table.txt").write_text(format_tables(merged) + "\n")
        print(f"seed {seed} done", flush=True)


if __name__ == "__main__":
    main()
