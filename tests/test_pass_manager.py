"""The pass manager and registry: pipeline strings, typed options, errors, verification, records,
printing, timing, cache keys, and user passes registered as functions and as classes."""
import io
import logging
from dataclasses import dataclass
from typing import Literal

import pytest

import avalon.ir as ir
import avalon.passes as ps
from avalon.passes import PassManager, PassRecord, PipelineError, register

TEXT = """
func @f(%x: tensor<4xf32>, %y: tensor<4xf32>) -> (tensor<4xf32>) {
  %0 = constant {value = 1.0, shape = [4]} : tensor<4xf32>
  %1 = mul %x, %0 : tensor<4xf32>
  %2 = add %x, %y : tensor<4xf32>
  %3 = add %y, %x : tensor<4xf32>
  %4 = tanh %2 : tensor<4xf32>
  %5 = mul %2, %3 : tensor<4xf32>
  %6 = add %5, %1 : tensor<4xf32>
  return %6
}"""


@pytest.fixture(autouse=True)
def restore_registry():
    saved = dict(ps.PASSES)
    yield
    ps.PASSES.clear()
    ps.PASSES.update(saved)


def graph():
    return ir.parse(TEXT)


def test_pipeline_runs_and_records_each_pass():
    g = graph()
    pm = PassManager.parse("canonicalize,cse,dce")  # DEFAULT_PIPELINE also fuses; see test_fuse.py
    assert pm.run(g) is True
    assert [r.name for r in pm.records] == ["canonicalize", "cse", "dce"]
    assert all(isinstance(r, PassRecord) and r.ms >= 0 for r in pm.records)
    assert [r.changed for r in pm.records] == [True, True, False]
    assert pm.records[-1].ir_after == str(g)
    assert "tanh" not in pm.records[0].ir_after  # canonicalize also drops dead pure ops
    assert str(g).count("add") == 2
    assert pm.run(g) is False  # a second run finds nothing to do
    assert [r.changed for r in pm.records] == [False, False, False]


def test_options_use_hyphens_and_are_converted_to_their_types():
    @register("opts")
    @dataclass
    class Opts:
        version = 3
        max_ops: int = 16
        scale: float = 1.0
        greedy: bool = False
        mode: Literal["fast", "exact"] = "exact"
        axes: tuple[int, ...] = ()
        label: str | None = None

        def run(self, graph):
            return False

    pm = PassManager.parse("opts{max-ops=8, scale=2.5,greedy, mode=fast,axes=[1,2],label=hi}")
    p = pm.stages[0].impl
    assert (p.max_ops, p.scale, p.greedy, p.mode, p.axes, p.label) == (8, 2.5, True, "fast", (1, 2), "hi")
    assert str(pm) == "opts{axes=[1,2],greedy=true,label=hi,max-ops=8,mode=fast,scale=2.5}"
    assert str(PassManager.parse(str(pm))) == str(pm)  # printing a pipeline gives a string that parses back
    assert str(PassManager.parse("opts{max-ops=16}")) == "opts"  # default values are not printed
    # keyword options work like pipeline options
    assert PassManager().add("opts", max_ops=4).stages[0].impl.max_ops == 4


def test_unknown_pass_lists_the_known_ones():
    with pytest.raises(PipelineError) as e:
        PassManager.parse("canonicalize,csee,dce")
    msg = str(e.value)
    assert "unknown pass 'csee'" in msg and "did you mean 'cse'" in msg
    assert "canonicalize, cse, dce" in msg
    assert isinstance(e.value, ValueError)


def test_option_errors_name_the_pass_and_list_its_options():
    with pytest.raises(PipelineError, match=r"pass 'canonicalize' has no option 'max-fold'; its options: "
                                            r"max-fold-elements: int = 1024, max-iterations: int = 10"):
        PassManager.parse("canonicalize{max-fold=3}")
    with pytest.raises(PipelineError, match=r"pass 'canonicalize' option 'max-iterations': expected an int, got 'lots'"):
        PassManager.parse("canonicalize{max-iterations=lots}")
    with pytest.raises(PipelineError, match="pass 'cse' has no option 'x'; it takes no options"):
        PassManager.parse("cse{x=1}")
    with pytest.raises(PipelineError, match="given twice"):
        PassManager.parse("canonicalize{max-iterations=1,max-iterations=2}")


@pytest.mark.parametrize("bad", ["cse,,dce", "cse{", "cse}", "cse{x=1}dce", "c se"])
def test_malformed_pipelines(bad):
    with pytest.raises(PipelineError):
        PassManager.parse(bad)


def test_empty_pipeline_does_nothing():
    g = graph()
    pm = PassManager.parse("")
    assert pm.run(g) is False and pm.records == [] and str(pm) == ""


