"""Every op declared in the IR registry has a rule in every required rule table, and every trait is
declared and used (see CONTRIBUTING.md).

The tables are not listed here: each registers itself with `avalon.ir.registry.register_table`
where it is defined, and `load_tables` imports the modules that own the built-in ones. A new table
joins these checks by registering.
"""
import subprocess
import sys

import pytest

import avalon.ir as ir
from avalon.ir.registry import TABLES, load_tables, missing_rules, ops_with

load_tables()
NAMES = sorted(TABLES)


def test_the_built_in_tables_are_registered():
    assert {"reference", "vjp", "jvp", "lowering", "fold", "linalg"} <= set(TABLES)
    assert not TABLES["fold"].required  # folds are optional per op
    from avalon.autodiff import JVP, VJP
    from avalon.codegen.triton import LOWERING
    from avalon.ir import REFERENCE
    from avalon.passes import FOLD
    assert TABLES["reference"].table is REFERENCE and TABLES["vjp"].table is VJP and TABLES["jvp"].table is JVP
    assert TABLES["lowering"].table is LOWERING and TABLES["fold"].table is FOLD


@pytest.mark.parametrize("table", NAMES)
def test_every_op_has_a_rule(table):
    t = TABLES[table]
    missing = t.missing()
    assert not missing, f"{t.module} table '{table}' has no rule for: {', '.join(missing)}"


@pytest.mark.parametrize("table", NAMES)
def test_no_rule_for_an_unknown_op(table):
    t = TABLES[table]
    stale = t.unknown()
    assert not stale, f"{t.module} table '{table}' has rules for ops the registry does not define: {', '.join(stale)}"


def test_exemptions():
    """What the old hand-kept lists said: fusion runs its region (no reference rule of its own),
    an exempt op has no vjp rule, and the region ops are exactly the inlined ones."""
    from avalon.autodiff import INLINED, NON_DIFFERENTIABLE, VJP
    assert not TABLES["reference"].needs("fusion") and not TABLES["vjp"].needs("fusion")
    assert TABLES["lowering"].needs("fusion") and "fusion" in TABLES["lowering"].table
    assert not set(VJP) & NON_DIFFERENTIABLE
    assert set(INLINED) == {"fusion", "custom_vjp"} and "add" not in INLINED
    # custom_vjp is inlined into its forward before any backend: no lowering needed, none given
    assert not TABLES["lowering"].needs("custom_vjp") and "custom_vjp" not in TABLES["lowering"].table


def test_missing_rules_is_empty():
    assert missing_rules() == {}


def test_a_new_op_is_reported_until_every_table_has_its_rule():
    from avalon.autodiff import JVP, VJP
    from avalon.codegen.triton import LOWERING
    from avalon.codegen.triton.lowering import ElementwiseLowering
    from avalon.ir import REFERENCE
    from avalon.mlir import LINALG
    ir.define_op("twice_", 1, lambda ts, a: [ts[0]], traits={"elementwise", "pure"})
    try:
        assert missing_rules() == {"twice_": ["reference", "vjp", "lowering", "linalg", "jvp"]}
        REFERENCE["twice_"] = lambda attrs, x: x * 2
        LOWERING["twice_"] = ElementwiseLowering("elementwise", "{0} * 2")
        VJP["twice_"] = lambda b, op, g: [b("add", g, g)]
        JVP["twice_"] = lambda b, op, ts: [b("add", ts[0], ts[0])]
        LINALG["twice_"] = LINALG["add"]
        assert missing_rules() == {}
    finally:
        for table in (ir.OPS, REFERENCE, LOWERING, VJP, JVP, LINALG):
            table.pop("twice_", None)


def test_every_op_declares_known_traits():
    for name, d in ir.OPS.items():
        unknown = sorted(set(d.traits) - set(ir.TRAITS))
        assert not unknown, f"op '{name}' declares traits not in TRAITS: {unknown}"


def test_every_declared_trait_is_used():
    unused = sorted(t for t in ir.TRAITS if not ops_with(t))
    assert not unused, f"traits no op declares (drop them, or give an op them): {unused}"


def test_category_traits():
    """The categories passes and backends ask for are the traits of the ops they meant."""
    assert set(ops_with("selects")) == {"broadcast", "reshape", "transpose", "slice"}
    assert set(ops_with("bool_as_int")) == {"neg", "abs", "relu", "sign", "add", "sub", "mul", "div", "pow",
                                           "maximum", "minimum", "sum", "avg_pool2d", "avg_pool2d_grad"}
    assert set(ops_with("scan")) == {"cumsum"}


def test_rules_are_callable():
    for table in ("reference", "vjp", "fold"):
        assert all(callable(fn) for fn in TABLES[table].table.values()), table
    assert all(hasattr(lw, "emit") and hasattr(lw, "kind") for lw in TABLES["lowering"].table.values())


def test_register_table_rejects_an_unknown_exempt_trait():
    from avalon.ir.registry import register_table
    with pytest.raises(ValueError, match="unknown exempt trait"):
        register_table("bad_", {}, exempt_traits=("no-such-trait",))
    assert "bad_" not in TABLES


def test_cli_ops_missing():
    r = subprocess.run([sys.executable, "-m", "avalon.cli", "ops", "--missing"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "none"


def test_cli_ops_missing_lists_what_a_plugin_op_lacks():
    import os
    plugin = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "passes",
                          "fuse_silu.py")
    r = subprocess.run([sys.executable, "-m", "avalon.cli", "ops", "--missing", "--plugin", plugin],
                       capture_output=True, text=True)
    assert r.returncode == 1 and r.stdout == "silu -> vjp, jvp\n", (r.stdout, r.stderr)
