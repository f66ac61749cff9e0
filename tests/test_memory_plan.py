"""memory-plan: buffers reused by lifetime, in place where an elementwise operand dies; checked by
running graphs with every planned value stored in its buffer of one shared arena."""
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import avalon as av
import avalon.ir as ir
from avalon.ir import Builder, Graph, Interpreter, TensorType
from avalon.passes import PassManager
from avalon.passes.layout import is_view
from avalon.passes.memory_plan import MemoryPlan, plan_memory
from avalon.passes.testing import random_inputs

CHAIN = """
func @f(%x: tensor<4x8xf32>, %w: tensor<8x8xf32>) -> (tensor<4x8xf32>) {
  %0 = matmul %x, %w : tensor<4x8xf32>
  %1 = relu %0 : tensor<4x8xf32>
  %2 = matmul %1, %w : tensor<4x8xf32>
  %3 = exp %2 : tensor<4x8xf32>
  %4 = add %3, %1 : tensor<4x8xf32>
  %5 = transpose %w {perm = [1, 0]} : tensor<8x8xf32>
  %6 = matmul %4, %5 : tensor<4x8xf32>
  %7 = neg %6 : tensor<4x8xf32>
  return %7
}"""


class ArenaInterpreter(Interpreter):
    """Stores every planned value in its buffer (views of one byte arena) and reads it from there:
    if the plan let two live values share memory, a later op reads clobbered data."""

    free_intermediates = False

    def __init__(self, graph: Graph, plan: MemoryPlan):
        super().__init__(graph)
        self.plan = plan
        self.arena = np.full(max(plan.planned_bytes, 1), 0xAB, dtype=np.uint8)
        self.offsets = plan.offsets

    def run_op(self, op, args):
        results = super().run_op(op, args)
        out = []
        for r, a in zip(op.results, results):
            b = self.plan.assignment.get(r)
            if b is None:
                # numpy makes views where a backend copies (a transpose that is not a view under
                # its layout, a broadcast): only the plan's views may keep pointing into the arena
                if not is_view(op) and np.shares_memory(a, self.arena):
                    a = a.copy()
                out.append(a)
                continue
            assert r.type.nbytes <= self.plan.buffers[b]
            view = np.frombuffer(self.arena, dtype=a.dtype, count=a.size, offset=self.offsets[b]).reshape(a.shape)
            view[...] = a
            out.append(view)
        return out


def check_plan(graph: Graph, plan: MemoryPlan, inputs) -> None:
    """Invariants of a plan, then the arena run agrees with the reference."""
    outputs = set(graph.outputs)
    for v, b in plan.assignment.items():
        assert v not in outputs and v.type.nbytes <= plan.buffers[b]
    by_buf: dict[int, list] = {}
    for v, b in plan.assignment.items():
        by_buf.setdefault(b, []).append(v)
    for vals in by_buf.values():
        vals.sort(key=lambda v: plan.lifetimes[v])
        for a, b in zip(vals, vals[1:]):
            sa, ea = plan.lifetimes[a]
            sb, _ = plan.lifetimes[b]
            # one value after the other; touching only where b overwrites a in place
            assert ea < sb or (ea == sb and plan.inplace.get(b) is a), (a, b)
    assert plan.live_peak_bytes <= plan.planned_bytes <= plan.naive_bytes
    want = av.interpret(graph, *inputs)
    got = ArenaInterpreter(graph, plan).run(*inputs)
    for w, g in zip(want, got):
        np.testing.assert_array_equal(g, w)


def test_chain_plan_reuses_buffers_and_writes_elementwise_results_in_place():
    g = ir.parse(CHAIN)
    text = str(g)
    plan = plan_memory(g)
    assert str(g) == text  # the IR is untouched: the plan is a side table
    assert g.analysis("memory_plan") is plan and plan.is_current(g)
    names = {v: i for i, v in enumerate(r for op in g.ops for r in op.results)}
    vals = list(names)
    # relu over the dying matmul result, exp and add over theirs
    assert {names[r]: names[v] for r, v in plan.inplace.items()} == {1: 0, 3: 2, 4: 3}
    assert vals[7] not in plan.assignment  # the output is the caller's
    assert plan.naive_bytes == 6 * 128 + 256
    assert plan.buffers == [256, 128, 128] and plan.planned_bytes == 512
    assert plan.assignment[vals[5]] == plan.assignment[vals[0]]  # the transpose reuses dead %0/%1 storage
    check_plan(g, plan, random_inputs(g))


