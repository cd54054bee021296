"""The CPU-only parts of benchmarks/gpu_check.py: arguments and the skip logic."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _has_cuda():
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.skipif(_has_cuda(), reason="a CUDA device is present: the script would run")
def test_skips_without_gpu():
    """Without a CUDA device the script prints SKIP with the reason and exits 77."""
    env = dict(os.environ, PYTHONPATH=str(SCRIPT.parent.parent))
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 77
    assert done.stdout.startswith("SKIP: ")
    assert "CUDA" in done.stdout


def test_skip_reason_without_torch(monkeypatch):
    """A missing torch is named as the reason."""
    module = _load()
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    assert "torch is not installed" in module.skip_reason()


def test_cupy_reason_without_cupy(monkeypatch):
    """A missing CuPy is named, so only the CuPy step skips."""
    module = _load()
    monkeypatch.setitem(sys.modules, "cupy", None)
    assert "CuPy is not installed" in module.cupy_reason()


def test_defaults():
    """The defaults are the issue's sizes: 1,000,000 x 512 and a 0.5 s goal."""
    args = _load().parse_args([])
    assert (args.n, args.d, args.refit_goal) == (1_000_000, 512, 0.5)


@pytest.mark.parametrize("argv, message", [
    (["--n", "10"], "--n must be at least 512"),
    (["--d", "0"], "--d must be a positive int"),
    (["--observe-steps", "-1"], "--observe-steps must be a positive int"),
])
def test_bad_arguments(argv, message, capsys):
    """Bad sizes are usage errors (status 2) that name the argument."""
    with pytest.raises(SystemExit) as info:
        _load().parse_args(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


SHELL_SCRIPT = SCRIPT.with_suffix(".sh")
TESTS = SCRIPT.parent.parent / "tests"


def _gpu_test_files():
    text = SHELL_SCRIPT.read_text()
    listed = text.split('GPU_TEST_FILES="', 1)[1].split('"', 1)[0]
    return {Path(name).name for name in listed.split()}


def test_shell_script_runs_every_gpu_test_file():
    """Every test file with CUDA or CuPy cases (the backend fixture, a torch-cuda
    parameter or an importorskip of CuPy) is in the shell script's pytest list, and
    every listed file exists."""
    with_gpu_cases = {
        path.name for path in TESTS.glob("test_*.py")
        if path.name != Path(__file__).name and any(
            mark in path.read_text()
            for mark in ('"torch-cuda"', "(self, backend", "(backend", 'importorskip("cupy")'))}
    listed = _gpu_test_files()
    assert {"test_gradients.py", "test_selector.py", "test_sampler.py"} <= with_gpu_cases
    assert with_gpu_cases <= listed, sorted(with_gpu_cases - listed)
    assert all((TESTS / name).is_file() for name in listed)


@pytest.mark.skipif(_has_cuda(), reason="a CUDA device is present: the script would run")
def test_shell_script_skips_without_gpu():
    """Without a CUDA device and with installs off, the shell script runs the (skipped)
    GPU tests, then the checks, and exits 77 with the reason."""
    env = dict(os.environ, PYTHON=sys.executable, GPU_CHECK_NO_INSTALL="1",
               PYTHONPATH=str(SCRIPT.parent.parent))
    done = subprocess.run(["bash", str(SHELL_SCRIPT)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 77, done.stdout[-2000:] + done.stderr[-2000:]
    assert "== CuPy and CUDA tests" in done.stdout
    assert " skipped" in done.stdout and "failed" not in done.stdout
    assert "SKIP: " in done.stdout
