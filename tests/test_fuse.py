"""The `fuse` pass: IR before and after for each kind of fusion, fuel, the fusion log, the policy
hook, max-ops, cycles, and the README's LeNet training step (forward and backward)."""
import logging

import numpy as np
import pytest

import avalon as av
from avalon import ir, passes, zoo
from avalon.passes import fuse as fuse_mod
from avalon.passes.fusion_policy import Decision, FusionGroup, FusionPolicy, make_policy, register_policy
from avalon.passes.testing import assert_rewrites, assert_same_results
from avalon.trace import trace, trace_call
from avalon.zoo import LeNet


def nll(model, x, y):  # LeNet's training objective: zoo.nll is the criterion (prediction, target)
    return zoo.nll(model(x), y)



@pytest.fixture(autouse=True)
def _check_order(monkeypatch):
    """Check the pass's group order stays topological after every merge."""
    monkeypatch.setattr(fuse_mod._Fuser, "verify_order", True)


@pytest.fixture
def fusion_log(caplog):
    caplog.set_level(logging.DEBUG, logger="avalon.fusion")

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "avalon.fusion"]
    return lines


def fused_names(g: ir.Graph) -> list[str]:
    return [op.attrs["name"] for op in g.ops if op.name == "fusion"]


def run(text: str, pipeline: str = "fuse") -> ir.Graph:
    g = ir.parse(text)
    passes.PassManager.parse(pipeline, verify_each=True).run(g)
    return g


# --- one test per kind of fusion: IR before and after -----------------------------------------------

def test_elementwise_chain_pulls_in_broadcast_and_scalar_constant():
    assert_rewrites("fuse", """
    func @f(%x: tensor<4x8xf32>, %b: tensor<8xf32>) -> (tensor<4x8xf32>) {
      %0 = broadcast %b {shape = [4, 8]} : tensor<4x8xf32>
      %1 = add %x, %0 : tensor<4x8xf32>
      %2 = constant {value = 0.5, shape = [4, 8]} : tensor<4x8xf32>
      %3 = mul %1, %2 : tensor<4x8xf32>
      %4 = relu %3 : tensor<4x8xf32>
      return %4
    }""", """
    func @f(%x: tensor<4x8xf32>, %b: tensor<8xf32>) -> (tensor<4x8xf32>) {
      %0 = fusion @fused_add_mul_relu_0(%x, %b) : tensor<4x8xf32> {
        ^bb0(%arg0: tensor<4x8xf32>, %arg1: tensor<8xf32>):
        %1 = broadcast %arg1 {shape = [4, 8]} : tensor<4x8xf32>
        %2 = add %arg0, %1 : tensor<4x8xf32>
        %3 = constant {value = 0.5, shape = [4, 8]} : tensor<4x8xf32>
        %4 = mul %2, %3 : tensor<4x8xf32>
        %5 = relu %4 : tensor<4x8xf32>
        yield %5
      }
      return %0
    }""", changed=True)


def test_values_used_outside_become_extra_yields():
    assert_rewrites("fuse", """
    func @f(%x: tensor<4x8xf32>) -> (tensor<4x8xf32>, tensor<4x8xf32>) {
      %0 = exp %x : tensor<4x8xf32>
      %1 = neg %0 : tensor<4x8xf32>
      %2 = tanh %1 : tensor<4x8xf32>
      return %1, %2
    }""", """
    func @f(%x: tensor<4x8xf32>) -> (tensor<4x8xf32>, tensor<4x8xf32>) {
      %0, %1 = fusion @fused_exp_neg_tanh_0(%x) : tensor<4x8xf32>, tensor<4x8xf32> {
        ^bb0(%arg0: tensor<4x8xf32>):
        %2 = exp %arg0 : tensor<4x8xf32>
        %3 = neg %2 : tensor<4x8xf32>
        %4 = tanh %3 : tensor<4x8xf32>
        yield %3, %4
      }
      return %0, %1
    }""")


