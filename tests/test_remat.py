"""Recompute instead of store (`avalon.passes.remat`, the last step of `fuse`): a group result that
only other groups read, computed by a few elementwise ops from values stored anyway, is recomputed
in its readers; the producer stops yielding it. Same values, fewer bytes stored and re-read."""
import logging

import numpy as np
import pytest

from avalon import ir, passes
from avalon.codegen.triton.testing import check
from avalon.passes.testing import assert_same_results

# a Linear + tanh activation (forward) and the backward's group reading its intermediates
GELU_LIKE = """
func @f(%x: tensor<8x16xf32>, %w: tensor<16x32xf32>, %b: tensor<32xf32>, %g: tensor<8x4xf32>, %w2: tensor<32x4xf32>, %w2t: tensor<4x32xf32>) -> (tensor<8x4xf32>, tensor<8x32xf32>, tensor<32xf32>) {
  %0 = matmul %x, %w : tensor<8x32xf32>
  %1 = broadcast %b {shape = [8, 32]} : tensor<8x32xf32>
  %2 = add %0, %1 : tensor<8x32xf32>
  %3 = tanh %2 : tensor<8x32xf32>
  %4 = constant {value = 1.0, shape = [8, 32]} : tensor<8x32xf32>
  %5 = add %4, %3 : tensor<8x32xf32>
  %6 = mul %2, %5 : tensor<8x32xf32>
  %7 = matmul %6, %w2 : tensor<8x4xf32>
  %8 = matmul %g, %w2t : tensor<8x32xf32>
  %9 = mul %3, %3 : tensor<8x32xf32>
  %10 = sub %4, %9 : tensor<8x32xf32>
  %11 = mul %2, %10 : tensor<8x32xf32>
  %12 = add %5, %11 : tensor<8x32xf32>
  %13 = mul %8, %12 : tensor<8x32xf32>
  %14 = sum %13 {axes = [0]} : tensor<32xf32>
  return %7, %13, %14
}"""


@pytest.fixture
def fusion_log(caplog):
    caplog.set_level(logging.DEBUG, logger="avalon.fusion")
    return lambda: [r.getMessage() for r in caplog.records if r.name == "avalon.fusion"]


def fused(text: str, pipeline: str) -> ir.Graph:
    g = ir.parse(text)
    passes.PassManager.parse(pipeline, verify_each=True).run(g)
    uses = {id(u) for op in g.ops for r in op.results for u, _ in r.uses} | {id(u) for v in g.inputs for u, _ in v.uses}
    live = {id(op) for op in g.ops} | {id(g.body.terminator)}
    assert uses <= live, "a value is still read by an op that is not in the graph"
    return g


def group(g: ir.Graph, prefix: str) -> ir.Op:
    return next(op for op in g.ops if op.name == "fusion" and op.attrs["name"].startswith(prefix))


def test_tanh_intermediates_are_recomputed_in_the_backward_group(fusion_log):
    g = fused(GELU_LIKE, "fuse")
    plain = fused(GELU_LIKE, "fuse{remat=false}")
    fwd, fwd0 = group(g, "fused_matmul_add_tanh"), group(plain, "fused_matmul_add_tanh")
    assert len(fwd0.results) == 4 and len(fwd.results) == 2  # tanh and 1 + tanh no longer stored
    bwd = group(g, "fused_matmul_mul_sub")
    assert "tanh" in [op.name for op in bwd.regions[0].ops] and fwd.results[0] in bwd.operands
    assert sum("recomputing" in ln for ln in fusion_log()) == 2
    assert_same_results(ir.parse(GELU_LIKE), g)
    check(g, fused=None, kind="contraction", rng=np.random.default_rng(3))  # the Triton kernels too


def test_what_needs_a_reduction_or_is_read_outside_groups_stays_stored(fusion_log):
    """A softmax's result needs its row sum (a reduction) and a top-level matmul reads it."""
    text = """
    func @f(%x: tensor<8x16xf32>, %w: tensor<16x4xf32>) -> (tensor<8x4xf32>, tensor<8x16xf32>) {
      %0 = exp %x : tensor<8x16xf32>
      %1 = sum %0 {axes = [1], keepdims = true} : tensor<8x1xf32>
      %2 = broadcast %1 {shape = [8, 16]} : tensor<8x16xf32>
      %3 = div %0, %2 : tensor<8x16xf32>
      %4 = matmul %3, %w : tensor<8x4xf32>
      %5 = mul %3, %3 : tensor<8x16xf32>
      %6 = exp %5 : tensor<8x16xf32>
      %7 = sum %6 {axes = [0], keepdims = true} : tensor<1x16xf32>
      %8 = broadcast %7 {shape = [8, 16]} : tensor<8x16xf32>
      %9 = mul %6, %8 : tensor<8x16xf32>
      return %4, %9
    }"""
    g = fused(text, "fuse")
    assert len(group(g, "fused_exp_sum_div").results) == 1
    assert not any(ln.startswith("recomputing") for ln in fusion_log())
    assert_same_results(ir.parse(text), g)


def test_a_matmul_operand_is_never_recomputed_in_its_group(fusion_log):
    """exp(x) + 1 read as the A operand of a matmul group: recomputing it there (from exp(x), which
    the producer keeps for the graph's output) would be a prologue, recomputed for every tile."""
    text = """
    func @f(%x: tensor<8x16xf32>, %w: tensor<16x4xf32>, %b: tensor<4xf32>) -> (tensor<8x4xf32>, tensor<8x16xf32>) {
      %0 = exp %x : tensor<8x16xf32>
      %1 = constant {value = 1.0, shape = [8, 16]} : tensor<8x16xf32>
      %2 = add %0, %1 : tensor<8x16xf32>
      %3 = matmul %2, %w : tensor<8x4xf32>
      %4 = broadcast %b {shape = [8, 4]} : tensor<8x4xf32>
      %5 = add %3, %4 : tensor<8x4xf32>
      return %5, %0
    }"""
    g = fused(text, "fuse")
    assert any("would not stay one contraction kernel" in ln for ln in fusion_log()), fusion_log()
    assert len(group(g, "fused_exp_add").results) == 2
    assert_same_results(ir.parse(text), g)


