"""Tests for what importing graft_select costs, and for the docstring examples."""

import doctest
import importlib
import subprocess
import sys

import pytest


def modules_after(code):
    """Run ``code`` in a fresh interpreter and return the set of modules it imported."""
    script = f"{code}\nimport sys\nprint(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, timeout=120)
    return set(out.stdout.split())


class TestImport:
    """`import graft_select` stays light: neither torch nor cupy."""

    def test_import_does_not_load_torch_or_cupy(self):
        """`import graft_select` leaves torch and cupy out of sys.modules."""
        loaded = modules_after("import graft_select")
        assert "graft_select" in loaded
        assert "torch" not in loaded
        assert "cupy" not in loaded

    def test_import_does_not_load_sklearn(self):
        """`import graft_select` leaves scikit-learn and scipy out: modules load on use."""
        loaded = modules_after("import graft_select")
        assert not {"sklearn", "scipy", "graft_select.selector"} & loaded
        used = modules_after("import graft_select\ngraft_select.GraftSelector")
        assert {"sklearn", "graft_select.selector"} <= used and "torch" not in used

    def test_every_public_name_resolves(self):
        """Each name of __all__ is reachable, listed by dir(), and star-importable."""
        import graft_select

        for name in graft_select.__all__:
            if name in ("GraftBatchSampler", "LastLayerCapture", "RefitReport"):
                pytest.importorskip("torch")
            assert getattr(graft_select, name) is not None
            assert name in dir(graft_select)
        namespace = {}
        exec("from graft_select import *", namespace)
        assert set(graft_select.__all__) <= set(namespace)
        with pytest.raises(AttributeError, match="no attribute 'GraftSelectr'"):
            graft_select.GraftSelectr  # noqa: B018

    def test_submodules_are_attributes(self):
        """In a fresh interpreter, the submodules the package used to import eagerly are
        attributes of `graft_select` without an import of their own."""
        names = ("gradients", "linalg", "selector")
        code = ("import graft_select\nprint(' '.join(getattr(graft_select, name).__name__ "
                f"for name in {names!r}))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True, timeout=120)
        assert out.stdout.split() == [f"graft_select.{name}" for name in names]

    def test_import_does_not_load_lightning_or_accelerate(self):
        """Neither `import graft_select` nor the sampler imports lightning or accelerate."""
        loaded = modules_after("import graft_select, graft_select.sampler")
        assert not {"lightning", "accelerate", "pytorch_lightning"} & loaded

    def test_sampler_loads_refit_namespaces_when_built(self):
        """Building a GraftBatchSampler loads the array namespaces its refits use."""
        pytest.importorskip("torch")
        imported = modules_after("import graft_select.sampler")
        built = modules_after("import graft_select.sampler\n"
                              "graft_select.sampler.GraftBatchSampler(10, 2)")
        wrappers = {"array_api_compat.numpy", "array_api_compat.torch"}
        assert not wrappers & imported and wrappers <= built

    def test_numpy_kernels_do_not_load_torch_or_cupy(self):
        """Running both kernels on NumPy input imports neither torch nor cupy."""
        loaded = modules_after(
            "import numpy as np, graft_select\n"
            "X = np.random.default_rng(0).standard_normal((60, 30))\n"
            "U = graft_select.low_rank_features(X, 4, random_state=0)\n"
            "graft_select.fast_maxvol(U, 6, method='lu', refine=True)\n"
            "graft_select.fast_maxvol(U, 6)"
        )
        assert "torch" not in loaded
        assert "cupy" not in loaded

    def test_public_names(self):
        """The package exports the two kernels and a version string."""
        import graft_select

        assert {"fast_maxvol", "low_rank_features", "__version__"} <= set(graft_select.__all__)
        assert isinstance(graft_select.__version__, str)


DOCTEST_MODULES = ["graft_select._backend", "graft_select._validation", "graft_select.linalg"]


class TestDocstringExamples:
    """The examples in the kernels' docstrings run and print what they show."""

    @pytest.mark.parametrize("name", DOCTEST_MODULES)
    def test_module_examples(self, name):
        """doctest finds no failing example in the module."""
        module = importlib.import_module(name)
        result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert result.failed == 0

    def test_kernels_have_examples(self):
        """Both public kernels carry at least one doctest example (so the test above bites)."""
        finder = doctest.DocTestFinder()
        module = importlib.import_module("graft_select.linalg")
        names = {t.name.rsplit(".", 1)[-1] for t in finder.find(module) if t.examples}
        assert {"fast_maxvol", "low_rank_features"} <= names