def test_log_softmax_is_one_row_reduction_group():
    assert_rewrites("fuse", """
    func @f(%x: tensor<4x8xf32>) -> (tensor<4x8xf32>) {
      %0 = max %x {axes = [1], keepdims = true} : tensor<4x1xf32>
      %1 = broadcast %0 {shape = [4, 8]} : tensor<4x8xf32>
      %2 = sub %x, %1 : tensor<4x8xf32>
      %3 = exp %2 : tensor<4x8xf32>
      %4 = sum %3 {axes = [1], keepdims = true} : tensor<4x1xf32>
      %5 = log %4 : tensor<4x1xf32>
      %6 = broadcast %5 {shape = [4, 8]} : tensor<4x8xf32>
      %7 = sub %2, %6 : tensor<4x8xf32>
      return %7
    }""", """
    func @f(%x: tensor<4x8xf32>) -> (tensor<4x8xf32>) {
      %0 = fusion @fused_max_sub_exp_sum_log_0(%x) : tensor<4x8xf32> {
        ^bb0(%arg0: tensor<4x8xf32>):
        %1 = max %arg0 {axes = [1], keepdims = true} : tensor<4x1xf32>
        %2 = broadcast %1 {shape = [4, 8]} : tensor<4x8xf32>
        %3 = sub %arg0, %2 : tensor<4x8xf32>
        %4 = exp %3 : tensor<4x8xf32>
        %5 = sum %4 {axes = [1], keepdims = true} : tensor<4x1xf32>
        %6 = log %5 : tensor<4x1xf32>
        %7 = broadcast %6 {shape = [4, 8]} : tensor<4x8xf32>
        %8 = sub %3, %7 : tensor<4x8xf32>
        yield %8
      }
      return %0
    }""")


def test_matmul_epilogue_bias_activation_residual():
    assert_rewrites("fuse", """
    func @f(%x: tensor<4x8xf32>, %w: tensor<6x8xf32>, %b: tensor<6xf32>, %r: tensor<4x6xf32>) -> (tensor<4x6xf32>) {
      %0 = transpose %w {perm = [1, 0]} : tensor<8x6xf32>
      %1 = matmul %x, %0 : tensor<4x6xf32>
      %2 = broadcast %b {shape = [4, 6]} : tensor<4x6xf32>
      %3 = add %1, %2 : tensor<4x6xf32>
      %4 = relu %3 : tensor<4x6xf32>
      %5 = add %4, %r : tensor<4x6xf32>
      return %5
    }""", """
    func @f(%x: tensor<4x8xf32>, %w: tensor<6x8xf32>, %b: tensor<6xf32>, %r: tensor<4x6xf32>) -> (tensor<4x6xf32>) {
      %0 = fusion @fused_matmul_add_relu_0(%x, %w, %b, %r) : tensor<4x6xf32> {
        ^bb0(%arg0: tensor<4x8xf32>, %arg1: tensor<6x8xf32>, %arg2: tensor<6xf32>, %arg3: tensor<4x6xf32>):
        %1 = transpose %arg1 {perm = [1, 0]} : tensor<8x6xf32>
        %2 = matmul %arg0, %1 : tensor<4x6xf32>
        %3 = broadcast %arg2 {shape = [4, 6]} : tensor<4x6xf32>
        %4 = add %2, %3 : tensor<4x6xf32>
        %5 = relu %4 : tensor<4x6xf32>
        %6 = add %5, %arg3 : tensor<4x6xf32>
        yield %6
      }
      return %0
    }""")


