"""Paired differences with 95% t-intervals over seeds, the win/tie/loss table, the figure.

For a task, a fraction and a baseline, the difference of seed ``s`` is GRAFT's score
minus the baseline's, both trained from seed ``s`` (same initial weights, same
data). Over ``n`` seeds the interval is ``mean +- t(0.975, n - 1) * sd / sqrt(n)``
(``sd`` with ``n - 1`` in the denominator). A comparison is a *win* when the whole
interval is above 0, a *loss* when it is below 0, a *tie* otherwise; with one seed
there is no interval (*n/a*).
"""

import math

import numpy as np
from scipy import stats as scipy_stats

__all__ = ["COMPARISONS", "figure", "markdown_table", "paired_interval", "static_table",
           "summarize", "verdict"]

# (column name, GRAFT's strategy, the baseline's strategy)
COMPARISONS = (
    ("vs uniform", "graft", "uniform"),
    ("vs budget-matched full", "graft", "budget"),
    ("vs RS2", "graft", "rs2"),
    ("vs InfoBatch", "graft", "infobatch"),
    ("static: GraftSelector vs uniform", "static_graft", "static_uniform"),
)


def paired_interval(a, b, confidence=0.95):
    """Mean of ``a - b`` (paired by position) and its two-sided t-interval.

    Returns ``(mean, low, high, n)``; ``low`` and ``high`` are NaN for fewer than
    two pairs.
    """
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    n = len(d)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    mean = float(d.mean())
    if n < 2:
        return mean, math.nan, math.nan, n
    half = float(scipy_stats.t.ppf(0.5 + confidence / 2, n - 1) * d.std(ddof=1) / math.sqrt(n))
    return mean, mean - half, mean + half, n


def verdict(low, high):
    """"win" (interval above 0), "loss" (below 0), "tie", or "n/a" without an interval."""
    if math.isnan(low) or math.isnan(high):
        return "n/a"
    if low > 0:
        return "win"
    if high < 0:
        return "loss"
    return "tie"


def _scores(runs, strategy, fraction):
    return {r["seed"]: r for r in runs if r["strategy"] == strategy and r["fraction"] == fraction}


def summarize(task_result, fraction):
    """One row of the table: GRAFT's score, each comparison and GRAFT's cost figures."""
    runs = task_result["runs"]
    row = {"task": task_result["task"], "kind": task_result["kind"], "fraction": fraction,
           "comparisons": {}}
    graft = _scores(runs, "graft", fraction)
    if graft:
        scores = [r["score"] for r in graft.values()]
        row["graft_score"] = (float(np.mean(scores)),
                              float(np.std(scores, ddof=1)) if len(scores) > 1 else math.nan)
        row["selection_share"] = float(np.mean([
            (r["selection_seconds"] + r["observe_seconds"]) / r["wall_seconds"]
            for r in graft.values()]))
        budget = _scores(runs, "budget", fraction)
        paired = [s for s in graft if s in budget]
        row["time_ratio"] = (float(np.mean([graft[s]["wall_seconds"] / budget[s]["wall_seconds"]
                                            for s in paired])) if paired else math.nan)
    for name, ours, theirs in COMPARISONS:
        a, b = _scores(runs, ours, fraction), _scores(runs, theirs, fraction)
        seeds = sorted(set(a) & set(b))
        if seeds:
            mean, low, high, n = paired_interval([a[s]["score"] for s in seeds],
                                                 [b[s]["score"] for s in seeds])
            row["comparisons"][name] = {"mean": mean, "low": low, "high": high, "n": n,
                                        "verdict": verdict(low, high)}
    return row


def _cell(comparison):
    if comparison is None:
        return "-"
    if comparison["verdict"] == "n/a":
        return f"{comparison['mean']:+.2f} (1 seed)"
    mark = {"win": "**win**", "loss": "**loss**", "tie": "tie"}[comparison["verdict"]]
    return (f"{comparison['mean']:+.2f} [{comparison['low']:+.2f}, "
            f"{comparison['high']:+.2f}] {mark}")


