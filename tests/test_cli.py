"""The graft-select command line: select, demo, errors and python -m graft_select."""

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest

from graft_select.cli import main

N, D = 200, 6


@pytest.fixture
def X():
    return np.random.default_rng(0).normal(size=(N, D))


def _write_csv(path, X, header=None):
    lines = [] if header is None else [",".join(header)]
    lines += [",".join(f"{v:.6f}" for v in row) for row in X]
    path.write_text("\n".join(lines) + "\n")
    return path


def _read_txt(path):
    return np.array([int(line) for line in path.read_text().split()])


def _check_selection(indices, n=N, fraction=0.25):
    assert indices.size == round(fraction * n)
    assert len(set(indices.tolist())) == indices.size
    assert indices.min() >= 0 and indices.max() < n


def _assert_one_line_error(capsys, code, match=None):
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("graft-select: error:")
    assert "Traceback" not in captured.err
    if match is not None:
        assert match in lines[0], lines[0]
    return lines[0]


class TestSelect:
    def test_paths_the_system_refuses(self, tmp_path, X, capsys):
        """A path too long for the file system is a one-line error, as a missing file is
        (FEATURES and --output printed a traceback)."""
        np.save(tmp_path / "X.npy", X)
        long = "a" * 300 + ".npy"
        _assert_one_line_error(capsys, main(["select", str(tmp_path / long), "--fraction",
                                             "0.25", "--output", str(tmp_path / "o.npy")]),
                               "cannot read FEATURES file")
        _assert_one_line_error(capsys, main(["select", str(tmp_path / "X.npy"), "--fraction",
                                             "0.25", "--output", str(tmp_path / long)]),
                               "cannot write --output")

    def test_npy_to_npy(self, tmp_path, X, capsys):
        """Features from .npy, indices to .npy, one summary line on stdout."""
        np.save(tmp_path / "X.npy", X)
        out = tmp_path / "idx.npy"
        code = main(["select", str(tmp_path / "X.npy"), "--fraction", "0.25",
                     "--output", str(out)])
        assert code == 0
        indices = np.load(out)
        assert indices.dtype == np.int64
        _check_selection(indices)
        stdout = capsys.readouterr().out.strip().splitlines()
        assert len(stdout) == 1 and stdout[0].startswith(f"selected 50 of {N} rows")

    @pytest.mark.parametrize("indexed", [False, True])
    def test_numbered_first_line_is_refused(self, tmp_path, X, indexed, capsys):
        """A first line 0,1,...,k-1 (pandas' names for an array's columns, with or
        without its index column) is a header or data: the default rule refuses to
        guess (reading it as data shifted every index by one); --header or
        --no-header decides."""
        import pandas as pd

        path = tmp_path / "X.csv"
        pd.DataFrame(X).to_csv(path, index=indexed)
        args = ["select", str(path), "--fraction", "0.25", "--output",
                str(tmp_path / "idx.npy")]
        fix = "--header --index-column" if indexed else "--header"
        _assert_one_line_error(capsys, main(args), f"Pass {fix} to skip it, or --no-header")
        extra = ["--header", "--index-column"] if indexed else ["--header"]
        assert main([*args, *extra]) == 0
        np.save(tmp_path / "X.npy", X)
        main(["select", str(tmp_path / "X.npy"), "--fraction", "0.25",
              "--output", str(tmp_path / "ref.npy")])
        np.testing.assert_array_equal(np.load(tmp_path / "idx.npy"),
                                      np.load(tmp_path / "ref.npy"))

    def test_header_flag_reads_both_csv_files(self, tmp_path, X, capsys):
        """--header skips the first line of FEATURES and of --gradients alike: where only
        FEATURES has one, the gradients lose a row, and the row-count error says why."""
        features = _write_csv(tmp_path / "X.csv", X, [str(i) for i in range(D)])
        G = np.random.default_rng(1).normal(size=(N, 3))
        gradients = _write_csv(tmp_path / "G.csv", G)
        args = ["select", str(features), "--gradients", str(gradients), "--fraction", "0.25",
                "--output", str(tmp_path / "idx.npy"), "--header"]
        line = _assert_one_line_error(capsys, main(args),
                                      f"--gradients has {N - 1} rows but FEATURES has {N}")
        assert "--header applies to every CSV file read" in line
        _write_csv(gradients, G, ["g0", "g1", "g2"])  # both with a header row: fine
        assert main(args) == 0
        _check_selection(np.load(tmp_path / "idx.npy"))

    def test_one_column_starting_at_zero_is_data(self, tmp_path):
        """One column whose first value is 0 stays data under the default rule."""
        path = tmp_path / "x.csv"
        path.write_text("0\n" + "\n".join(str(v) for v in range(1, 40)) + "\n")
        out = tmp_path / "idx.txt"
        assert main(["select", str(path), "--fraction", "0.25", "--output", str(out)]) == 0
        assert _read_txt(out).size == 10

    def test_upper_case_npy_output_is_the_file_named(self, tmp_path, X):
        """--output rows.NPY writes rows.NPY, not rows.NPY.npy (np.save given a name adds
        ".npy"), so an input named X.NPY.npy is not replaced either."""
        np.save(tmp_path / "X.npy", X)
        out = tmp_path / "rows.NPY"
        assert main(["select", str(tmp_path / "X.npy"), "--fraction", "0.25",
                     "--output", str(out)]) == 0
        assert out.is_file() and not (tmp_path / "rows.NPY.npy").exists()
        _check_selection(np.load(out))
        features = tmp_path / "feat.NPY.npy"
        np.save(features, X)
        assert main(["select", str(features), "--fraction", "0.25",
                     "--output", str(tmp_path / "feat.NPY")]) == 0
        np.testing.assert_array_equal(np.load(features), X)

    def test_matches_graft_selector(self, tmp_path, X):
        """The indices are GraftSelector's sample_indices_ for the same parameters."""
        from graft_select import GraftSelector

        np.save(tmp_path / "X.npy", X)
        out = tmp_path / "idx.npy"
        main(["select", str(tmp_path / "X.npy"), "--fraction", "0.3", "--chunk-size", "64",
              "--n-components", "4", "--seed", "3", "--output", str(out)])
        expected = GraftSelector(0.3, n_components=4, chunk_size=64,
                                 random_state=3).fit(X).sample_indices_
        np.testing.assert_array_equal(np.load(out), expected)

    @pytest.mark.parametrize("header", [None, ["a", "b", "c", "d", "e", "f"]])
    def test_csv_to_txt(self, tmp_path, X, header):
        """A CSV with or without a header row gives the same selection, one index per line."""
        path = _write_csv(tmp_path / "X.csv", X, header)
        out = tmp_path / "idx.txt"
        assert main(["select", str(path), "--fraction", "0.25", "--output", str(out)]) == 0
        indices = _read_txt(out)
        _check_selection(indices)
        skip = 0 if header is None else 1
        np.save(tmp_path / "X.npy", np.loadtxt(path, delimiter=",", skiprows=skip))
        main(["select", str(tmp_path / "X.npy"), "--fraction", "0.25",
              "--output", str(tmp_path / "ref.npy")])
        np.testing.assert_array_equal(indices, np.load(tmp_path / "ref.npy"))

    def test_csv_output(self, tmp_path, X):
        """A .csv output also holds one index per line."""
        np.save(tmp_path / "X.npy", X)
        out = tmp_path / "idx.csv"
        assert main(["select", str(tmp_path / "X.npy"), "--fraction", "0.25",
                     "--output", str(out)]) == 0
        _check_selection(_read_txt(out))

    def test_npz_first_array_and_key(self, tmp_path, X):
        """An .npz gives its first array, or the one named by --key."""
        np.savez(tmp_path / "data.npz", features=X, other=X[:50])
        first, keyed = tmp_path / "a.npy", tmp_path / "b.npy"
        main(["select", str(tmp_path / "data.npz"), "--fraction", "0.25", "--output", str(first)])
        main(["select", str(tmp_path / "data.npz"), "--key", "other", "--fraction", "0.25",
              "--output", str(keyed)])
        _check_selection(np.load(first))
        _check_selection(np.load(keyed), n=50)

    def test_uniform_strategy(self, tmp_path, X, capsys):
        """--strategy uniform selects the same number of rows and says so."""
        np.save(tmp_path / "X.npy", X)
        out = tmp_path / "idx.npy"
        assert main(["select", str(tmp_path / "X.npy"), "--fraction", "0.25", "--strategy",
                     "uniform", "--output", str(out)]) == 0
        _check_selection(np.load(out))
        assert "strategy uniform" in capsys.readouterr().out

    def test_with_gradients(self, tmp_path, X):
        """--gradients passes per-sample gradient proxies to the selector."""
        np.save(tmp_path / "X.npy", X)
        np.save(tmp_path / "G.npy", np.random.default_rng(1).normal(size=(N, 12)))
        out = tmp_path / "idx.npy"
        assert main(["select", str(tmp_path / "X.npy"), "--gradients", str(tmp_path / "G.npy"),
                     "--fraction", "0.25", "--batch-size", "50", "--output", str(out)]) == 0
        indices = np.load(out)
        assert len(set(indices.tolist())) == indices.size and indices.max() < N


    def test_gradients_select_the_estimators_rows_without_weight_advice(self, tmp_path, X,
                                                                        capsys):
        """select writes indices only: it no longer forwards the estimator's warning about
        negative weight sums (advice on sample_weight_, which it never writes), and
        picks GraftSelector's rows."""
        G = np.random.default_rng(1).normal(size=(N, 12))
        np.save(tmp_path / "X.npy", X)
        np.save(tmp_path / "G.npy", G)
        out = tmp_path / "idx.npy"
        assert main(["select", str(tmp_path / "X.npy"), "--gradients", str(tmp_path / "G.npy"),
                     "--fraction", "0.25", "--chunk-size", "50", "--seed", "0",
                     "--output", str(out)]) == 0
        assert "sample_weight_" not in capsys.readouterr().err
        from graft_select import GraftSelector

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = GraftSelector(0.25, chunk_size=50, random_state=0).fit(X, gradients=G)
        np.testing.assert_array_equal(np.load(out), expected.sample_indices_)