def test_report_lists_buffers_and_values():
    g = ir.parse(CHAIN)
    report = plan_memory(g).report()
    assert report.startswith("memory plan for @f: 7 intermediates in 3 buffers; 1.0 KiB one buffer each -> "
                             "512 B planned (50.0%)")
    assert "%1 [1..4] (in place of %0)" in report
    assert "buf2" in report and "%6 = matmul %4, %5 : tensor<4x8xf32>" in report


def test_no_in_place_for_non_elementwise_ops_or_operands_still_live():
    g = ir.parse("""
    func @f(%x: tensor<4x4xf32>) -> (tensor<4x4xf32>) {
      %0 = exp %x : tensor<4x4xf32>
      %1 = matmul %0, %0 : tensor<4x4xf32>
      %2 = neg %1 : tensor<4x4xf32>
      %3 = add %2, %1 : tensor<4x4xf32>
      %4 = mul %3, %2 : tensor<4x4xf32>
      return %4
    }""")
    plan = plan_memory(g)
    r = [op.results[0] for op in g.ops]
    assert r[1] not in plan.inplace            # matmul reads %0 all over while writing
    assert r[2] not in plan.inplace            # %1 is still needed by the add
    assert plan.inplace.get(r[3]) is r[1]      # add: %1 dies there (%2 lives on to the mul)
    check_plan(g, plan, random_inputs(g))


def test_views_share_their_operand_buffer():
    g = ir.parse("""
    func @f(%x: tensor<4x6xf32>, %w: tensor<6x4xf32>) -> (tensor<4x4xf32>) {
      %0 = exp %x : tensor<4x6xf32>
      %1 = reshape %0 {shape = [6, 4]} : tensor<6x4xf32>
      %2 = transpose %w {perm = [1, 0]} : tensor<4x6xf32, layout = [1, 0]>
      %3 = matmul %2, %1 : tensor<4x4xf32>
      return %3
    }""")
    plan = plan_memory(g)
    r = [op.results[0] for op in g.ops]
    assert set(plan.assignment) == {r[0]}      # the reshape is %0's bytes, the transpose %w's
    assert plan.lifetimes[r[0]] == (0, 3)      # %0 lives as long as its view is read
    assert plan_memory(g, alias_views=False).naive_bytes == 96 * 3
    check_plan(g, plan, random_inputs(g))


def test_a_transpose_that_only_moves_size_one_dims_is_a_view():
    # (1, 4) -> (4, 1) keeps every element where it was: the Triton backend aliases it, so the plan
    # must keep its operand alive for as long as the transpose is read
    g = ir.parse("""
    func @f(%x: tensor<1x4xf32>, %w: tensor<1x3xf32>) -> (tensor<4x3xf32>) {
      %0 = exp %x : tensor<1x4xf32>
      %1 = transpose %0 {perm = [1, 0]} : tensor<4x1xf32>
      %2 = neg %w : tensor<1x3xf32>
      %3 = matmul %1, %2 : tensor<4x3xf32>
      return %3
    }""")
    assert is_view(g.ops[1])
    plan = plan_memory(g)
    r = [op.results[0] for op in g.ops]
    assert r[1] not in plan.assignment and plan.lifetimes[r[0]] == (0, 3)
    assert plan.assignment[r[0]] != plan.assignment[r[2]]
    check_plan(g, plan, random_inputs(g))


