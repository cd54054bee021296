"""Selection share of the demo's GRAFT run, with the demo model and a 10x larger one.

Issue 9's target 5: the sampler's refits take at most 5% of the demo's GRAFT run
(``graft-select demo --strategies graft``). The share is a ratio of two times
measured in the same run (``selection_seconds / wall_seconds``, both from the
demo's records), so it is comparable across machines. The same run with
``CNN1D(width=110)`` (about 10x the demo model's parameters, as in
``bench_overhead.py``) shows how the share falls as the training step gets
dearer: the refit's cost depends on the store (samples, embedding width), not on
the model's depth.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_selection_share.py [--seeds N] [--quick]

One torch thread, MNIST-1D (24,000 training signals), 20 epochs, fractions 0.1
and 0.3, the demo's defaults otherwise. ``--quick`` runs 3,000 signals and 3
epochs (a smoke test of the script, not a measurement).
"""

import argparse
from unittest import mock

import numpy as np

from graft_select.demo import CNN1D, DemoConfig, harness, run_demo


def shares(config, width):
    """Per fraction: (mean selection share, mean wall seconds) over the seeds."""
    def build(dataset, n_features, n_classes):
        return CNN1D(length=n_features, n_classes=n_classes, width=width)

    with mock.patch.object(harness, "build_model", build):
        result = run_demo(config, progress=False)
    out = {}
    for fraction in config.fractions:
        runs = [r for r in result["runs"]
                if r["strategy"] == "graft" and r["fraction"] == fraction]
        share = np.mean([r["selection_seconds"] / r["wall_seconds"] for r in runs])
        out[fraction] = (float(share), float(np.mean([r["wall_seconds"] for r in runs])))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0 to N-1 (default: 1)")
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    args = parser.parse_args(argv)
    settings = dict(strategies=("graft",), fractions=(0.1, 0.3),
                    seeds=tuple(range(args.seeds)), threads=1)
    if args.quick:
        config = DemoConfig.quick_config(**settings)
    else:
        config = DemoConfig(**settings)
    print(f"selection share of the demo's GRAFT run ({len(config.seeds)} seed(s), "
          f"{config.epochs} epochs, 1 thread); target <= 5% for the demo model")
    for label, width in (("demo CNN1D", 32), ("10x CNN1D", 110)):
        for fraction, (share, wall) in shares(config, width).items():
            verdict = ("PASS" if share <= 0.05 else "MISS") if width == 32 else "(reference)"
            print(f"  {label:11s} fraction {fraction:g}: run {wall:6.2f} s, selection "
                  f"{100 * share:5.2f}%  {verdict}")


if __name__ == "__main__":
    main()
