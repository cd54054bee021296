"""Issue 23: merge-and-reduce (``chunk_size=None``) against per-chunk and one-chunk selection.

    OMP_NUM_THREADS=1 python benchmarks/bench_hierarchy.py coverage   # prototypes, memory + dask
    OMP_NUM_THREADS=1 python benchmarks/bench_hierarchy.py sweep      # CANDIDATE_SHARE x FAN_IN
    OMP_NUM_THREADS=1 python benchmarks/bench_hierarchy.py volume     # log-volume vs one chunk
    OMP_NUM_THREADS=1 python benchmarks/bench_hierarchy.py sorted     # the same, rows sorted
    OMP_NUM_THREADS=1 python benchmarks/bench_hierarchy.py scaling    # fit time vs rows
    OMP_NUM_THREADS=1 python benchmarks/bench_hierarchy.py memory N   # dask peak memory, N rows

Every section prints the date, the load average and the thread settings with its figures.
The prototype data: 40 well-separated prototypes (centres 10 * N(0, I) in 32 dimensions,
rows at distance 0.05), counts Zipf(1.3) (every prototype at least one row), rows shuffled.
"""

import os
import sys
import time

import numpy as np

from graft_select import GraftSelector, _hierarchy

D_PROTO = 32


def header(name):
    load = os.getloadavg()
    threads = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    print(f"== {name}  {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  "
          f"load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}  threads {threads}", flush=True)


def prototypes(n, n_prototypes=40, d=D_PROTO, seed=0):
    """Rows near 40 well-separated prototypes with Zipf(1.3) counts; (X, labels)."""
    rng = np.random.default_rng(seed)
    centers = 10 * rng.standard_normal((n_prototypes, d))
    share = 1.0 / np.arange(1, n_prototypes + 1) ** 1.3
    counts = rng.multinomial(n - n_prototypes, share / share.sum()) + 1
    labels = rng.permutation(np.repeat(np.arange(n_prototypes), counts))
    return centers[labels] + 0.05 * rng.standard_normal((n, d)), labels


def low_rank(n, d=64, seed=1):
    """Gaussian rows of rank 12 plus small isotropic noise."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, 12)) @ rng.standard_normal((12, d))
            + 0.1 * rng.standard_normal((n, d)))


def heavy_tailed(n, d=48, seed=2):
    """Student-t (3 degrees of freedom) rows with decaying column scales."""
    rng = np.random.default_rng(seed)
    return rng.standard_t(3, size=(n, d)) * np.linspace(3.0, 0.1, d)


def covered(labels, indices):
    return np.unique(labels[np.asarray(indices)]).size / 40


def timed_fit(X, **params):
    start = time.perf_counter()
    selector = GraftSelector(random_state=0, **params).fit(X)
    return selector, time.perf_counter() - start


def log_volume(X, indices, r):
    """Log-volume of the rows ``indices`` of X's top-r left singular vectors."""
    U = np.linalg.svd(X, full_matrices=False)[0][:, :r]
    s = np.linalg.svd(U[np.asarray(indices)], compute_uv=False)
    return float(np.sum(np.log(s)))


def uniform_coverage(labels, fraction, seeds=20):
    n = labels.size
    k = max(1, round(fraction * n))
    return np.mean([covered(labels, np.random.default_rng(s).choice(n, k, replace=False))
                    for s in range(seeds)])