def markdown_table(results, fractions):
    """The win/tie/loss table (markdown) of the task results, and the tally per column."""
    names = [name for name, _, _ in COMPARISONS]
    header = ("| task | kind | f | GRAFT score | " + " | ".join(names)
              + " | selection share | GRAFT time / budget's |")
    lines = [header, "|" + "---|" * (len(names) + 6)]
    tally = {name: {"win": 0, "tie": 0, "loss": 0, "n/a": 0} for name in names}
    for result in results:
        for fraction in fractions:
            row = summarize(result, fraction)
            if "unsupported" in result and "graft_score" not in row:
                cells = ["not supported on this commit (see below)"] + [
                    _cell(row["comparisons"].get(name)) if name.startswith("static")
                    else "-" for name in names[1:]] + ["-", "-"]
                lines.append(f"| {result['task']} | {result['kind']} | {fraction:g} | - | "
                             + " | ".join(cells) + " |")
                _count(tally, row)
                continue
            if "graft_score" not in row and not row["comparisons"]:
                continue
            mean, sd = row.get("graft_score", (math.nan, math.nan))
            cells = [_cell(row["comparisons"].get(name)) for name in names]
            share = row.get("selection_share", math.nan)
            lines.append(
                f"| {result['task']} | {result['kind']} | {fraction:g} | "
                f"{mean:.2f} +- {sd:.2f} | " + " | ".join(cells)
                + f" | {100 * share:.1f}% | {row.get('time_ratio', math.nan):.2f}x |")
            _count(tally, row)
    totals = ["| win / tie / loss | | | | " + " | ".join(
        f"{t['win']} / {t['tie']} / {t['loss']}" for t in tally.values()) + " | | |"]
    notes = [f"\n{r['task']}: {r['unsupported']}." for r in results if "unsupported" in r]
    return "\n".join(lines + totals + notes), tally


def static_table(results, fractions):
    """Markdown: the static use's subset size, the share of its chunks that kept
    MaxVol's picks (0: GRAFT's subset is a uniform one) and the share of its rows that
    the warm model misclassifies, GRAFT's picks against the uniform ones."""
    lines = ["| task | f | rows picked | chunks keeping MaxVol's picks | "
             "warm model wrong on GRAFT's picks | on uniform picks |",
             "|---|---|---|---|---|---|"]
    for result in results:
        for fraction in fractions:
            shares = {}
            for strategy in ("static_graft", "static_uniform"):
                values = [r["warm_wrong_share"] for r in result["runs"]
                          if r["strategy"] == strategy and r["fraction"] == fraction
                          and r.get("warm_wrong_share") is not None]
                shares[strategy] = float(np.mean(values)) if values else None
            graft = [r for r in result["runs"]
                     if r["strategy"] == "static_graft" and r["fraction"] == fraction]
            if not graft:
                continue
            maxvol = [r["maxvol_share"] for r in graft if r.get("maxvol_share") is not None]
            cells = [_percent(float(np.mean(maxvol)) if maxvol else None),
                     _percent(shares["static_graft"]), _percent(shares["static_uniform"])]
            lines.append(f"| {result['task']} | {fraction:g} | "
                         f"{int(np.mean([r['n_selected'] for r in graft]))} of "
                         f"{result['n_train']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _percent(share):
    return "-" if share is None else f"{100 * share:.0f}%"


def _count(tally, row):
    for name, comparison in row["comparisons"].items():
        tally[name][comparison["verdict"]] += 1


def figure(results, fractions, path, title):
    """Forest plot: each comparison's paired mean and 95% interval per task and fraction,
    and GRAFT's selection share; saved to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [r["task"] for r in results]
    fig, axes = plt.subplots(1, len(fractions) + 1, figsize=(5 * len(fractions) + 4, 0.5
                             * len(tasks) + 2.5), sharey=True,
                             gridspec_kw={"width_ratios": [3] * len(fractions) + [1.4]})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, fraction in zip(axes, fractions):
        rows = [summarize(r, fraction) for r in results]
        for k, (name, _, _) in enumerate(COMPARISONS):
            offset = (k - (len(COMPARISONS) - 1) / 2) * 0.15
            for i, row in enumerate(rows):
                c = row["comparisons"].get(name)
                if c is None:
                    continue
                low, high = (c["low"], c["high"]) if c["n"] > 1 else (c["mean"], c["mean"])
                ax.errorbar(c["mean"], i + offset, xerr=[[c["mean"] - low], [high - c["mean"]]],
                            fmt="o", ms=4, color=colors[k], label=name if i == 0 else None)
        ax.axvline(0.0, color="black", lw=0.8)
        ax.set_title(f"fraction {fraction:g}: GRAFT minus baseline")
        ax.set_xlabel("score points (accuracy or R^2, %)")
    axes[0].set_yticks(range(len(tasks)), tasks)
    axes[0].invert_yaxis()
    axes[0].legend(fontsize=7, loc="lower left")
    share_ax = axes[-1]
    for j, fraction in enumerate(fractions):
        shares = [100 * summarize(r, fraction).get("selection_share", math.nan)
                  for r in results]
        share_ax.barh(np.arange(len(tasks)) + (j - 0.5) * 0.35, shares, height=0.35,
                      label=f"f={fraction:g}")
    share_ax.set_title("GRAFT's selection share")
    share_ax.set_xlabel("% of its training wall-clock")
    share_ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