class TestSelectErrors:
    def _select(self, tmp_path, features, *extra, output="idx.npy"):
        return main(["select", str(features), "--fraction", "0.25",
                     "--output", str(tmp_path / output), *extra])

    def test_missing_file(self, tmp_path, capsys):
        """A FEATURES file that does not exist."""
        code = self._select(tmp_path, tmp_path / "nope.npy")
        _assert_one_line_error(capsys, code, "does not exist")

    def test_unsupported_type(self, tmp_path, capsys):
        """A FEATURES file of another type."""
        (tmp_path / "X.json").write_text("[]")
        code = self._select(tmp_path, tmp_path / "X.json")
        _assert_one_line_error(capsys, code, "unsupported type")

    def test_non_numeric_csv(self, tmp_path, X, capsys):
        """A CSV with a text cell after the header."""
        path = _write_csv(tmp_path / "X.csv", X[:5])
        path.write_text(path.read_text() + "1,2,abc,4,5,6\n")
        code = self._select(tmp_path, path)
        _assert_one_line_error(capsys, code, "'abc' to float64 on line 6, column 3")

    def test_missing_cell_in_first_row(self, tmp_path, X, capsys):
        """An empty cell in a numeric first row is an error, not a header row."""
        path = _write_csv(tmp_path / "X.csv", X[:5])
        path.write_text("1,,3,4,5,6\n" + path.read_text())
        code = self._select(tmp_path, path)
        _assert_one_line_error(capsys, code, "string '' to float64 on line 1, column 2")

    def test_ragged_csv(self, tmp_path, capsys):
        """A CSV whose rows have different lengths; the message gives the file line."""
        (tmp_path / "X.csv").write_text("a,b\n1,2\n3\n")
        code = self._select(tmp_path, tmp_path / "X.csv")
        _assert_one_line_error(capsys, code, "line 3 has 1 columns where earlier lines have 2")

    def test_empty_csv(self, tmp_path, capsys):
        """An empty CSV file."""
        (tmp_path / "X.csv").write_text("")
        code = self._select(tmp_path, tmp_path / "X.csv")
        _assert_one_line_error(capsys, code, "empty")

    def test_corrupt_npy(self, tmp_path, capsys):
        """A .npy file that is not one."""
        (tmp_path / "X.npy").write_bytes(b"not an array")
        code = self._select(tmp_path, tmp_path / "X.npy")
        _assert_one_line_error(capsys, code, "cannot read")

    @pytest.mark.parametrize("suffix", [".npy", ".csv"])
    def test_nan_values(self, tmp_path, X, capsys, suffix):
        """NaN in the features, in .npy or .csv."""
        X = X.copy()
        X[17, 2] = np.nan
        if suffix == ".npy":
            np.save(tmp_path / "X.npy", X)
        else:
            _write_csv(tmp_path / "X.csv", X)
        code = self._select(tmp_path, tmp_path / f"X{suffix}")
        _assert_one_line_error(capsys, code, "NaN or infinity in 1 rows (first: 17)")

    def test_text_npy(self, tmp_path, capsys):
        """A .npy holding strings."""
        np.save(tmp_path / "X.npy", np.array([["a", "b"], ["c", "d"]]))
        code = self._select(tmp_path, tmp_path / "X.npy")
        _assert_one_line_error(capsys, code, "numbers are needed")

    def test_npz_unknown_key(self, tmp_path, X, capsys):
        """--key naming an array the .npz does not hold."""
        np.savez(tmp_path / "d.npz", features=X)
        code = self._select(tmp_path, tmp_path / "d.npz", "--key", "missing")
        _assert_one_line_error(capsys, code, "'features'")

    def test_gradients_wrong_rows(self, tmp_path, X, capsys):
        """Gradients with another number of rows than the features."""
        np.save(tmp_path / "X.npy", X)
        np.save(tmp_path / "G.npy", X[:10])
        code = self._select(tmp_path, tmp_path / "X.npy", "--gradients", str(tmp_path / "G.npy"))
        _assert_one_line_error(capsys, code, "10 rows")

    @pytest.mark.parametrize(("options", "match"), [
        (["--fraction", "abc"], "argument --fraction: invalid fraction value"),
        (["--fraction", "1.5"], "argument --fraction: must be in (0, 1]"),
        (["--fraction", "0"], "argument --fraction"),
        (["--strategy", "random"], "invalid choice"),
        (["--chunk-size", "1"], "argument --chunk-size/--batch-size: must be an integer of"),
        (["--batch-size", "1"], "argument --chunk-size/--batch-size"),
        (["--n-components", "0"], "argument --n-components"),
        (["--seed", "x"], "argument --seed: invalid seed value"),
        (["--bogus"], "unrecognized arguments"),
    ])
    def test_bad_option(self, tmp_path, X, capsys, options, match):
        """Bad option values name the option (argparse checks them before GraftSelector)."""
        np.save(tmp_path / "X.npy", X)
        code = self._select(tmp_path, tmp_path / "X.npy", *options)
        _assert_one_line_error(capsys, code, match)

    def test_missing_output(self, tmp_path, X, capsys):
        """--output is required."""
        np.save(tmp_path / "X.npy", X)
        code = main(["select", str(tmp_path / "X.npy"), "--fraction", "0.25"])
        _assert_one_line_error(capsys, code, "--output")

    @pytest.mark.parametrize(("output", "match"), [
        ("idx.json", "unsupported type"),
        ("no/such/dir/idx.npy", "does not exist"),
    ])
    def test_bad_output(self, tmp_path, X, capsys, output, match):
        """An output of another type, or in a folder that does not exist."""
        np.save(tmp_path / "X.npy", X)
        code = self._select(tmp_path, tmp_path / "X.npy", output=output)
        _assert_one_line_error(capsys, code, match)