def test_conv_epilogue_stops_at_pooling():
    assert_rewrites("fuse", """
    func @f(%x: tensor<2x3x6x6xf32>, %w: tensor<4x3x3x3xf32>, %b: tensor<4xf32>)
        -> (tensor<2x4x4x4xf32>, tensor<2x4x2x2xf32>) {
      %0 = conv2d %x, %w : tensor<2x4x4x4xf32>
      %1 = reshape %b {shape = [1, 4, 1, 1]} : tensor<1x4x1x1xf32>
      %2 = broadcast %1 {shape = [2, 4, 4, 4]} : tensor<2x4x4x4xf32>
      %3 = add %0, %2 : tensor<2x4x4x4xf32>
      %4 = relu %3 : tensor<2x4x4x4xf32>
      %5 = max_pool2d %4 {kernel = [2, 2], stride = [2, 2]} : tensor<2x4x2x2xf32>
      return %3, %5
    }""", """
    func @f(%x: tensor<2x3x6x6xf32>, %w: tensor<4x3x3x3xf32>, %b: tensor<4xf32>)
        -> (tensor<2x4x4x4xf32>, tensor<2x4x2x2xf32>) {
      %0, %1 = fusion @fused_conv2d_add_relu_0(%x, %w, %b) : tensor<2x4x4x4xf32>, tensor<2x4x4x4xf32> {
        ^bb0(%arg0: tensor<2x3x6x6xf32>, %arg1: tensor<4x3x3x3xf32>, %arg2: tensor<4xf32>):
        %2 = conv2d %arg0, %arg1 : tensor<2x4x4x4xf32>
        %3 = reshape %arg2 {shape = [1, 4, 1, 1]} : tensor<1x4x1x1xf32>
        %4 = broadcast %3 {shape = [2, 4, 4, 4]} : tensor<2x4x4x4xf32>
        %5 = add %2, %4 : tensor<2x4x4x4xf32>
        %6 = relu %5 : tensor<2x4x4x4xf32>
        yield %5, %6
      }
      %7 = max_pool2d %1 {kernel = [2, 2], stride = [2, 2]} : tensor<2x4x2x2xf32>
      return %0, %7
    }""")


def test_conv_grad_input_with_relu_mask_epilogue():
    assert_rewrites("fuse", """
    func @f(%dy: tensor<2x4x4x4xf32>, %w: tensor<4x3x3x3xf32>, %x: tensor<2x3x6x6xf32>) -> (tensor<2x3x6x6xf32>) {
      %0 = conv2d_grad_input %dy, %w {input_shape = [2, 3, 6, 6]} : tensor<2x3x6x6xf32>
      %1 = constant {value = 0.0, shape = [2, 3, 6, 6]} : tensor<2x3x6x6xf32>
      %2 = gt %x, %1 : tensor<2x3x6x6xi1>
      %3 = where %2, %0, %1 : tensor<2x3x6x6xf32>
      return %3
    }""", """
    func @f(%dy: tensor<2x4x4x4xf32>, %w: tensor<4x3x3x3xf32>, %x: tensor<2x3x6x6xf32>) -> (tensor<2x3x6x6xf32>) {
      %0 = fusion @fused_conv2d_grad_input_gt_where_0(%dy, %w, %x) : tensor<2x3x6x6xf32> {
        ^bb0(%arg0: tensor<2x4x4x4xf32>, %arg1: tensor<4x3x3x3xf32>, %arg2: tensor<2x3x6x6xf32>):
        %1 = conv2d_grad_input %arg0, %arg1 {input_shape = [2, 3, 6, 6]} : tensor<2x3x6x6xf32>
        %2 = constant {value = 0.0, shape = [2, 3, 6, 6]} : tensor<2x3x6x6xf32>
        %3 = gt %arg2, %2 : tensor<2x3x6x6xi1>
        %4 = where %3, %1, %2 : tensor<2x3x6x6xf32>
        yield %4
      }
      return %0
    }""")


