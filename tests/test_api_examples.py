"""The public API: every public function carries a numpydoc Examples section, and every
example runs and prints what its docstring says (doctest)."""

from __future__ import annotations

import doctest
import inspect
import re

import pytest

import pifair

DOCUMENTED = [getattr(pifair, n) for n in pifair.__all__ if inspect.isfunction(getattr(pifair, n))]
DOCUMENTED += [pifair.he.compile, pifair.he.fold, pifair.mpc.export]


def test_the_package_docstring_and_the_public_api_name_the_same_functions():
    """A public function the package's docstring does not introduce is one nobody finds; a
    function it names that is gone is a broken promise."""
    named = set(re.findall(r":func:`(\w+)`", pifair.__doc__ or ""))
    public = {n for n in pifair.__all__ if callable(getattr(pifair, n)) and n[0].islower()}
    assert named == public, (sorted(named - public), sorted(public - named))


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
