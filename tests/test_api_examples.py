"""The public API: every public function carries a numpydoc Examples section, and every
example runs and prints what its docstring says (doctest)."""

from __future__ import annotations

import doctest
import inspect

import pytest

import pifair

DOCUMENTED = [getattr(pifair, n) for n in pifair.__all__ if inspect.isfunction(getattr(pifair, n))]
DOCUMENTED += [pifair.he.compile, pifair.he.fold, pifair.mpc.export]


def test_the_public_api_names_every_capability():
    for name in ("audit", "mitigate", "linearize", "share", "polyfit", "cost", "train", "dp_train"):
        assert callable(getattr(pifair, name)), name
    assert callable(pifair.he.compile) and pifair.he.HEClient and pifair.he.HEServer
    assert callable(pifair.mpc.export)


@pytest.mark.parametrize("fn", DOCUMENTED, ids=lambda f: f.__name__)
def test_every_public_function_has_a_running_example(fn, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    doc = inspect.getdoc(fn) or ""
    assert ">>>" in doc, f"{fn.__module__}.{fn.__name__} has no example"
    finder = doctest.DocTestFinder(recurse=False)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(fn, fn.__name__, globs={}):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.attempted > 0 and result.failed == 0