def test_pool_gradient_heads_a_group_with_its_consumers():
    assert_rewrites("fuse", """
    func @f(%x: tensor<1x2x4x4xf32>, %dy: tensor<1x2x2x2xf32>) -> (tensor<1x2x4x4xf32>) {
      %0 = max_pool2d_grad %x, %dy {kernel = [2, 2], stride = [2, 2]} : tensor<1x2x4x4xf32>
      %1 = mul %0, %x : tensor<1x2x4x4xf32>
      return %1
    }""", """
    func @f(%x: tensor<1x2x4x4xf32>, %dy: tensor<1x2x2x2xf32>) -> (tensor<1x2x4x4xf32>) {
      %0 = fusion @fused_max_pool2d_grad_mul_0(%x, %dy) : tensor<1x2x4x4xf32> {
        ^bb0(%arg0: tensor<1x2x4x4xf32>, %arg1: tensor<1x2x2x2xf32>):
        %1 = max_pool2d_grad %arg0, %arg1 {kernel = [2, 2], stride = [2, 2]} : tensor<1x2x4x4xf32>
        %2 = mul %1, %arg0 : tensor<1x2x4x4xf32>
        yield %2
      }
      return %0
    }""")


def test_reductions_over_different_axes_stay_apart(fusion_log):
    g = run("""
    func @f(%x: tensor<4x8xf32>) -> (tensor<4xf32>, tensor<8xf32>) {
      %0 = exp %x : tensor<4x8xf32>
      %1 = sum %0 {axes = [1]} : tensor<4xf32>
      %2 = sum %0 {axes = [0]} : tensor<8xf32>
      return %1, %2
    }""")
    assert len(fused_names(g)) == 1 and len(g.ops) == 2
    assert any("reduces tensor<4x8xf32> over [0], the group reduces tensor<4x8xf32> over [1]" in ln
               or "reduces tensor<4x8xf32> over [1], the group reduces tensor<4x8xf32> over [0]" in ln
               for ln in fusion_log())


@pytest.mark.parametrize("make", ["layer_norm", "batch_norm", "mse"])
def test_norms_and_losses_become_one_group(make):
    from avalon.nn import functional as F
    x = np.random.default_rng(0).standard_normal((4, 3, 5, 5)).astype(np.float32)
    w = np.random.default_rng(1).standard_normal(3).astype(np.float32)
    fn = {"layer_norm": lambda x, w: F.layer_norm(x, (5, 5)),
          "batch_norm": lambda x, w: F.batch_norm(x, None, None, w, w, training=True),
          "mse": lambda x, w: F.mse_loss(x, x * 2.0)}[make]
    g = trace(fn, x, w)
    before = g.clone()
    passes.run_pipeline(g, passes.DEFAULT_PIPELINE, verify_each=True)
    assert [op.name for op in g.ops] == ["fusion"]
    assert any(op.name == "sum" for op in g.ops[0].regions[0].ops)
    assert_same_results(before, g, rtol=1e-5, atol=1e-5)


# --- fuel, max-ops, cycles, order -------------------------------------------------------------------

CHAIN = """
func @f(%x: tensor<4x8xf32>) -> (tensor<4x8xf32>) {
  %0 = exp %x : tensor<4x8xf32>
  %1 = neg %0 : tensor<4x8xf32>
  %2 = tanh %1 : tensor<4x8xf32>
  %3 = abs %2 : tensor<4x8xf32>
  %4 = sigmoid %3 : tensor<4x8xf32>
  return %4
}"""


def test_fuel_zero_changes_nothing_and_one_makes_exactly_one_fusion(fusion_log):
    assert_rewrites("fuse{fuel=0}", CHAIN, CHAIN, changed=False)
    assert any("out of fuel (fuel=0)" in ln for ln in fusion_log())
    g = run(CHAIN, "fuse{fuel=1}")
    assert [op.name for op in g.ops].count("fusion") == 1
    (group,) = [op for op in g.ops if op.name == "fusion"]
    assert len(group.regions[0].ops) == 2 and len(g.ops) == 4
    assert_same_results(ir.parse(CHAIN), g)


