"""Run the examples in the package's docstrings, so they stay true."""

import doctest
import importlib

import pytest

MODULES = ["record", "hlc", "merge", "crdt", "engine", "cli._formats", "cli._ui"]  # the modules with examples


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(f"abase_engine.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
