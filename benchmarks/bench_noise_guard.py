"""A loss / label-noise guard for GRAFT's MaxVol candidates, against the baselines.

Run: python benchmarks/bench_noise_guard.py --dataset D [--seeds N] [--only NAME ...]

MaxVol on last-layer gradient proxies favours high-loss rows, which on noisy data are
the mislabelled ones. The guard is prototyped through the public API only: a
GraftSelector subclass whose ``fit`` reads the residuals ``softmax - onehot`` of the
gradients the sampler passes (a StoredGradients view of its store, or FactoredGradients),
flags the suspicious rows and either

- ``drop``s them from the candidates (the parent fit runs on the other rows with the
  fraction raised so that the budget is unchanged; indices are mapped back), or
- ``zero``es their residual rows (MaxVol never picks them, uniform picks still may).

Flag rules (``p_y`` = probability of the given label = ``1 + min(residual row)``):

- ``misclassified``: the model's argmax is not the given label (adaptive: the count
  follows the data), ``max_{c != y} p_c > p_y``;
- ``prob<t``: ``p_y < t``;
- ``quantile q``: the share ``q`` of rows with the lowest ``p_y`` (highest loss);
- ``estimate (t, c)``: an estimate of the label-noise rate, ``nu = mean(p_y < t)`` (the
  share of rows the model contradicts confidently), times a margin ``c``: the
  ``c * nu * n`` rows with the lowest ``p_y`` (a share that follows the data: about 1%
  on clean MNIST-1D, about 16% on noisy digits with 15% wrong labels);
- ``gated (t, c, gate)``: ``estimate (t, c)`` when ``nu > gate``, else no row
  (MaxVol keeps its high-loss picks on data that shows no sign of label noise);
- ``ratio (t, c, rho)``: ``estimate (t, c)`` when ``nu > rho * m``, ``m`` the share of
  misclassified rows: label noise makes confident mistakes, hard clean rows unconfident
  ones, so the ratio ``nu / m`` (logged as nu_range) is a scale-free noise signature.

At most half of the rows, and never so many that fewer than 1.25x the budget are
left, are flagged (the highest-loss ones first).

Baselines (budget, rs2, infobatch, uniform) run once per seed and warm start through
graft-select's demo harness and are cached in benchmarks/figures/ (they are
deterministic); each configuration's GRAFT runs are paired with them by seed. One JSON
line per configuration and fraction goes to stdout and to
figures/noise_guard_<dataset>.jsonl.
"""

import argparse
import json
import os
import sys
import time
from dataclasses import replace

import numpy as np
import torch

from graft_select import GraftSelector, StoredGradients
from graft_select.demo import DemoConfig, run_demo
from graft_select.demo.harness import make_batch_sampler
from graft_select.gradients import FactoredGradients
from graft_select.sampler import GraftBatchSampler

HERE = os.path.dirname(os.path.abspath(__file__))
BASELINES = ("budget", "rs2", "infobatch", "uniform")
STATS = []  # (n_candidates, n_flagged) per guarded fit
NU = []  # noise-rate estimates of the "gated" rule, per fit


