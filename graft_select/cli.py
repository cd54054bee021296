"""The ``graft-select`` command line: ``demo`` and ``select``.

``graft-select demo`` trains a small torch model with GRAFT and with what a user would do
instead (full data, budget-matched full data, RS2, InfoBatch, uniform subsets) and prints
what GRAFT saves and costs; ``graft-select select`` runs
:class:`~graft_select.GraftSelector` on a feature file and writes the selected row
indices. Errors in the input or the options end in one line on stderr, starting with
``graft-select: error:``, and exit status 2.
"""

import argparse
import os
import re
import sys
import time
import warnings
from pathlib import Path

import numpy as np

__all__ = ["main"]

PROG = "graft-select"
_FEATURE_SUFFIXES = (".npy", ".npz", ".csv")
_OUTPUT_SUFFIXES = (".npy", ".txt", ".csv")


class CommandError(Exception):
    """A user error: reported as one line on stderr with exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors on one line (the usage is in --help)."""

    def error(self, message):
        raise CommandError(f"{message} (see '{self.prog} --help')")


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _at_least_one(text):
    value = float(text)
    if not value >= 1.0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of at least 1, got {text}")
    return value


def _non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text}")
    return value


def _fraction(text):
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def _chunk_size(text):
    value = int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be an integer of at least 2, got {text}")
    return value


_MAX_SEED = 2**32 - 1  # GraftSelector's random_state range


def _seed(text):
    value = int(text)
    if not 0 <= value <= _MAX_SEED:
        raise argparse.ArgumentTypeError(
            f"must be an integer in [0, {_MAX_SEED}], got {text}")
    return value


# Type names shown by argparse in "invalid <name> value" messages.
_positive_int.__name__ = "positive int"
_non_negative_int.__name__ = "non-negative int"
_fraction.__name__ = "fraction"
_chunk_size.__name__ = "chunk size"
_seed.__name__ = "seed"