def test_fuel_n_performs_the_first_n_fusions(fusion_log, caplog):
    """What bisection needs: fuel=n does exactly the first n fusions of the unlimited run, in order,
    so the last `fusing` line of the smallest failing fuel names the culprit."""
    def fusions(fuel: int) -> list[str]:
        caplog.clear()
        run(TRAIN_LIKE, f"fuse{{fuel={fuel}}}")
        return [ln.split(" into ")[0] for ln in fusion_log() if ln.startswith("fusing ")]
    every = fusions(-1)
    assert len(every) >= 4
    for n in range(len(every) + 1):
        assert fusions(n) == every[:n]


def test_max_ops_bounds_each_region(fusion_log):
    g = run(CHAIN, "fuse{max-ops=2}")
    assert all(len(op.regions[0].ops) <= 2 for op in g.ops if op.name == "fusion")
    assert len(fused_names(g)) == 2
    assert any("(max-ops=2)" in ln for ln in fusion_log())
    assert_same_results(ir.parse(CHAIN), g)


def test_no_fusion_through_an_op_in_between(fusion_log):
    text = """
    func @f(%x: tensor<4x4xf32>, %w: tensor<4x4xf32>) -> (tensor<4x4xf32>) {
      %0 = exp %x : tensor<4x4xf32>
      %1 = matmul %0, %w : tensor<4x4xf32>
      %2 = add %0, %1 : tensor<4x4xf32>
      return %2
    }"""
    assert_rewrites("fuse{epilogue=false}", text, text, changed=False)
    assert "not fusing %2 (add) into %0 (exp): it would create a cycle through %1 (matmul)" in fusion_log()


def test_a_far_consumer_moves_into_its_producers_group_and_order_stays_valid():
    """The relu mask of a backward pass joins the forward conv group; what lies between keeps its order."""
    g = run("""
    func @f(%x: tensor<1x2x4x4xf32>, %w: tensor<2x2x1x1xf32>, %v: tensor<1x2x4x4xf32>) -> (tensor<1x2x4x4xf32>) {
      %0 = conv2d %x, %w : tensor<1x2x4x4xf32>
      %1 = relu %0 : tensor<1x2x4x4xf32>
      %2 = max_pool2d %1 {kernel = [2, 2], stride = [2, 2]} : tensor<1x2x2x2xf32>
      %3 = max_pool2d_grad %1, %2 {kernel = [2, 2], stride = [2, 2]} : tensor<1x2x4x4xf32>
      %4 = constant {value = 0.0, shape = [1, 2, 4, 4]} : tensor<1x2x4x4xf32>
      %5 = gt %0, %4 : tensor<1x2x4x4xi1>
      %6 = where %5, %3, %v : tensor<1x2x4x4xf32>
      return %6
    }""")
    first = g.ops[0]
    assert first.name == "fusion" and [o.name for o in first.regions[0].ops if o.name != "constant"] == [
        "conv2d", "relu", "gt"]
    ir.verify(g)


def test_fuse_twice_and_dce_after_find_nothing():
    g = trace_lenet_step(2)
    passes.run_pipeline(g, passes.DEFAULT_PIPELINE)
    text = str(g)
    assert passes.get_pass("fuse")(g) is False
    assert passes.get_pass("dce")(g) is False
    assert str(g) == text


# --- the log and the policy -------------------------------------------------------------------------

def test_every_decision_is_one_log_line_with_its_reason(fusion_log):
    run("""
    func @f(%x: tensor<2x3x6x6xf32>, %w: tensor<4x3x3x3xf32>) -> (tensor<2x4x2x2xf32>) {
      %0 = conv2d %x, %w : tensor<2x4x4x4xf32>
      %1 = relu %0 : tensor<2x4x4x4xf32>
      %2 = max_pool2d %1 {kernel = [2, 2], stride = [2, 2]} : tensor<2x4x2x2xf32>
      return %2
    }""")
    lines = fusion_log()
    assert "fusing %1 (relu) into fused_conv2d_relu_0 (contraction kernel)" in lines
    assert ("not fusing %2 (max_pool2d) into fused_conv2d_relu_0: 'max_pool2d' reads windows of a value "
            "computed in the group (it would be recomputed per tap)") in lines
    assert "group @fused_conv2d_relu_0: %0 (conv2d), %1 (relu)" in lines
    assert lines[-1] == "fuse: 1 fusions, 1 groups"
    assert len(lines) == len(set(lines))


