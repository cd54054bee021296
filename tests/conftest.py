"""Shared fixtures: the backend matrix and conversions between NumPy and each backend.

Every test that takes the ``backend`` fixture runs once per array library:

- ``numpy``: plain NumPy arrays;
- ``array_api_strict``: arrays on ``array_api_strict.Device('device1')``, a
  non-default device, so any array created on the default device and mixed with the
  input raises, and ``result.device`` shows where results land;
- ``torch-cpu`` and ``torch-cuda`` (skipped unless ``torch.cuda.is_available()``);
- ``cupy`` (skipped unless CuPy imports and a CUDA device exists).

A backend that cannot run here is skipped, never silently replaced by another.
"""

import importlib
import socket
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg

from graft_select._backend import to_numpy as _to_numpy

BACKEND_NAMES = ("numpy", "array_api_strict", "torch-cpu", "torch-cuda", "cupy")


class Backend:
    """One array library and device, with conversions from and to NumPy.

    Attributes
    ----------
    name : str
        One of ``BACKEND_NAMES``.
    module : module
        The array library as users import it (numpy, array_api_strict, torch, cupy).
    device : object
        The device arrays are created on (``"cpu"`` for NumPy).
    """

    def __init__(self, name, module, device):
        self.name = name
        self.module = module
        self.device = device

    def __repr__(self):
        return f"Backend({self.name!r})"

    def asarray(self, a):
        """Convert the NumPy array ``a`` to this backend and device (dtype kept)."""
        a = np.asarray(a)
        if self.name == "numpy":
            return a.copy()
        if self.name.startswith("torch"):
            return self.module.asarray(a.copy(), device=self.device)
        if self.name == "cupy":
            with self.module.cuda.Device(self.device.id):
                return self.module.asarray(a)
        return self.module.asarray(a, device=self.device, copy=True)

    @staticmethod
    def to_numpy(x):
        """Copy an array of any backend to a NumPy array on the host."""
        return np.array(_to_numpy(x), copy=True)

    def device_of(self, x):
        """The device of an array of this backend, comparable to ``self.device``."""
        if self.name == "numpy":
            assert isinstance(x, np.ndarray), type(x)
            return "cpu"
        return x.device

    def is_native(self, x):
        """True if ``x`` is an array of this backend on this backend's device."""
        kinds = {
            "numpy": lambda: isinstance(x, np.ndarray),
            "array_api_strict": lambda: type(x).__module__.startswith("array_api_strict"),
            "torch-cpu": lambda: isinstance(x, self.module.Tensor),
            "torch-cuda": lambda: isinstance(x, self.module.Tensor),
            "cupy": lambda: isinstance(x, self.module.ndarray),
        }
        return kinds[self.name]() and self.device_of(x) == self.device


def _make_backend(name):
    """Build the backend ``name``, or skip the test when it cannot run here."""
    if name == "numpy":
        return Backend(name, np, "cpu")
    if name == "array_api_strict":
        xps = pytest.importorskip("array_api_strict")
        return Backend(name, xps, xps.Device("device1"))
    if name.startswith("torch"):
        torch = pytest.importorskip("torch")
        if name == "torch-cuda":
            if not torch.cuda.is_available():
                pytest.skip("torch-cuda: torch.cuda.is_available() is False")
            return Backend(name, torch, torch.device("cuda", 0))
        return Backend(name, torch, torch.device("cpu"))
    if name == "cupy":
        try:
            cupy = importlib.import_module("cupy")
            n_devices = cupy.cuda.runtime.getDeviceCount()
        except Exception as exc:  # ImportError, or CUDA runtime errors without a driver
            pytest.skip(f"cupy: not usable here ({type(exc).__name__})")
        if n_devices < 1:
            pytest.skip("cupy: no CUDA device")
        return Backend(name, cupy, cupy.cuda.Device(0))
    raise ValueError(f"unknown backend {name!r}")


@pytest.fixture(scope="session", params=BACKEND_NAMES)
def backend(request):
    """Every backend of the matrix in turn (session-scoped, so hypothesis can use it)."""
    return _make_backend(request.param)


@pytest.fixture(scope="session")
def numpy_backend():
    """The NumPy backend alone, for tests whose subject is not the array library."""
    return _make_backend("numpy")


@pytest.fixture
def rng():
    """A freshly seeded NumPy generator (the same stream in every test)."""
    return np.random.default_rng(20250813)


def free_port():
    """A free TCP port on the loopback interface, for a torch.distributed test's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def softmax_store(rng, n=1200, d=16, C=5):
    """A feedback store's tables (float32 torch): softmax residuals of random logits and
    labels, and Gaussian embeddings, drawn from the NumPy generator ``rng``."""
    import torch

    logits = torch.tensor(rng.standard_normal((n, C)), dtype=torch.float32)
    y = torch.tensor(rng.integers(0, C, n))
    residuals = torch.softmax(logits, 1) - torch.nn.functional.one_hot(y, C).float()
    return residuals, torch.tensor(rng.standard_normal((n, d)), dtype=torch.float32)


def spawn_ranks(worker, world, out_dir):
    """Run ``worker(rank, world, port, out_dir)`` on ``world`` processes (a free port for the
    rendezvous); return what each rank saved to ``out_dir/rank{r}.pt``, in rank order."""
    import torch
    import torch.multiprocessing as mp

    mp.spawn(worker, args=(world, free_port(), str(out_dir)), nprocs=world, join=True)
    return [torch.load(Path(out_dir) / f"rank{r}.pt") for r in range(world)]


def scipy_lu_rows(A):
    """The rows LAPACK getrf picks at each elimination step, from scipy's swap sequence."""
    n, r = A.shape
    _, piv = scipy.linalg.lu_factor(A)
    perm = np.arange(n)
    for j, p in enumerate(piv):
        perm[[j, p]] = perm[[p, j]]
    return perm[:r]


@pytest.fixture(autouse=True)
def _background_refits_collected():
    """Collect samplers a test left with a background refit started (their BLAS hold).

    A background refit holds NumPy's BLAS pools at one thread, process-wide, until
    the thread that started it next uses the sampler, or the sampler is collected
    (see graft_select._background). A test that plans an epoch and drops its sampler
    leaves the hold to the garbage collector, and the fits of a later test (the
    golden ones) would run at one BLAS thread: collect now, as a program would.
    """
    yield
    from graft_select import _backend

    if _backend._BLAS_HOLD["depth"]:
        import gc

        gc.collect()