def build_parser():
    """The argument parser of ``graft-select`` (exposed for documentation tools)."""
    from . import __version__

    parser = _Parser(
        prog=PROG,
        description="GRAFT data subset selection: train on a well-chosen fraction of the data.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_demo_command(commands)
    _add_select_command(commands)
    return parser


def _add_demo_command(commands):
    """The ``demo`` subcommand: what it trains, then where it runs and what it writes."""
    demo = commands.add_parser(
        "demo", help="train a small model with GRAFT and with the baselines it competes with",
        description="Train the same small torch model with GRAFT and with what you would "
                    "do instead, and report accuracy, time, selection and feedback "
                    "overhead, samples seen, time-to-accuracy and energy, then the verdict "
                    "in words. By default (about 2 minutes on 2 CPU cores): 3 seeds of "
                    "GRAFT, full data stopped at GRAFT's samples (budget) and full data "
                    "for GRAFT's cost (budget_wall), at fractions 0.1 and 0.3. --full: "
                    "the 5-seed protocol with every strategy (full data for all epochs, "
                    "RS2, InfoBatch, uniform subsets too; about 10 minutes). Cost = the "
                    "smaller of a run's training wall-clock and its process CPU time, so "
                    "that other programs' load does not inflate it. Needs torch (pip "
                    "install graft-select[torch]).",
    )
    _add_demo_experiment_options(demo)
    _add_demo_run_options(demo)
    demo.set_defaults(handler=_run_demo)


def _add_demo_experiment_options(demo):
    """What the demo trains: dataset, strategies, fractions, seeds, epochs, GRAFT's schedule.

    An option left out keeps the DemoConfig default (or the --quick one), which its
    help text states.
    """
    demo.add_argument("--dataset", choices=("mnist1d", "digits", "noisy_digits"),
                      default="mnist1d",
                      help="procedural MNIST-1D (default), scikit-learn's digits, or digits "
                           "with 6 jittered copies per image and 15%% wrong labels")
    demo.add_argument("--strategies", nargs="+", metavar="S",
                      choices=("full", "budget", "rs2", "infobatch", "uniform", "graft",
                               "budget_wall"),
                      help="strategies to run (default: budget graft budget_wall; --full: "
                           "all of full budget rs2 infobatch uniform graft budget_wall)")
    demo.add_argument("--fractions", type=_fraction, nargs="+", metavar="F",
                      help="subset fractions (default: 0.1 0.3; --quick: 0.3)")
    demo.add_argument("--seeds", type=_positive_int, metavar="N",
                      help="number of seeds, 0 to N-1 (default: 3; --full: 5; --quick: 1)")
    demo.add_argument("--epochs", type=_positive_int, metavar="N",
                      help="training epochs (default: 20; --quick: 3)")
    demo.add_argument("--refit-every", type=_positive_int, metavar="R",
                      help="reselect the subset every R epochs (default: 5; --quick: 1)")
    demo.add_argument("--warm-start-epochs", type=_non_negative_int, metavar="W",
                      help="first W epochs on full data (default: 3; --quick: 1)")
    demo.add_argument("--batch-size", type=_positive_int, metavar="B",
                      help="training batch size (default: 128)")
    demo.add_argument("--selection-size", type=_positive_int, metavar="S",
                      help="rows per GRAFT selection chunk (default: 128)")
    demo.add_argument("--pool-factor", type=_at_least_one, metavar="P",
                      help="each refit selects P times an epoch's samples, and the epochs "
                           "until the next refit train random draws of them (default: 2; "
                           "1 trains the whole selection every epoch)")
    demo.add_argument("--n-samples", type=_positive_int, metavar="N",
                      help="MNIST-1D signals to generate, 80%% for training "
                           "(default: 30000; --quick: 3000)")


def _add_demo_run_options(demo):
    """How the demo runs and what it writes: device, threads, carbon country, output folder.

    Also the --quick preset (CI-sized defaults) and the switch for the progress bars.
    """
    demo.add_argument("--device", default="cpu", metavar="DEVICE",
                      help="cpu (default) or cuda; no silent fallback")
    demo.add_argument("--threads", type=_positive_int, metavar="N",
                      help="threads of every pool while the demo runs: torch's and the "
                           "BLAS/OpenMP pools of NumPy and SciPy (default: 1; the demo's "
                           "models are too small to gain from more)")
    demo.add_argument("--country-iso-code", default="USA", metavar="ISO",
                      help="country for codecarbon's offline carbon intensity (default: USA)")
    demo.add_argument("--out", default="graft_demo_out", metavar="DIR",
                      help="folder for results.json, results.csv, results.png "
                           "(default: graft_demo_out)")
    size = demo.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true",
                      help="smoke test (CI): small data, 3 epochs, 1 seed, fraction 0.3, under "
                           "a minute; its accuracies mean nothing")
    size.add_argument("--full", action="store_true",
                      help="the full protocol: 5 seeds, every strategy (about 10 minutes on "
                           "2 cores)")
    demo.add_argument("--no-progress", action="store_true",
                      help="no progress output (by default: bars on a terminal, else a "
                           "plain line at least every 10 s)")