class TestCommandLine:
    def test_no_command(self, capsys):
        """Without a command: one line naming the commands."""
        _assert_one_line_error(capsys, main([]), "demo or select")

    def test_unknown_command(self, capsys):
        """An unknown command."""
        _assert_one_line_error(capsys, main(["train"]), "invalid choice")

    def test_help_returns_zero(self, capsys):
        """--help prints the usage and returns 0."""
        assert main(["--help"]) == 0
        assert "select" in capsys.readouterr().out

    def test_version(self, capsys):
        """--version prints the package version."""
        import graft_select

        assert main(["--version"]) == 0
        assert graft_select.__version__ in capsys.readouterr().out

    def test_python_m_help(self):
        """python -m graft_select --help works."""
        done = subprocess.run([sys.executable, "-m", "graft_select", "--help"],
                              capture_output=True, text=True)
        assert done.returncode == 0
        assert "usage: graft-select" in done.stdout

    def test_cli_import_does_not_import_torch(self):
        """The select path does not pay for importing torch."""
        code = "import sys, graft_select.cli; sys.exit('torch' in sys.modules)"
        assert subprocess.run([sys.executable, "-c", code]).returncode == 0


class TestDemoCommand:
    @pytest.mark.slow
    def test_quick_writes_three_files(self, tmp_path, capsys):
        """demo --quick (shrunk further) prints the table and writes json, csv and png."""
        pytest.importorskip("torch")
        out = tmp_path / "out"
        code = main(["demo", "--quick", "--n-samples", "400", "--epochs", "2", "--threads", "1",
                     "--no-progress", "--out", str(out)])
        assert code == 0
        stdout = capsys.readouterr().out
        assert "fraction 0.3" in stdout and "graft" in stdout
        for name in ("results.json", "results.csv", "results.png"):
            assert (out / name).is_file()
        lines = stdout.splitlines()
        assert lines[0].startswith("results: ") and lines[1].startswith("SMOKE TEST (--quick)")
        assert lines[-1].startswith("SMOKE TEST (--quick)")
        saved = json.loads((out / "results.json").read_text())
        for line in saved["verdict"]:
            assert line in stdout.splitlines()

    def test_repeated_fractions_run_once(self, monkeypatch, tmp_path):
        """--fractions 0.3 0.3 ran (and reported) every run twice; it runs 0.3 once."""
        pytest.importorskip("torch")
        import graft_select.demo as demo

        seen = []

        def stop(config):
            seen.append(config)
            raise ValueError("stop here")

        monkeypatch.setattr(demo, "check_config", stop)
        assert main(["demo", "--fractions", "0.3", "0.3", "0.1", "--out",
                     str(tmp_path)]) == 2
        assert tuple(seen[0].fractions) == (0.3, 0.1)

    def test_default_is_the_short_demo(self):
        """Without --quick or --full: 3 seeds of budget, graft and budget_wall."""
        from graft_select.demo import DemoConfig, config_from_options

        config = config_from_options()
        assert config.seeds == (0, 1, 2)
        assert config.strategies == ("budget", "graft", "budget_wall")
        assert config_from_options(full=True) == DemoConfig(threads=1)
        assert config.threads == 1
        assert len(DemoConfig().seeds) == 5 and len(DemoConfig().strategies) == 7

    def test_pool_factor_reaches_the_sampler(self):
        """--pool-factor sets the demo's GraftBatchSampler(pool_factor=...) (default 2)."""
        pytest.importorskip("torch")
        from graft_select.cli import build_parser
        from graft_select.demo import config_from_options
        from graft_select.demo.harness import make_batch_sampler

        args = build_parser().parse_args(["demo", "--pool-factor", "1"])
        for pool_factor, expected in ((args.pool_factor, 1.0), (None, 2.0)):
            config = config_from_options(pool_factor=pool_factor)
            sampler = make_batch_sampler("graft", 1000, fraction=0.3, seed=0, config=config)
            assert config.pool_factor == sampler.pool_factor == expected

    def test_quick_and_full_exclude_each_other(self, tmp_path, capsys):
        """--quick with --full is a one-line usage error."""
        pytest.importorskip("torch")
        code = main(["demo", "--quick", "--full", "--out", str(tmp_path)])
        _assert_one_line_error(capsys, code, "not allowed with")

    @pytest.mark.parametrize(("options", "match"), [
        (["--fractions", "0"], "must be in (0, 1]"),
        (["--seeds", "0"], "positive integer"),
        (["--dataset", "cifar"], "invalid choice"),
        (["--dataset", "digits", "--n-samples", "100"], "mnist1d only"),
        (["--device", "tpu"], "device"),
        (["--selection-size", "1"], "selection_size"),
        (["--pool-factor", "0.5"], "at least 1"),
        (["--pool-factor", "nan"], "at least 1"),
    ])
    def test_bad_option(self, tmp_path, capsys, options, match):
        """Bad demo options end in one line and exit status 2."""
        pytest.importorskip("torch")
        code = main(["demo", "--quick", "--out", str(tmp_path), *options])
        _assert_one_line_error(capsys, code, match)

    def test_cuda_unavailable(self, tmp_path, capsys):
        """--device cuda without CUDA is an error, not a silent CPU run."""
        torch = pytest.importorskip("torch")
        if torch.cuda.is_available():
            pytest.skip("CUDA is available here")
        code = main(["demo", "--quick", "--device", "cuda", "--out", str(tmp_path)])
        _assert_one_line_error(capsys, code, "cuda")
