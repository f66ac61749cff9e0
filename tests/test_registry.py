"""Every op declared in the IR registry has a rule in every backend table (see CONTRIBUTING.md).

A new table joins by adding a row to TABLES: (import path, table name, ops it may leave out).
"""
import importlib

import pytest

import avalon.ir as ir

TABLES = [
    # fusion runs its region; there is nothing to compute for the op itself
    ("avalon.ir", "REFERENCE", {"fusion"}),
    ("avalon.codegen.triton", "LOWERING", set()),
]


@pytest.mark.parametrize("module,table,exempt", TABLES, ids=[t[1] for t in TABLES])
def test_every_op_has_a_rule(module, table, exempt):
    rules = getattr(importlib.import_module(module), table)
    missing = sorted(name for name in ir.OPS if name not in rules and name not in exempt)
    assert not missing, f"{module}.{table} has no rule for: {', '.join(missing)}"


@pytest.mark.parametrize("module,table,exempt", TABLES, ids=[t[1] for t in TABLES])
def test_no_rule_for_an_unknown_op(module, table, exempt):
    rules = getattr(importlib.import_module(module), table)
    stale = sorted(name for name in rules if name not in ir.OPS)
    assert not stale, f"{module}.{table} has rules for ops the registry does not define: {', '.join(stale)}"


def test_rules_are_callable():
    from avalon.ir import REFERENCE
    assert all(callable(fn) for fn in REFERENCE.values())