def _add_select_command(commands):
    """The ``select`` subcommand: input files, selection settings, output file."""
    select = commands.add_parser(
        "select", help="select rows of a feature file with GraftSelector",
        description="Run GraftSelector on FEATURES (.npy; .npz, first array unless --key; "
                    ".csv, where the first line is a header only with --header, or by "
                    "default when every cell of it is non-numeric text (a first line "
                    "0,1,...,k-1 needs --header or --no-header); blank lines and a "
                    "UTF-8 byte-order mark are ignored; a CSV written by pandas with its "
                    "index needs --index-column) and write the selected row indices "
                    "to OUTPUT (.npy, or one index per line for .txt and .csv), which must "
                    "not be an input file unless --force is given.",
    )
    select.add_argument("features", metavar="FEATURES", help="feature file, one row per sample")
    select.add_argument("--gradients", metavar="FILE",
                        help="per-sample gradient proxies, same rows as FEATURES")
    select.add_argument("--fraction", type=_fraction, required=True, metavar="F",
                        help="share of the rows to keep, in (0, 1]")
    select.add_argument("--chunk-size", "--batch-size", dest="chunk_size", type=_chunk_size,
                        metavar="B",
                        help="select per chunk of B consecutive rows (default: all rows at "
                             "once up to 4096, else equal chunks of at most 4096 rows, which "
                             "keeps the cost linear in the number of rows, or at small "
                             "fractions (about 1/32 and below) a merge-and-reduce tree over "
                             "them, as GraftSelector(chunk_size=None)); every chunk "
                             "keeps at least one row, and a warning says when that moves "
                             "the total by more than 10%%")
    select.add_argument("--n-components", type=_positive_int, metavar="R",
                        help="rank of the low-rank features (default: automatic)")
    select.add_argument("--strategy", choices=("graft", "uniform"), default="graft",
                        help="graft (default) or the uniform baseline")
    select.add_argument("--seed", type=_seed, default=0, metavar="S",
                        help=f"random seed, in [0, {_MAX_SEED}] (default: 0)")
    header = select.add_mutually_exclusive_group()
    header.add_argument("--header", dest="header", action="store_true", default=None,
                        help="every CSV file read (FEATURES and --gradients) has a header "
                             "row (skipped)")
    header.add_argument("--no-header", dest="header", action="store_false",
                        help="no CSV file read has a header row: the first line is "
                             "data")
    select.add_argument("--index-column", action="store_true",
                        help="the first column of the CSV files is a row index, as pandas "
                             "writes it by default (df.to_csv(path)): skip it")
    select.add_argument("--key", metavar="NAME", help="array name in a FEATURES .npz file")
    select.add_argument("--gradients-key", metavar="NAME",
                        help="array name in a --gradients .npz file")
    select.add_argument("--output", "-o", required=True, metavar="OUT",
                        help="where to write the indices (.npy, .txt or .csv)")
    select.add_argument("--force", action="store_true",
                        help="write OUTPUT even when it is the FEATURES or --gradients file "
                             "(the indices replace it)")
    select.set_defaults(handler=_run_select)