def test_a_graph_input_is_not_read_again_after_its_group():
    """A recipe reading a graph input (a parameter, a momentum buffer) again in a later group would
    keep the input's in-place update from reusing its storage: such results stay stored."""
    text = """
    func @f(%p: tensor<8x16xf32>, %g: tensor<8x16xf32>) -> (tensor<8x16xf32>, tensor<8xf32>) {
      %0 = mul %p, %p : tensor<8x16xf32>
      %1 = sum %0 {axes = [0]} : tensor<16xf32>
      %2 = broadcast %1 {shape = [8, 16]} : tensor<8x16xf32>
      %3 = sub %p, %2 : tensor<8x16xf32>
      %4 = exp %g : tensor<8x16xf32>
      %6 = mul %0, %4 : tensor<8x16xf32>
      %7 = sum %6 {axes = [1]} : tensor<8xf32>
      return %3, %7
    }"""
    g = fused(text, "fuse")
    plain = fused(text, "fuse{remat=false}")
    assert [len(op.results) for op in g.ops] == [len(op.results) for op in plain.ops]
    assert_same_results(ir.parse(text), g)


def test_readers_stay_within_max_ops(fusion_log):
    g = fused(GELU_LIKE, "fuse{max-ops=6}")
    assert all(len(op.regions[0].ops) <= 6 for op in g.ops if op.name == "fusion")
    assert any("max-ops=6" in ln and "not recomputing" in ln for ln in fusion_log())
    assert_same_results(ir.parse(GELU_LIKE), g)


def test_a_recipe_whose_inputs_cost_more_than_the_result_is_not_used(fusion_log):
    """r = exp(a) * exp(b), both factors kept (graph outputs), read by two groups that read neither:
    storing r moves 3 x 16 KiB, recomputing it would read 4 x 16 KiB; kept."""
    text = """
    func @f(%a: tensor<64x64xf32>, %b: tensor<64x64xf32>, %c: tensor<64x64xf32>) -> (tensor<64x64xf32>, tensor<64xf32>, tensor<64x64xf32>, tensor<64x64xf32>) {
      %e = exp %a : tensor<64x64xf32>
      %f = exp %b : tensor<64x64xf32>
      %0 = mul %e, %f : tensor<64x64xf32>
      %1 = sum %0 {axes = [1]} : tensor<64xf32>
      %2 = broadcast %1 {shape = [64, 64]} : tensor<64x64xf32>
      %3 = sub %0, %2 : tensor<64x64xf32>
      %4 = sum %c {axes = [0]} : tensor<64xf32>
      %5 = broadcast %4 {shape = [64, 64]} : tensor<64x64xf32>
      %6 = mul %0, %5 : tensor<64x64xf32>
      %7 = sum %6 {axes = [0]} : tensor<64xf32>
      return %3, %7, %e, %f
    }"""
    g = fused(text, "fuse")
    assert_same_results(ir.parse(text), g)
    assert any("not recomputing tensor<64x64xf32>" in ln and "inputs cost more bytes" in ln for ln in fusion_log()), \
        fusion_log()


BATCHNORM_LIKE = """
func @f(%h: tensor<16x32xf32>, %w: tensor<32x32xf32>, %g: tensor<16x32xf32>) -> (tensor<16x32xf32>, tensor<16xf32>) {
  %x = matmul %h, %w : tensor<16x32xf32>
  %0 = sum %x {axes = [0], keepdims = true} : tensor<1x32xf32>
  %1 = constant {value = 0.0625, shape = [1, 32]} : tensor<1x32xf32>
  %2 = mul %0, %1 : tensor<1x32xf32>
  %3 = broadcast %2 {shape = [16, 32]} : tensor<16x32xf32>
  %4 = sub %x, %3 : tensor<16x32xf32>
  %5 = mul %4, %4 : tensor<16x32xf32>
  %6 = sum %5 {axes = [0], keepdims = true} : tensor<1x32xf32>
  %7 = mul %6, %1 : tensor<1x32xf32>
  %8 = rsqrt %7 : tensor<1x32xf32>
  %9 = broadcast %8 {shape = [16, 32]} : tensor<16x32xf32>
  %10 = mul %4, %9 : tensor<16x32xf32>
  %11 = mul %10, %g : tensor<16x32xf32>
  %12 = sum %11 {axes = [1]} : tensor<16xf32>
  return %10, %12
}"""


def test_a_statistics_group_yields_its_small_sums_instead_of_the_centered_tensor(fusion_log):
    """BatchNorm-like statistics: the group stored x - mean (a full tensor) for the next group;
    the mean only a reduction computes, so the group now yields the column sums (1/16 of the bytes)
    and the reader recomputes x - mean from x, which it can read as well."""
    g = fused(BATCHNORM_LIKE, "fuse")
    stats = group(g, "fused_sum_mul_sub_rsqrt")
    assert all(r.type.shape == (1, 32) for r in stats.results), [r.type for r in stats.results]
    plain = group(fused(BATCHNORM_LIKE, "fuse{remat=false}"), "fused_sum_mul_sub_rsqrt")
    assert any(r.type.shape == (16, 32) for r in plain.results)
    assert_same_results(ir.parse(BATCHNORM_LIKE), g)
    check(g, fused=None, kind="reduction", rng=np.random.default_rng(4))