class NoExp(FusionPolicy):
    """A policy that keeps exp out of every group."""

    def can_fuse(self, group, other):
        if any(op.name == "exp" for op in group.ops + other.ops):
            return Decision(False, "exp stays alone")
        return super().can_fuse(group, other)


def test_the_policy_is_swappable(fusion_log):
    old = fuse_mod.set_policy(NoExp)
    try:
        g = run(CHAIN)
    finally:
        fuse_mod.set_policy(old)
    assert g.ops[0].name == "exp" and fused_names(g) == ["fused_neg_tanh_abs_sigmoid_0"]
    assert "not fusing %1 (neg) into %0 (exp): exp stays alone" in fusion_log()
    assert fused_names(run(CHAIN)) == ["fused_exp_neg_tanh_abs_sigmoid_0"]  # the default is back


def test_a_registered_policy_is_named_in_the_pipeline():
    register_policy("no-exp", NoExp)
    g = run(CHAIN, "fuse{policy=no-exp}")
    assert g.ops[0].name == "exp"
    with pytest.raises(ValueError, match="unknown fusion policy 'nope'; known: default, no-exp"):
        run(CHAIN, "fuse{policy=nope}")
    assert isinstance(make_policy("no-exp", epilogue=True, reductions=True), NoExp)


def test_an_instance_policy_and_the_options():
    fuse_mod.set_policy(FusionPolicy(reductions=False))
    try:
        g = run("""
        func @f(%x: tensor<4x8xf32>) -> (tensor<4xf32>) {
          %0 = exp %x : tensor<4x8xf32>
          %1 = sum %0 {axes = [1]} : tensor<4xf32>
          return %1
        }""")
    finally:
        fuse_mod.set_policy(None)
    assert [op.name for op in g.ops] == ["exp", "sum"]
    with pytest.raises(passes.PipelineError, match="max-ops: int = -1"):
        passes.PassManager.parse("fuse{max-op=3}")


# --- the README's LeNet, forward and backward ---------------------------------------------------------

TRAIN_LIKE = """
func @f(%x: tensor<4x8xf32>, %w: tensor<6x8xf32>, %b: tensor<6xf32>) -> (tensor<4x6xf32>, tensor<4xf32>) {
  %0 = transpose %w {perm = [1, 0]} : tensor<8x6xf32>
  %1 = matmul %x, %0 : tensor<4x6xf32>
  %2 = broadcast %b {shape = [4, 6]} : tensor<4x6xf32>
  %3 = add %1, %2 : tensor<4x6xf32>
  %4 = max %3 {axes = [1], keepdims = true} : tensor<4x1xf32>
  %5 = broadcast %4 {shape = [4, 6]} : tensor<4x6xf32>
  %6 = sub %3, %5 : tensor<4x6xf32>
  %7 = exp %6 : tensor<4x6xf32>
  %8 = sum %7 {axes = [1]} : tensor<4xf32>
  %9 = log %8 : tensor<4xf32>
  return %6, %9
}"""


def trace_lenet_step(batch: int) -> ir.Graph:
    av.random.manual_seed(0)
    model = LeNet()
    x = np.random.default_rng(0).standard_normal((batch, 1, 28, 28)).astype(np.float32)
    y = np.arange(batch) % 10
    return trace_call(av.value_and_grad(nll), (model, x, y)).graph