def test_fused_elementwise_group_can_run_in_place():
    g = ir.parse("""
    func @f(%x: tensor<4x4xf32>, %y: tensor<4x4xf32>) -> (tensor<4x4xf32>) {
      %0 = exp %x : tensor<4x4xf32>
      %1 = fusion @fused_add_relu_0(%0, %y) : tensor<4x4xf32> {
        ^bb0(%a: tensor<4x4xf32>, %b: tensor<4x4xf32>):
        %2 = add %a, %b : tensor<4x4xf32>
        %3 = relu %2 : tensor<4x4xf32>
        yield %3
      }
      %4 = fusion @fused_sum_1(%1) : tensor<4x4xf32> {
        ^bb0(%c: tensor<4x4xf32>):
        %5 = sum %c {axes = [1], keepdims = true} : tensor<4x1xf32>
        %6 = broadcast %5 {shape = [4, 4]} : tensor<4x4xf32>
        yield %6
      }
      %7 = neg %4 : tensor<4x4xf32>
      return %7
    }""")
    plan = plan_memory(g)
    r = [op.results[0] for op in g.ops]
    assert plan.inplace.get(r[1]) is r[0]      # elementwise group over its dying operand
    assert r[2] not in plan.inplace            # a row reduction reads the whole row first
    check_plan(g, plan, random_inputs(g))


def test_pass_in_a_pipeline_records_the_plan_and_goes_stale_on_rewrite():
    g = ir.parse(CHAIN)
    pm = PassManager.parse("memory-plan{inplace=false}", verify_each=True)
    assert pm.run(g) is False and pm.records[0].name == "memory-plan"
    plan = g.analysis("memory_plan")
    assert not plan.inplace and plan.is_current(g)
    Builder(g, before=g.ops[0])("exp", g.inputs[0])
    assert not plan.is_current(g)


_UNARY = ["exp", "neg", "relu", "tanh"]
_BINARY = ["add", "mul", "sub"]


@given(st.lists(st.tuples(st.sampled_from(["unary", "binary", "matmul", "transpose", "reshape"]),
                          st.integers(0, 1 << 16), st.integers(0, 1 << 16)), min_size=1, max_size=25),
       st.integers(0, 1 << 16))
def test_random_graphs_run_correctly_from_their_planned_buffers(steps, out_pick):
    g = Graph("rand")
    b = Builder(g)
    vals = [g.add_input(TensorType((4, 4), "f32"), "x"), g.add_input(TensorType((4, 4), "f32"), "y")]
    for kind, i, j in steps:
        a, c = vals[i % len(vals)], vals[j % len(vals)]
        if kind == "unary":
            vals.append(b(_UNARY[j % 4], a))
        elif kind == "binary":
            vals.append(b(_BINARY[j % 3], a, c))
        elif kind == "matmul":
            vals.append(b("matmul", a, c))
        elif kind == "transpose":
            vals.append(b("transpose", a, perm=[1, 0]))
        else:
            vals.append(b("reshape", b("reshape", a, shape=[16]), shape=[4, 4]))
    n_out = 1 + out_pick % 3
    g.set_outputs([vals[-1]] + [vals[(out_pick >> k) % len(vals)] for k in range(1, n_out)])
    PassManager.parse("layout,memory-plan", verify_each=True).run(g)
    inputs = [np.tanh(a) for a in random_inputs(g)]  # keep exp chains finite
    check_plan(g, g.analysis("memory_plan"), inputs)


def test_lenet_training_step_plan(rng):
    from avalon import optim
    from avalon.demo import Net
    from avalon.nn import functional as F

    av.manual_seed(0)
    net = Net()
    opt = optim.SGD(net, lr=0.1, momentum=0.9)

    def step(model, opt, x, y):
        loss, grads = av.value_and_grad(lambda m, x, y: F.nll_loss(m(x), y))(model, x, y)
        opt.step(grads)
        return loss

    x = rng.standard_normal((4, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, 4)
    g = av.trace(step, net, opt, x, y)
    PassManager.parse("canonicalize,cse,dce,layout,memory-plan", verify_each=True).run(g)
    plan = g.analysis("memory_plan")
    assert plan.planned_bytes < 0.6 * plan.naive_bytes
    assert len(g.outputs) > 1 + 2 * 8  # the loss, then parameter and momentum updates
    check_plan(g, plan, random_inputs(g))