def coverage(sizes=((6000, 0.01), (200_000, 0.001))):
    header("coverage of 40 prototypes")
    import dask.array as da
    import distributed

    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1,
                                       dashboard_address=None)
    client = distributed.Client(cluster)
    for n, fraction in sizes:
        X, labels = prototypes(n)
        tree, t_tree = timed_fit(X, fraction=fraction)
        chunked, t_chunked = timed_fit(X, fraction=fraction, chunk_size=4096)
        Xd = da.from_array(X, chunks=(50_000, -1))
        lazy, t_lazy = timed_fit(Xd, fraction=fraction)
        same = np.array_equal(lazy.sample_indices_, tree.sample_indices_)
        print(f"n={n} fraction={fraction} groups={len(tree.chunk_sizes_)}: default (tree) "
              f"{covered(labels, tree.sample_indices_):.3f} ({t_tree:.1f} s), dask 2 workers "
              f"{covered(labels, lazy.sample_indices_):.3f} ({t_lazy:.1f} s, equal to memory: "
              f"{same}), chunks of 4096 {covered(labels, chunked.sample_indices_):.3f} "
              f"({t_chunked:.1f} s), uniform (20 seeds) "
              f"{uniform_coverage(labels, fraction):.3f}", flush=True)
        if n <= 20_000:
            one, t_one = timed_fit(X, fraction=fraction, chunk_size=n)
            print(f"   one chunk {covered(labels, one.sample_indices_):.3f} ({t_one:.1f} s)")
        # the per-chunk selections of the table; -(-n // 4096) chunks of equal size
        # was the default before the tree
        old_default = -(-n // -(-n // 4096))
        for chunk_size in sorted({old_default, 1024, 256}, reverse=True):
            sel, t = timed_fit(X, fraction=fraction, chunk_size=chunk_size)
            print(f"   per chunk of {chunk_size} rows: {covered(labels, sel.sample_indices_):.3f}"
                  f" ({t:.1f} s)", flush=True)
    client.close()
    cluster.close()


def sweep():
    """Coverage, log-volume (vs one chunk) and time per CANDIDATE_SHARE x FAN_IN."""
    cases = [("prototypes", prototypes(6000)[0], prototypes(6000)[1], 0.01),
             ("prototypes", prototypes(20_000)[0], prototypes(20_000)[1], 0.003),
             ("low rank + noise", low_rank(20_000), None, 0.005),
             ("heavy tailed", heavy_tailed(20_000), None, 0.005)]
    defaults = (_hierarchy.CANDIDATE_SHARE, _hierarchy.FAN_IN)
    for name, X, labels, fraction in cases:
        n = X.shape[0]
        header(f"CANDIDATE_SHARE x FAN_IN, {name} n={n} fraction={fraction}")
        one, t_one = timed_fit(X, fraction=fraction, chunk_size=n)
        r = min(X.shape[1], int(one.subset_sizes_[0]))
        v_one = log_volume(X, one.sample_indices_, r)
        cover = "" if labels is None else f"coverage {covered(labels, one.sample_indices_):.3f}, "
        print(f"one chunk: {cover}log-volume {v_one:.2f}, {t_one:.2f} s", flush=True)
        for share in (1.0, 1.5, 2.0, 3.0):
            for fan_in in (4, 8, 16):
                _hierarchy.CANDIDATE_SHARE, _hierarchy.FAN_IN = share, fan_in
                tree, t = timed_fit(X, fraction=fraction)
                v = log_volume(X, tree.sample_indices_, r)
                cover = ("" if labels is None else
                         f"coverage {covered(labels, tree.sample_indices_):.3f}, ")
                print(f"share {share} fan-in {fan_in} (groups {len(tree.chunk_sizes_)}): "
                      f"{cover}log-volume {v:.2f} (rel. diff {abs(v - v_one) / abs(v_one):.3f}),"
                      f" {t:.2f} s ({t / t_one:.2f} x one chunk)", flush=True)
    _hierarchy.CANDIDATE_SHARE, _hierarchy.FAN_IN = defaults


def volume(n=20_000, fractions=(0.005, 0.01, 0.05)):
    header(f"log-volume of the default vs one chunk, n={n}")
    kinds = {"prototypes": prototypes(n)[0], "low rank + noise": low_rank(n),
             "heavy tailed": heavy_tailed(n)}
    for name, X in kinds.items():
        for fraction in fractions:
            one, t_one = timed_fit(X, fraction=fraction, chunk_size=n)
            tree, t = timed_fit(X, fraction=fraction)
            chunked, _ = timed_fit(X, fraction=fraction, chunk_size=4096)
            r = min(X.shape[1], 256, int(one.subset_sizes_[0]))
            v_one = log_volume(X, one.sample_indices_, r)
            v = log_volume(X, tree.sample_indices_, r)
            v_chunk = log_volume(X, chunked.sample_indices_, r)
            print(f"{name} fraction={fraction} (groups {len(tree.chunk_sizes_)}): one chunk "
                  f"{v_one:.2f} ({t_one:.1f} s), default {v:.2f} ({t:.1f} s; rel. diff "
                  f"{abs(v - v_one) / abs(v_one):.3f}), chunks of 4096 {v_chunk:.2f} "
                  f"(rel. diff {abs(v_chunk - v_one) / abs(v_one):.3f})", flush=True)


def sorted_rows(fractions=(0.005, 0.01)):
    """Coverage and log-volume when the data's order gathers the rare rows in a few leaves.

    Prototypes sorted by prototype (the rarest last) and by row norm; heavy-tailed
    and low-rank rows sorted by norm (the largest rows, which MaxVol wants, all
    in the last leaves), also with 4 columns, where the budget (200) is far above
    the rank (4), and a generated table sorted by norm and by a column. A node
    keeps the group's rank plus twice its share of the candidates, by rows or by
    mass (norms to the 8th power), whichever is larger
    (`_hierarchy.node_candidates`): this is where a share of the rows alone falls
    short.
    """
    header("sorted rows: coverage and log-volume of the default vs one chunk")
    for n, fraction in ((6000, 0.01), (50_000, 0.002), (200_000, 0.001)):
        X, labels = prototypes(n)
        for key_name, key in (("prototype", labels), ("row norm", np.linalg.norm(X, axis=1))):
            index = np.argsort(key, kind="stable")
            tree, t = timed_fit(X[index], fraction=fraction)
            print(f"prototypes n={n} fraction={fraction} sorted by {key_name}: coverage "
                  f"{covered(labels[index], tree.sample_indices_):.3f} ({t:.1f} s)", flush=True)
    from sklearn.datasets import make_classification

    rng = np.random.default_rng(3)
    few_columns = rng.standard_t(3, (100_000, 4)) * np.array([1, 0.5, 0.3, 0.2])
    table = make_classification(100_000, 8, n_informative=4, n_redundant=0, n_classes=4,
                                random_state=0)[0]
    for name, X, key, fracs in (
            ("heavy tailed", heavy_tailed(20_000), "row norm", fractions),
            ("low rank + noise", low_rank(20_000), "row norm", fractions),
            ("heavy tailed, 4 columns, 100,000 rows", few_columns, "row norm", (0.002,)),
            ("make_classification 100,000 x 8", table, "row norm", (0.002,)),
            ("make_classification 100,000 x 8", table, "column 0", (0.002,))):
        values = np.linalg.norm(X, axis=1) if key == "row norm" else X[:, 0]
        X = X[np.argsort(values, kind="stable")]
        for fraction in fracs:
            one, t_one = timed_fit(X, fraction=fraction, chunk_size=X.shape[0])
            tree, t = timed_fit(X, fraction=fraction)
            r = min(X.shape[1], 256, int(one.subset_sizes_[0]))
            v_one = log_volume(X, one.sample_indices_, r)
            v = log_volume(X, tree.sample_indices_, r)
            print(f"{name} sorted by {key}, fraction={fraction}: one chunk {v_one:.2f} "
                  f"({t_one:.1f} s), default {v:.2f} ({t:.1f} s; rel. diff "
                  f"{abs(v - v_one) / abs(v_one):.3f})", flush=True)


def scaling(sizes=(50_000, 100_000, 200_000, 400_000, 800_000, 2_000_000),
            fractions=(0.01, 0.001), d=64):
    header(f"fit time vs rows, d={d}")
    rng = np.random.default_rng(0)
    X_all = rng.standard_normal((max(sizes), d))
    for fraction in fractions:
        times = []
        for n in sizes:
            sel, t = timed_fit(X_all[:n], fraction=fraction)
            times.append(t)
            print(f"fraction={fraction} n={n}: {t:.1f} s (groups {len(sel.chunk_sizes_)})",
                  flush=True)
        slope = np.polyfit(np.log(sizes), np.log(times), 1)[0]
        print(f"fraction={fraction}: fitted exponent {slope:.3f} over {sizes}", flush=True)


def memory(n=20_000_000, d=64, fraction=0.001, block=250_000):
    header(f"dask peak memory per worker, {n} x {d}, fraction={fraction}")
    import dask.array as da
    import distributed

    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1,
                                       memory_limit="3GB", dashboard_address=None)
    client = distributed.Client(cluster)
    X = da.random.RandomState(0).standard_normal((n, d), chunks=(block, d))
    peaks = {}

    def sample():
        import psutil

        return psutil.Process().memory_info().rss

    start = time.perf_counter()
    future = client.submit(lambda: None)  # warm up
    future.result()
    import threading

    stop = threading.Event()

    def watch():
        while not stop.is_set():
            for worker, rss in client.run(sample).items():
                peaks[worker] = max(peaks.get(worker, 0), rss)
            time.sleep(0.5)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    sel = GraftSelector(fraction, random_state=0).fit(X)
    stop.set()
    thread.join()
    elapsed = time.perf_counter() - start
    print(f"{n} rows: {elapsed:.0f} s, {sel.sample_indices_.size} rows in "
          f"{len(sel.chunk_sizes_)} groups; peak RSS per worker (GB): "
          f"{[round(v / 1e9, 3) for v in peaks.values()]}", flush=True)
    client.close()
    cluster.close()


if __name__ == "__main__":
    section = sys.argv[1] if len(sys.argv) > 1 else "coverage"
    args = [int(a) for a in sys.argv[2:]]
    {"coverage": coverage, "sweep": sweep, "volume": volume, "scaling": scaling,
     "memory": memory, "sorted": sorted_rows}[section](*args)