def main(argv=None):
    """Run ``graft-select`` with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            raise CommandError(f"choose a command: demo or select (see '{PROG} --help')")
        return args.handler(args)
    except CommandError as exc:
        return _fail(exc)
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else 0


def _fail(exc):
    message = " ".join(str(exc).split())
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


# -------------------------------------------------------------------------- select


def read_array(path, *, key=None, name="FEATURES", header=None, index_column=False):
    """Read a 2-D float array from .npy, .npz or .csv; raise CommandError on bad input.

    ``header`` (CSV only): True skips the first non-blank line, False reads it as
    data, None applies the default rule of `_read_csv`. ``index_column`` (CSV
    only): the first column is a row index, dropped.
    """
    try:
        return _read_array(Path(path), key, name, header, index_column)
    except OSError as exc:  # a path the system refuses (too long, no permission)
        raise CommandError(f"cannot read {name} file {str(path)!r}: {exc}") from exc


def _read_array(path, key, name, header, index_column):
    suffix = path.suffix.lower()
    if path.is_dir():
        raise CommandError(f"{name} {str(path)!r} is a directory; pass a file (.npy, .npz "
                           f"or .csv).")
    if suffix not in _FEATURE_SUFFIXES:
        raise CommandError(f"{name} file {str(path)!r} has an unsupported type "
                           f"{suffix or '(none)'!r}; use .npy, .npz or .csv.")
    if not path.is_file():
        raise CommandError(f"{name} file {str(path)!r} does not exist.")
    if key is not None and suffix != ".npz":
        raise CommandError(f"an array name was given for {name}, but {str(path)!r} is not "
                           f"an .npz file.")
    try:
        if suffix == ".csv":
            X = _read_csv(path, header, index_column)
        else:
            _check_magic(path, suffix, name)
            X = np.load(path, allow_pickle=False)
            if suffix == ".npz":
                X = _npz_member(X, key, path)
    except CommandError:
        raise
    except (OSError, ValueError, EOFError) as exc:
        raise CommandError(f"cannot read {name} file {str(path)!r}: {exc}") from exc
    return _check_numeric(X, path, name)


_MAGIC = {".npy": b"\x93NUMPY", ".npz": b"PK"}


def _check_magic(path, suffix, name):
    """NumPy takes any file without its magic bytes for a pickle: say what it really is."""
    with open(path, "rb") as handle:
        start = handle.read(len(_MAGIC[suffix]))
    if start != _MAGIC[suffix]:
        kind = "NumPy .npy" if suffix == ".npy" else "NumPy .npz (zip)"
        found = "it is empty" if not start else "its first bytes are not the format's header"
        raise CommandError(f"cannot read {name} file {str(path)!r}: it is not a {kind} file "
                           f"({found}); write it with np.save / np.savez, or use .csv for "
                           f"text.")


def _npz_member(archive, key, path):
    with archive:
        names = archive.files
        if not names:
            raise CommandError(f"{str(path)!r} holds no arrays.")
        if key is None:
            return archive[names[0]]
        if key not in names:
            raise CommandError(f"{str(path)!r} has no array {key!r}; it holds "
                               f"{', '.join(repr(n) for n in names)}.")
        return archive[key]


_MISSING = {"", "na", "n/a", "nan", "null", "none", "-"}


def _read_csv(path, header=None, index_column=False):
    """Read a numeric CSV file; ``header`` True/False, or None for the default rule.

    Default rule: the first non-blank line is a header only if every one of its
    cells is non-numeric text (not a number and not a missing-value marker such
    as NA), or if its first cell is empty and the others are such text (pandas'
    header over its index column); a first line like ``NA,2,3`` or ``id,2,3`` is
    data, and a non-numeric cell in it is reported with its line number. A
    header of pandas' shape is an error unless ``index_column`` (which drops the
    first column): that column holds the row index, not a feature. A UTF-8
    byte-order mark is ignored and blank lines are skipped; reported line
    numbers are the file's.
    """
    with open(path, newline="", encoding="utf-8-sig") as handle:
        lines = [(number, text) for number, text in enumerate(handle.read().splitlines(), 1)
                 if text.strip()]
    if not lines:
        raise CommandError(f"{str(path)!r} holds no data rows (it is empty or has only "
                           f"blank lines).")
    cells = [cell.strip() for cell in lines[0][1].split(",")]
    pandas_index = len(cells) > 1 and cells[0] == "" and all(map(_is_name, cells[1:]))
    if header is None:
        _refuse_numbered_header(path, cells)
        header = all(map(_is_name, cells)) or pandas_index
    if header and pandas_index and not index_column:
        raise CommandError(f"{str(path)!r} looks written by pandas with its index: the "
                           f"header's first cell is empty, so the first column holds row "
                           f"numbers, not a feature. Pass --index-column to skip it, or "
                           f"write the file with df.to_csv(path, index=False).")
    data = lines[1:] if header else lines
    if not data:
        raise CommandError(f"{str(path)!r} has a header row but no data rows.")
    try:
        X = np.loadtxt([text for _, text in data], delimiter=",", ndmin=2,
                       dtype=np.float64)
    except ValueError as exc:
        raise _csv_error(path, data, header, exc) from exc
    return X[:, 1:] if index_column else X


def _refuse_numbered_header(path, cells):
    """Raise for a first line ``0,1,...,k-1`` (or ``,0,1,...``): pandas' column names
    for a DataFrame made from an array, or a row of data; the default rule cannot
    tell, and reading a header as data shifts every index by one."""
    indexed = len(cells) > 1 and cells[0] == ""
    names = cells[1:] if indexed else cells
    if len(names) < 2 or names != [str(i) for i in range(len(names))]:
        return  # one column: a first value of 0 is data too often to refuse
    fix = "--header --index-column" if indexed else "--header"
    raise CommandError(f"the first line of {str(path)!r} is {','.join(cells)!r}: pandas' "
                       f"default column names (df.to_csv of a DataFrame made from an "
                       f"array), or a row of data. Pass {fix} to skip it, or --no-header "
                       f"to read it as data.")


def _is_name(cell):
    """True for a header cell: non-empty text that is neither a number nor a missing value."""
    return bool(cell) and cell.lower() not in _MISSING and not _is_number(cell)


def _csv_error(path, data, header, exc):
    """The CommandError for NumPy's ValueError on the data lines ``data``, in file lines."""
    detail = str(exc).rstrip(".")
    # NumPy counts data rows from 0 and columns from 1: say file lines
    found = re.search(r"(could not convert string .*) at row (\d+), column (\d+)", detail)
    if found:
        line = data[int(found.group(2))][0]
        detail = f"{found.group(1)} on line {line}, column {found.group(3)}"
    ragged = re.search(r"number of columns changed from (\d+) to (\d+) at row (\d+)", detail)
    if ragged:  # NumPy counts this row from 1
        line = data[int(ragged.group(3)) - 1][0]
        detail = (f"line {line} has {ragged.group(2)} columns where earlier lines have "
                  f"{ragged.group(1)}")
    hint = ("every cell after the header row must be a number" if header else
            "every cell must be a number (pass --header if the first line is a header)")
    return CommandError(f"{str(path)!r} is not a numeric CSV file: {detail}; {hint}.")