def test_key_names_every_option_and_version():
    assert PassManager.parse("canonicalize,cse").key() == "canonicalize{max-fold-elements=1024,max-iterations=10}@1,cse@1"
    k1 = PassManager.parse("canonicalize{max-iterations=3}").key()
    assert k1 != PassManager.parse("canonicalize").key()

    @register("versioned", version=1)
    def versioned(graph):
        return False
    a = PassManager.parse("versioned").key()

    @register("versioned", version=2, replace=True)
    def versioned2(graph):
        return False
    assert a == "versioned@1" and PassManager.parse("versioned").key() == "versioned@2"


def test_verify_each_names_the_pass_that_broke_the_ir():
    @register("bad-reorder")
    def bad_reorder(graph):
        """Moves the last op to the front, before the values it uses are defined."""
        op = graph.ops[-1]
        graph.body.remove(op)
        graph.body.insert(0, op)
        return True

    with pytest.raises(ps.PassVerifyError) as e:
        PassManager.parse("cse,bad-reorder,dce", verify_each=True).run(graph())
    assert e.value.pass_name == "bad-reorder"
    assert "pass 'bad-reorder' left invalid IR" in str(e.value) and "used before it is defined" in str(e.value)
    assert isinstance(e.value, ir.VerifyError)
    PassManager.parse("bad-reorder").run(graph())  # without verify_each nothing checks


def test_verify_each_checks_the_input_too():
    g = graph()
    g.ops[0].attrs["shape"] = [5]
    with pytest.raises(ps.PassVerifyError, match="input graph does not verify") as e:
        PassManager.parse("cse", verify_each=True).run(g)
    assert e.value.pass_name is None


def test_exceptions_in_a_pass_name_it():
    @register("boom")
    def boom(graph):
        raise RuntimeError("kaput")

    with pytest.raises(RuntimeError, match="kaput") as e:
        PassManager.parse("cse,boom").run(graph())
    assert any("while running pass 'boom'" in n for n in getattr(e.value, "__notes__", []))


def test_print_after_all_changed_and_named():
    out = io.StringIO()
    PassManager.parse("canonicalize,cse,dce", print_after_all=True, stream=out).run(graph())
    text = out.getvalue()
    assert text.count("// -----// IR Dump After") == 3
    assert "IR Dump After canonicalize //" in text and "IR Dump After dce (no change) //" in text
    assert "func @f" in text

    out = io.StringIO()
    PassManager.parse("canonicalize,cse,dce", print_after_changed=True, stream=out).run(graph())
    assert out.getvalue().count("IR Dump After") == 2 and "After dce" not in out.getvalue()

    out = io.StringIO()
    PassManager.parse("canonicalize,cse,dce", print_after=("cse",), stream=out).run(graph())
    assert out.getvalue().count("IR Dump After") == 1 and "After cse" in out.getvalue()

    with pytest.raises(PipelineError, match="print_after names 'cs', not in this pipeline"):
        PassManager.parse("cse", print_after=("cs",)).run(graph())


def test_printing_defaults_to_stderr(capsys):
    PassManager.parse("dce", print_after_all=True).run(graph())
    assert "IR Dump After dce" in capsys.readouterr().err


def test_time_passes_report():
    out = io.StringIO()
    pm = PassManager.parse("canonicalize,cse", time_passes=True, stream=out)
    pm.run(graph())
    report = out.getvalue()
    assert "Pass execution timing report" in report and "canonicalize" in report and " cse" in report
    assert report == pm.timing_report()


def test_log_channel(caplog):
    with caplog.at_level(logging.DEBUG, logger="avalon.passes"):
        PassManager.parse("cse,dce").run(graph())
    msgs = [r.getMessage() for r in caplog.records if r.name == "avalon.passes"]
    assert any(m.startswith("cse: ") and "changed" in m for m in msgs)
    assert any(m.startswith("dce: ") for m in msgs)


def test_function_pass_with_options():
    @register("drop-tanh")
    def drop_tanh(graph, *, keep: int = 0) -> bool:
        """Erase unused tanh ops beyond the first `keep`."""
        dead = [op for op in graph.ops if op.name == "tanh" and not op.result.uses][keep:]
        for op in dead:
            op.erase()
        return bool(dead)

    info = ps.get_pass("drop-tanh")
    assert info.doc == "Erase unused tanh ops beyond the first `keep`."
    assert info.describe_options() == "its options: keep: int = 0"
    g = graph()
    pm = PassManager.parse("drop-tanh{keep=1}")
    assert pm.run(g) is False and "tanh" in str(g)
    assert PassManager.parse("drop-tanh").run(g) is True and "tanh" not in str(g)


