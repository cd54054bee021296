"""The demo's plot: accuracy against samples seen and against cost, GRAFT on top.

Two panels share the y-axis (test accuracy, mean over seeds, bars: +- std over
seeds). Every strategy's points are joined in the order of the panel's x-axis, so
the cost panel reads left to right in cost. GRAFT is drawn last, thicker. The
y-range is fitted to the points that matter: a group whose mean lies far outside
the others (for example full data for GRAFT's time on a machine whose clock was
disturbed) is drawn as a triangle on the edge, labelled with its value.
"""

import numpy as np

__all__ = ["COLORS", "LABELS", "plot_results", "y_band"]

LABELS = {
    "full": "full data, all epochs", "budget": "full data, budget-matched",
    "rs2": "RS2 (without replacement)", "infobatch": "InfoBatch", "uniform": "uniform subsets",
    "graft": "GRAFT", "budget_wall": "full data for GRAFT's cost",
}
COLORS = {"full": "black", "budget": "tab:green", "rs2": "tab:purple",
          "infobatch": "tab:red", "uniform": "tab:blue", "graft": "tab:orange",
          "budget_wall": "tab:olive"}
_DRAW_ORDER = ("full", "infobatch", "rs2", "uniform", "budget_wall", "budget", "graft")
_MARKERS = ("o", "s", "^", "D", "v", "P")
_PANELS = (("samples_seen", "samples seen", "accuracy at equal samples"),
           ("cost_seconds", "cost s: min(training wall-clock, process CPU time)",
            "accuracy at equal cost"))


def y_band(rows):
    """The (low, high) test-accuracy range that shows every group but the outliers.

    Outliers are groups whose mean lies more than 3 interquartile ranges (at least
    1 point) outside the quartiles of all the means; the band covers the others'
    means +- std, with a margin.
    """
    means = np.array([r["test_accuracy_mean"] for r in rows])
    stds = np.array([r["test_accuracy_std"] for r in rows])
    q1, q3 = np.percentile(means, [25, 75])
    reach = 3 * max(q3 - q1, 1.0)
    kept = (means >= q1 - reach) & (means <= q3 + reach)
    low = max(float(np.min(means[kept] - stds[kept])), q1 - reach)
    high = min(float(np.max(means[kept] + stds[kept])), q3 + reach)
    margin = max(0.08 * (high - low), 0.2)
    return low - margin, min(high + margin, 100.5)


def _draw(ax, strategy, rows, key, band, fractions):
    """One strategy's points and line on one panel; returns whether a point was clipped."""
    rows = sorted(rows, key=lambda r: r[key])
    graft = strategy == "graft"
    color, zorder = COLORS.get(strategy), 4 if graft else 2
    low, high = band
    inside = [(r[key], r["test_accuracy_mean"]) for r in rows
              if low <= r["test_accuracy_mean"] <= high]
    if len(inside) > 1:
        ax.plot(*zip(*inside), color=color, linewidth=2.8 if graft else 1.2,
                alpha=1.0 if graft else 0.6, zorder=zorder)
    clipped = False
    for r in rows:
        marker = _MARKERS[fractions.index(r["fraction"]) % len(_MARKERS)]
        mean = r["test_accuracy_mean"]
        if low <= mean <= high:
            ax.errorbar(r[key], mean, yerr=r["test_accuracy_std"], color=color, marker=marker,
                        markersize=8 if graft else 6, capsize=3, zorder=zorder + 1,
                        markeredgecolor="black" if graft else color)
            continue
        clipped = True
        edge = low + 0.02 * (high - low) if mean < low else high - 0.02 * (high - low)
        ax.plot(r[key], edge, marker="v" if mean < low else "^", color=color,
                markersize=9, zorder=zorder + 1)
        ax.annotate(f"{mean:.1f} +- {r['test_accuracy_std']:.1f}", (r[key], edge),
                    textcoords="offset points", xytext=(6, 4 if mean < low else -10),
                    fontsize="small", color=color)
    return clipped


def _legend(ax, by_strategy, fractions, clipped):
    from matplotlib.lines import Line2D

    handles = []
    for strategy in reversed([s for s in _DRAW_ORDER if s in by_strategy]):
        one = len(by_strategy[strategy]) == 1
        label = LABELS.get(strategy, strategy) + (" (one point)" if one else "")
        handles.append(Line2D([], [], color=COLORS.get(strategy), marker="o",
                              linestyle="none" if one else "-",
                              linewidth=2.8 if strategy == "graft" else 1.2, label=label))
    present = {r["fraction"] for rows in by_strategy.values() for r in rows}
    for fraction, marker in zip(fractions, _MARKERS):
        if fraction not in present:
            continue
        label = ("all epochs (fraction 1)" if fraction >= 1.0 else f"fraction {fraction:g}")
        handles.append(Line2D([], [], color="gray", marker=marker, linestyle="none",
                              label=label))
    if clipped:
        handles.append(Line2D([], [], color="gray", marker="v", linestyle="none",
                              label="off the scale: value written next to it"))
    ax.legend(handles=handles, loc="lower right", fontsize="small")


def _caption(result):
    n_seeds = len(result["config"]["seeds"])
    text = (f"Each point: one strategy at one subset fraction, mean test accuracy over "
            f"{n_seeds} seed(s); error bars: +- std over seeds. Lines join a strategy's "
            f"points left to right. GRAFT drawn last, thick.")
    if any(r["fraction"] >= 1.0 for r in result["summary"]):
        text += (" Fraction 1: all epochs on full data, native InfoBatch, and full data at "
                 "InfoBatch's samples.")
    return text


def plot_results(result, path):
    """Write the demo's two-panel figure (accuracy against samples and against cost)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 5.6), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    fractions = (1.0, *result["config"]["fractions"])
    by_strategy = {}
    for row in result["summary"]:
        by_strategy.setdefault(row["strategy"], []).append(row)
    band = y_band(result["summary"])
    clipped = False
    for ax, (key, xlabel, title) in zip(axes, _PANELS):
        for strategy in [s for s in _DRAW_ORDER if s in by_strategy]:
            clipped |= _draw(ax, strategy, by_strategy[strategy], key, band, fractions)
        ax.set(xlabel=xlabel, title=title, ylim=band)
        ax.grid(alpha=0.3)
    axes[0].xaxis.set_major_formatter(lambda value, _: f"{value / 1000:,.0f}k")
    axes[0].set_ylabel("test accuracy (%), mean +- std over seeds")
    _legend(axes[1], by_strategy, fractions, clipped)
    title = (f"graft-select demo: {result['dataset']['name']}, "
             f"{len(result['config']['seeds'])} seed(s)")
    if result["config"].get("quick"):
        title = "SMOKE TEST (--quick), accuracies mean nothing: " + title
    fig.suptitle(title, color="tab:red" if result["config"].get("quick") else "black")
    fig.text(0.5, -0.01, _caption(result), ha="center", va="top", fontsize="small",
             wrap=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