def _is_number(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


def _check_numeric(X, path, name):
    X = np.asarray(X)
    if X.dtype.kind not in "biuf":
        raise CommandError(f"{name} file {str(path)!r} holds {X.dtype} data; numbers are "
                           f"needed.")
    if X.ndim == 1:
        X = X.reshape(-1, 1)
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise CommandError(f"{name} in {str(path)!r} must be a non-empty 2-D array (one row "
                           f"per sample), got shape {X.shape}.")
    bad = ~np.isfinite(X).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise CommandError(f"{name} in {str(path)!r} contains NaN or infinity in {rows.size} "
                           f"rows (first: {rows[0]}); remove or impute them before selection.")
    return X


def _check_output(path):
    try:
        return _checked_output(Path(path))
    except OSError as exc:  # a path the system refuses (too long, no permission)
        raise CommandError(f"cannot write --output {str(path)!r}: {exc}") from exc


def _checked_output(path):
    suffix = path.suffix.lower()
    if path.is_dir():
        raise CommandError(f"--output {str(path)!r} is a directory; name a file in it, e.g. "
                           f"{str(path / 'indices.npy')!r}.")
    if suffix not in _OUTPUT_SUFFIXES:
        raise CommandError(f"--output {str(path)!r} has an unsupported type "
                           f"{suffix or '(none)'!r}; use .npy, .txt or .csv.")
    if not path.parent.is_dir():
        raise CommandError(f"the folder of --output {str(path)!r} does not exist.")
    return path


def _check_not_an_input(output, inputs, force):
    """Refuse an OUTPUT that is one of the input files (``inputs``: name -> path).

    Paths are compared after resolving ``.``, ``..`` and links (and by file
    identity where both exist), so ``./X.npy`` and an absolute path count as
    ``X.npy``. ``force`` allows it.
    """
    if force:
        return
    for name, path in inputs.items():
        if path is not None and _same_file(output, Path(path)):
            raise CommandError(f"--output {str(output)!r} is the {name} file {str(path)!r}: "
                               f"writing the indices there would replace its data. Choose "
                               f"another --output, or pass --force to overwrite it.")


def _same_file(a, b):
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()
    except OSError:  # a path the system refuses is no input file
        return False


def write_indices(indices, path):
    """Write indices to .npy, or one per line to .txt/.csv."""
    indices = np.asarray(indices, dtype=np.int64)
    if path.suffix.lower() == ".npy":
        # through a file object: np.save given a name appends ".npy" unless the name
        # ends in lower-case ".npy", and "rows.NPY" would become "rows.NPY.npy" (another
        # file than the one named, and possibly an input)
        with open(path, "wb") as file:
            np.save(file, indices)
    else:
        np.savetxt(path, indices, fmt="%d")


def _run_select(args):
    output = _check_output(args.output)
    _check_not_an_input(output, {"FEATURES": args.features, "--gradients": args.gradients},
                        args.force)
    if args.index_column and not any(
            str(p).lower().endswith(".csv") for p in (args.features, args.gradients) if p):
        raise CommandError("--index-column was given, but neither FEATURES nor --gradients "
                           "is a .csv file.")
    X = read_array(args.features, key=args.key, header=args.header,
                   index_column=args.index_column)
    gradients = None
    if args.gradients is not None:
        gradients = read_array(args.gradients, key=args.gradients_key, name="gradients",
                               header=args.header, index_column=args.index_column)
        if gradients.shape[0] != X.shape[0]:
            csv = [str(p).lower().endswith(".csv") for p in (args.features, args.gradients)]
            hint = ""
            if args.header is not None and any(csv):
                flag = "--header" if args.header else "--no-header"
                hint = (f" {flag} applies to every CSV file read: where only one of them "
                        f"has a header row, give the other one a header row too, or write "
                        f"it as .npy.")
            raise CommandError(f"--gradients has {gradients.shape[0]} rows but FEATURES has "
                               f"{X.shape[0]}; give one gradient row per sample.{hint}")
    elif args.gradients_key is not None:
        raise CommandError("--gradients-key was given without --gradients.")

    from .selector import GraftSelector

    selector = GraftSelector(
        fraction=args.fraction, n_components=args.n_components, chunk_size=args.chunk_size,
        strategy=args.strategy, random_state=args.seed,
    )
    start = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            # no weights: select writes the indices only, and a warning about weights
            # would advise on values it never writes
            selector.fit(X, gradients=gradients, compute_weights=False)
    except (ValueError, TypeError) as exc:  # parameter and data errors of the selector
        raise CommandError(str(exc)) from exc
    for warning in caught:
        if issubclass(warning.category, UserWarning):
            print(f"{PROG}: warning: {warning.message}", file=sys.stderr)
    seconds = time.perf_counter() - start
    indices = np.asarray(selector.sample_indices_)
    try:
        write_indices(indices, output)
    except OSError as exc:
        raise CommandError(f"cannot write {str(output)!r}: {exc}") from exc
    n = X.shape[0]
    print(f"selected {indices.size} of {n} rows (fraction {indices.size / n:.3f}, strategy "
          f"{args.strategy}) in {seconds:.2f} s -> {output}")
    return 0


# ---------------------------------------------------------------------------- demo


def _run_demo(args):
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise CommandError("the demo needs torch: pip install graft-select[torch]") from exc
    from .demo import check_config, config_from_options, format_tables, run_demo

    options = dict(
        # a fraction (or seed) given twice would run, and count, every run twice
        fractions=None if args.fractions is None else list(dict.fromkeys(args.fractions)),
        seeds=args.seeds, epochs=args.epochs,
        strategies=args.strategies,
        refit_every=args.refit_every, warm_start_epochs=args.warm_start_epochs,
        batch_size=args.batch_size, selection_size=args.selection_size,
        pool_factor=args.pool_factor, n_samples=args.n_samples, device=args.device,
        threads=args.threads, country_iso_code=args.country_iso_code,
    )
    try:
        config = config_from_options(dataset=args.dataset, quick=args.quick, full=args.full,
                                     **options)
        check_config(config)
        Path(args.out).mkdir(parents=True, exist_ok=True)
    except (ValueError, TypeError, ImportError) as exc:
        raise CommandError(str(exc)) from exc
    except OSError as exc:
        raise CommandError(f"cannot create --out {args.out!r}: {exc}") from exc
    result = run_demo(config, out=args.out, progress=False if args.no_progress else None)
    print(f"results: {', '.join(result['files'].values())} "
          f"(demo took {result['elapsed_seconds']:.0f} s)")
    print(format_tables(result))  # ends with the verdict in words
    return 0