def flag_rows(residuals, rule, value, budget):
    """Boolean mask of the rows to keep out of MaxVol, from residuals softmax - onehot."""
    n = residuals.shape[0]
    p_given = 1.0 + residuals.min(dim=1).values
    if rule == "misclassified":
        flagged = residuals.max(dim=1).values > p_given
    elif rule == "prob":
        flagged = p_given < value
    elif rule == "estimate":  # value = (t, c): flag c x the share with p_y < t, highest loss first
        t, c = value
        count = round(c * float((p_given < t).float().mean()) * n)
        flagged = torch.zeros(n, dtype=torch.bool, device=residuals.device)
        flagged[torch.argsort(p_given)[:count]] = True
    elif rule == "gated":  # value = (t, c, gate): "estimate" only when nu > gate
        t, c, gate = value
        nu = float((p_given < t).float().mean())
        NU.append(nu)
        count = round(c * nu * n) if nu > gate else 0
        flagged = torch.zeros(n, dtype=torch.bool, device=residuals.device)
        flagged[torch.argsort(p_given)[:count]] = True
    elif rule == "ratio":  # value = (t, c, rho): "estimate" when nu > rho x misclassified share
        t, c, rho = value
        nu = float((p_given < t).float().mean())
        wrong = float((residuals.max(dim=1).values > p_given).float().mean())
        NU.append(nu / max(wrong, 1e-12))
        count = round(c * nu * n) if nu > rho * wrong else 0
        flagged = torch.zeros(n, dtype=torch.bool, device=residuals.device)
        flagged[torch.argsort(p_given)[:count]] = True
    elif rule == "quantile":
        flagged = torch.zeros(n, dtype=torch.bool, device=residuals.device)
        flagged[torch.argsort(p_given)[:round(value * n)]] = True
    else:
        raise ValueError(rule)
    cap = max(0, min(n // 2, n - int(np.ceil(1.25 * budget))))
    if int(flagged.sum()) > cap:  # keep the highest-loss ones
        order = torch.argsort(p_given)
        flagged = torch.zeros_like(flagged)
        flagged[order[:cap]] = True
    return flagged


class GuardedSelector(GraftSelector):
    """GraftSelector whose MaxVol candidates exclude the rows flagged by flag_rows.

    Guard settings are class attributes (set by ``guarded``) so that sklearn's clone,
    which the sampler calls, keeps them.
    """

    guard_rule = "misclassified"
    guard_value = None
    guard_mode = "drop"

    def fit(self, X, y=None, *, gradients=None, compute_weights=True):
        if isinstance(gradients, StoredGradients):  # the sampler's refit on its store
            return self._fit_view(gradients, compute_weights)
        if not isinstance(gradients, FactoredGradients):
            return super().fit(X, y, gradients=gradients, compute_weights=compute_weights)
        residuals, inputs = gradients.residuals, gradients.inputs
        flagged = self._flag(residuals)
        if not bool(flagged.any()):
            return super().fit(X, y, gradients=gradients, compute_weights=compute_weights)
        if self.guard_mode == "zero":
            residuals = residuals.clone()
            residuals[flagged] = 0.0
            return super().fit(X, y, gradients=FactoredGradients(residuals, inputs),
                               compute_weights=compute_weights)
        keep = torch.nonzero(~flagged).flatten()
        return self._fit_kept(keep, residuals.shape[0], lambda: super(GuardedSelector, self).fit(
            X[keep], None, gradients=FactoredGradients(residuals[keep], inputs[keep]),
            compute_weights=compute_weights))

    def _fit_view(self, view, compute_weights):
        """The guard on a StoredGradients view: flagged rows leave the view's rows."""
        rows = torch.as_tensor(view.rows)
        flagged = self._flag(view.residuals[rows].float())
        parent = super()
        if not bool(flagged.any()):
            return parent.fit(None, gradients=view, compute_weights=compute_weights)
        if self.guard_mode == "zero":
            table = view.residuals.clone()
            table[rows[flagged]] = 0.0
            return parent.fit(None, gradients=StoredGradients(table, view.embeddings, rows),
                              compute_weights=compute_weights)
        keep = torch.nonzero(~flagged).flatten()
        return self._fit_kept(keep, len(rows), lambda: parent.fit(
            None, gradients=StoredGradients(view.residuals, view.embeddings, rows[keep]),
            compute_weights=compute_weights))

    def _flag(self, residuals):
        n = residuals.shape[0]
        flagged = flag_rows(residuals, self.guard_rule, self.guard_value, self.fraction * n)
        STATS.append((n, int(flagged.sum())))
        return flagged

    def _fit_kept(self, keep, n, fit_kept):
        """Fit on the kept rows with the fraction raised to hold the budget; map back."""
        fraction = self.fraction
        self.fraction = min(1.0, fraction * n / len(keep))
        try:
            fit_kept()
        finally:
            self.fraction = fraction
        self.sample_indices_ = keep.to(self.sample_indices_.device)[self.sample_indices_]
        self.n_samples_fit_ = n
        return self


def guarded(rule, value=None, mode="drop"):
    return type("GuardedSelector", (GuardedSelector,),
                {"guard_rule": rule, "guard_value": value, "guard_mode": mode})


# name -> (demo overrides, guard or None)
CONFIGS = {
    "default(us0.5)": ({}, None),
    "us0.25": ({"uniform_share": 0.25}, None),
    "us0.0": ({"uniform_share": 0.0}, None),
    "mis-drop,us0.0": ({"uniform_share": 0.0}, ("misclassified", None, "drop")),
    "mis-drop,us0.25": ({"uniform_share": 0.25}, ("misclassified", None, "drop")),
    "mis-drop,us0.5": ({"uniform_share": 0.5}, ("misclassified", None, "drop")),
    "mis-zero,us0.0": ({"uniform_share": 0.0}, ("misclassified", None, "zero")),
    "mis-zero,us0.25": ({"uniform_share": 0.25}, ("misclassified", None, "zero")),
    "p<0.2-drop,us0.0": ({"uniform_share": 0.0}, ("prob", 0.2, "drop")),
    "p<0.2-drop,us0.25": ({"uniform_share": 0.25}, ("prob", 0.2, "drop")),
    "p<0.05-drop,us0.0": ({"uniform_share": 0.0}, ("prob", 0.05, "drop")),
    "q0.1-drop,us0.0": ({"uniform_share": 0.0}, ("quantile", 0.1, "drop")),
    "q0.2-drop,us0.0": ({"uniform_share": 0.0}, ("quantile", 0.2, "drop")),
    "q0.2-drop,us0.25": ({"uniform_share": 0.25}, ("quantile", 0.2, "drop")),
    "mis-drop,us0.0,warm2": ({"uniform_share": 0.0, "warm_start_epochs": 2},
                             ("misclassified", None, "drop")),
    "mis-drop,us0.0,warm1": ({"uniform_share": 0.0, "warm_start_epochs": 1},
                             ("misclassified", None, "drop")),
    "mis-drop,us0.0,R2": ({"uniform_share": 0.0, "refit_every": 2},
                          ("misclassified", None, "drop")),
    "mis-drop,us0.0,R10": ({"uniform_share": 0.0, "refit_every": 10},
                           ("misclassified", None, "drop")),
    "mis-drop,us0.0,chunk128": ({"uniform_share": 0.0, "selection_size": 128},
                                ("misclassified", None, "drop")),
    "mis-drop,us0.25,chunk128": ({"uniform_share": 0.25, "selection_size": 128},
                                 ("misclassified", None, "drop")),
    "mis-drop,us0.0,refresh0": ({"uniform_share": 0.0, "refresh_share": 0.0},
                                ("misclassified", None, "drop")),
    "mis-drop,us0.25,warm2": ({"uniform_share": 0.25, "warm_start_epochs": 2},
                              ("misclassified", None, "drop")),
    "est.05x1.3,us0.0": ({"uniform_share": 0.0}, ("estimate", (0.05, 1.3), "drop")),
    "est.05x1.3,us0.25": ({"uniform_share": 0.25}, ("estimate", (0.05, 1.3), "drop")),
    "est.05x1.5,us0.0": ({"uniform_share": 0.0}, ("estimate", (0.05, 1.5), "drop")),
    "est.05x1.3,us0.0,refresh0": ({"uniform_share": 0.0, "refresh_share": 0.0},
                                  ("estimate", (0.05, 1.3), "drop")),
    "est.05x1.3,us0.25,refresh0": ({"uniform_share": 0.25, "refresh_share": 0.0},
                                   ("estimate", (0.05, 1.3), "drop")),
    "est.02x2,us0.0": ({"uniform_share": 0.0}, ("estimate", (0.02, 2.0), "drop")),
    "gated.05x1.3>.03,us0.0": ({"uniform_share": 0.0}, ("gated", (0.05, 1.3, 0.03), "drop")),
    "gated.05x1.3>.03,us0.0,refresh0": ({"uniform_share": 0.0, "refresh_share": 0.0},
                                        ("gated", (0.05, 1.3, 0.03), "drop")),
    "gated.05x1.3>.03,us0.25,refresh0": ({"uniform_share": 0.25, "refresh_share": 0.0},
                                         ("gated", (0.05, 1.3, 0.03), "drop")),
    "gated.05x1.3>.03,us0.0,chunk128": ({"uniform_share": 0.0, "selection_size": 128},
                                        ("gated", (0.05, 1.3, 0.03), "drop")),
}
GATED = ("gated", (0.05, 1.3, 0.03), "drop")
for us in (0.0, 0.25):
    for chunk in (128, 256):
        for refresh in (0.1, 0.0):
            name = f"gated.05x1.3>.03,us{us},chunk{chunk}" + (",refresh0" if refresh == 0 else "")
            CONFIGS.setdefault(name, ({"uniform_share": us, "selection_size": chunk,
                                       "refresh_share": refresh}, GATED))

CONFIGS["est.05x1.3,us0.0,chunk128,refresh0"] = (
    {"uniform_share": 0.0, "selection_size": 128, "refresh_share": 0.0},
    ("estimate", (0.05, 1.3), "drop"))
CONFIGS["est.02x2,us0.0,chunk128,refresh0"] = (
    {"uniform_share": 0.0, "selection_size": 128, "refresh_share": 0.0},
    ("estimate", (0.02, 2.0), "drop"))
CONFIGS["ratio.05x1.3>.5,us0.0,chunk128,refresh0"] = (
    {"uniform_share": 0.0, "selection_size": 128, "refresh_share": 0.0},
    ("ratio", (0.05, 1.3, 0.5), "drop"))
CONFIGS["ratio.02x2>.4,us0.0,chunk128,refresh0"] = (
    {"uniform_share": 0.0, "selection_size": 128, "refresh_share": 0.0},
    ("ratio", (0.02, 2.0, 0.4), "drop"))
RATIO = ("ratio", (0.05, 1.3, 0.5), "drop")
for extra, tag in (({"refit_every": 2}, "R2"), ({"warm_start_epochs": 2}, "warm2"),
                   ({"refit_every": 3}, "R3")):
    CONFIGS[f"ratio.05x1.3>.5,us0.0,chunk128,refresh0,{tag}"] = (
        {"uniform_share": 0.0, "selection_size": 128, "refresh_share": 0.0, **extra}, RATIO)
CONFIGS["gated.05x1.3>.015,us0.0,chunk128,refresh0"] = (
    {"uniform_share": 0.0, "selection_size": 128, "refresh_share": 0.0},
    ("gated", (0.05, 1.3, 0.015), "drop"))


def factory_for(guard):
    def factory(strategy, n_samples, *, fraction, seed, config, total_samples=None):
        if strategy != "graft" or guard is None:
            return make_batch_sampler(strategy, n_samples, fraction=fraction, seed=seed,
                                      config=config, total_samples=total_samples)
        rule, value, mode = guard
        selector = guarded(rule, value, mode)(
            fraction, basis=config.basis, n_components=config.n_components,
            uniform_share=config.uniform_share, random_state=seed)
        return GraftBatchSampler(
            n_samples, config.batch_size, fraction=fraction,
            selection_size=config.selection_size, refit_every=config.refit_every,
            warm_start_epochs=config.warm_start_epochs, selector=selector,
            refresh_share=config.refresh_share, seed=seed)
    return factory


def load_baselines(base, warm, seeds, name):
    path = os.path.join(HERE, "figures", f"noise_guard_baselines_{name}_w{warm}.json")
    cached = {}
    if os.path.exists(path):
        with open(path) as f:
            cached = {tuple(json.loads(k)): v for k, v in json.load(f).items()}
    missing = [s for s in seeds if not all((b, fr, s) in cached for b in BASELINES
                                           for fr in base.fractions)]
    if missing:
        config = replace(base, warm_start_epochs=warm, seeds=tuple(missing),
                         strategies=BASELINES)
        for r in run_demo(config, progress=False)["runs"]:
            cached[(r["strategy"], r["fraction"], r["seed"])] = r["test_accuracy"]
        with open(path, "w") as f:
            json.dump({json.dumps(list(k)): v for k, v in cached.items()}, f, indent=0)
    return cached


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="mnist1d")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--only", nargs="+", default=list(CONFIGS))
    parser.add_argument("--label-noise", type=float, default=None,
                        help="noisy_digits with this share of wrong labels instead of 0.15 "
                             "(logged as noisy_digits_ln<share>)")
    args = parser.parse_args()
    name = args.dataset
    if args.label_noise is not None:
        if args.dataset != "noisy_digits":
            parser.error("--label-noise applies to noisy_digits only")
        from graft_select.datasets import make_noisy_digits
        from graft_select.demo import harness

        harness.load_data = lambda config: make_noisy_digits(label_noise=args.label_noise,
                                                             random_state=0)
        name = f"noisy_digits_ln{args.label_noise:g}"
    seeds = tuple(range(args.first_seed, args.first_seed + args.seeds))
    base = DemoConfig(dataset=args.dataset, seeds=seeds, threads=1)
    log = os.path.join(HERE, "figures", f"noise_guard_{name}.jsonl")
    for label in args.only:
        overrides, guard = CONFIGS[label]
        config = replace(base, strategies=("graft",), **overrides)
        reference = load_baselines(base, config.warm_start_epochs, seeds, name)
        STATS.clear()
        NU.clear()
        start = time.perf_counter()
        result = run_demo(config, progress=False, sampler_factory=factory_for(guard))
        seconds = time.perf_counter() - start
        flagged = (sum(f for _, f in STATS) / max(1, sum(n for n, _ in STATS))) if STATS else 0.0
        for fraction in config.fractions:
            runs = [r for r in result["runs"] if r["fraction"] == fraction]
            acc = np.array([100 * r["test_accuracy"] for r in runs])
            minus = {}
            for b in BASELINES:
                d = acc - np.array([100 * reference[(b, fraction, r["seed"])] for r in runs])
                minus[b] = [round(float(d.mean()), 3), round(float(d.std()), 3)]
            line = {"config": label, "dataset": name, "fraction": fraction,
                    "seeds": list(seeds), "acc": round(float(acc.mean()), 3),
                    "acc_std": round(float(acc.std()), 3),
                    "acc_per_seed": [round(float(a), 2) for a in acc], "minus": minus,
                    "flagged_share": round(flagged, 4),
                    "nu_range": [round(min(NU), 4), round(max(NU), 4)] if NU else None,
                    "samples": int(np.mean([r["samples_seen"] for r in runs])),
                    "selection_share": round(float(np.mean(
                        [r["selection_seconds"] / r["wall_seconds"] for r in runs])), 3),
                    "seconds": round(seconds, 1)}
            print(json.dumps(line), flush=True)
            with open(log, "a") as f:
                f.write(json.dumps(line) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