def test_lenet_training_step_fuses_forward_and_backward():
    g = trace_lenet_step(8)
    before = g.clone()
    passes.PassManager.parse(passes.DEFAULT_PIPELINE, verify_each=True).run(g)
    names = fused_names(g)
    assert len(before.ops) >= 90 and len(g.ops) <= 25, (len(before.ops), len(g.ops))
    assert sum(n.startswith("fused_conv2d_add_relu") for n in names) == 2  # forward conv epilogues
    assert any(n.startswith("fused_matmul_add_relu") for n in names)  # fc1 epilogue
    assert sum(n.startswith("fused_max_pool2d_grad_where_sum") for n in names) == 2  # relu/pool grads + bias grads
    softmax = [op for op in g.ops if op.name == "fusion" and op.attrs["name"].startswith("fused_max_sub_exp_sum_log")]
    assert softmax and {"max", "sum", "exp", "log", "one_hot"} <= {o.name for o in softmax[0].regions[0].ops}
    policy = FusionPolicy()
    for op in g.ops:
        if op.name == "fusion":  # every group is a shape the Triton backend makes one kernel of
            region = op.regions[0]
            view = fuse_mod.FusionGroup(region.ops, {o: i for i, o in enumerate(region.ops)},
                                        policy.inlinable, fused=True)
            assert view.size <= 32
            assert policy.kernel_problem(_with_outputs(view, region)) is None, op.attrs["name"]
    assert_same_results(before, g, rtol=1e-4, atol=1e-4)


def _with_outputs(view, region):
    """A region's group view whose outputs are what the region yields."""
    view.__dict__["outputs"] = list(region.results)
    return view


def test_a_group_reading_through_an_inlinable_op_before_it_moves_with_what_it_reads():
    """A 2-layer GRU's training step under the CPU target: a group that clones an inlinable op may
    sit before that op's own unit, so the walk for what must move past a merge went on through it
    (it stopped there and left a group before a value it read: 'used before it is defined')."""
    from avalon import nn, optim
    from avalon.codegen.numpy.loops import CPU
    from avalon.nn import functional as F
    av.manual_seed(0)

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.rnn, self.out = nn.Embedding(20, 16), nn.GRU(16, 16, 2), nn.Linear(16, 20)

        def forward(self, inp):
            h, outs = av.zeros(2, inp.size(0), 16), []
            for c in range(inp.size(1)):
                o, h = self.rnn(self.emb(inp[:, c]).view(1, inp.size(0), -1), h)
                outs.append(self.out(o.view(inp.size(0), -1)))
            return av.stack(outs, 1).view(-1, 20)

    def step(m, opt, x, y):
        loss, g = av.value_and_grad(lambda m, x, y: F.cross_entropy(m(x), y))(m, x, y)
        opt.step(g)
        return loss
    m = M()
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 20, (4, 2)), rng.integers(0, 20, (8,))
    g = av.trace(step, m, optim.SGD(m, lr=0.1), x, y)
    passes.PassManager.parse("canonicalize,cse,dce,fuse", target=CPU, verify_each=True).run(g)
    assert sum(op.name == "fusion" for op in g.ops) > 10


def test_shifts_of_shifts_are_not_fused_into_one_recomputing_kernel(fusion_log):
    """cumprod by doubling steps reads each step at two shifts; fused whole, one kernel computed
    every stage at every shift (6,000 lines for n=700). The policy stops at MAX_RECOMPUTE maps."""
    from avalon.passes.fusion_policy import MAX_RECOMPUTE
    x = (1 + 0.01 * np.random.default_rng(0).standard_normal((3, 100))).astype(np.float32)
    g = trace(lambda x: av.cumprod(x, dim=1), x)
    passes.PassManager.parse("canonicalize,cse,dce,fuse").run(g)
    groups = [op for op in g.ops if op.name == "fusion"]
    assert len(groups) >= 2
    assert any("different index maps per element" in ln for ln in fusion_log())
    for op in groups:  # no member is computed at more maps than allowed
        view = FusionGroup(list(op.regions[0].ops), {o: i for i, o in enumerate(op.regions[0].ops)},
                                    lambda o: False)
        assert view.recompute[0] <= MAX_RECOMPUTE
    (out,) = av.interpret(g, x)
    np.testing.assert_allclose(out, np.cumprod(x, axis=1), rtol=1e-5)