def test_class_pass_with_annotated_init():
    seen = []

    @register
    class CountOps:
        """Counts ops of one name; changes nothing."""

        name = "count-ops"
        version = 7

        def __init__(self, op_name: str = "add", at_least: int = 0):
            self.op_name, self.at_least = op_name, at_least

        def run(self, graph) -> bool:
            seen.append(sum(op.name == self.op_name for op in graph.walk()))
            return False

    pm = PassManager.parse("count-ops{op-name=mul},count-ops")
    pm.run(graph())
    assert seen == [2, 3]
    assert pm.key() == "count-ops{at-least=0,op-name=mul}@7,count-ops{at-least=0,op-name=add}@7"
    with pytest.raises(PipelineError, match="count-ops.*its options: op-name: str = add, at-least: int = 0"):
        PassManager.parse("count-ops{opname=x}")


def test_registering_a_name_twice_is_an_error():
    with pytest.raises(ValueError, match="pass 'cse' is already registered"):
        @register("cse")
        def my_cse(graph):
            return False


def test_pass_returning_none_is_judged_by_its_output():
    def touch(graph):
        graph.ops[-1].erase() if not graph.ops[-1].result.uses else None

    def nothing(graph):
        return None

    g = ir.parse(TEXT)
    pm = PassManager([nothing, touch, "dce"])
    pm.run(g)
    assert [r.name for r in pm.records] == ["nothing", "touch", "dce"]
    assert [r.changed for r in pm.records] == [False, False, True]


def test_get_pass_runs_with_defaults():
    g = graph()
    assert ps.get_pass("dce")(g) is True
    with pytest.raises(PipelineError, match="unknown pass 'nope'"):
        ps.get_pass("nope")


def test_recorded_ir_is_the_ir_right_after_each_pass_though_printed_later():
    """`ir_after` is printed when read, from a snapshot: later passes must not show in an earlier record."""
    import io
    eager, lazy = graph(), graph()
    pe = PassManager.parse("canonicalize,cse,dce,fuse", print_after_all=True, stream=io.StringIO())
    pl = PassManager.parse("canonicalize,cse,dce,fuse")
    pe.run(eager)
    pl.run(lazy)
    assert [r.ir_after for r in pl.records] == [r.ir_after for r in pe.records]
    assert pl.records[0].ir_after != pl.records[-1].ir_after
    assert pl.records[-1].ir_after == str(lazy)


def test_run_pipeline_helper_and_record_ir_off():
    g = graph()
    assert ps.run_pipeline(g) is True
    pm = PassManager.parse("cse", record_ir=False)
    pm.run(g)
    assert pm.records[0].ir_after is None


def test_verify_each_catches_a_pass_that_denies_its_changes():
    @register("sneaky")
    def sneaky(graph):
        graph.ops[0].attrs["value"] = 2.0
        return False

    with pytest.raises(ps.PassVerifyError, match="pass 'sneaky' returned False but changed the IR"):
        PassManager.parse("sneaky", verify_each=True).run(graph())


def test_whitespace_in_pipelines_is_ignored():
    pm = PassManager.parse(" canonicalize { max-iterations = 2 } ,\n cse ")
    assert str(pm) == "canonicalize{max-iterations=2},cse"


def _matmul_relu() -> ir.Graph:
    return ir.parse("""func @f(%x: tensor<4x3xf32>, %w: tensor<3x5xf32>) -> (tensor<4x5xf32>) {
  %0 = matmul %x, %w : tensor<4x5xf32>
  %1 = relu %0 : tensor<4x5xf32>
  return %1
}""")


def test_the_target_reaches_passes_that_take_it_and_is_no_option():
    from avalon.passes.target import Target
    assert "target" not in ps.get_pass("layout").options and "target" not in ps.get_pass("memory-plan").options
    g = _matmul_relu()
    PassManager.parse("fuse", target=Target("no-gemm", kinds=("pointwise",))).run(g)
    assert [op.name for op in g.ops] == ["matmul", "relu"]  # a pointwise-only backend gets no epilogue group
    g = _matmul_relu()
    PassManager.parse("fuse").run(g)
    assert [op.name for op in g.ops] == ["fusion"]
    seen = []
    PassManager([lambda graph: seen.append(graph) or False], target=Target()).run(g)  # no `target`: works as before
    assert seen == [g]


def test_memory_plan_does_nothing_for_a_target_that_wants_none():
    from avalon.passes.target import Target
    g = _matmul_relu()
    PassManager.parse("memory-plan", target=Target("np", memory_plan=False)).run(g)
    assert g.analysis("memory_plan") is None
    PassManager.parse("memory-plan").run(g)
    assert g.analysis("memory_plan") is not None
    with pytest.raises(KeyError, match="declare it"):
        g.attach("nonsense", 1)
