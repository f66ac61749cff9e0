"""layout: channels-last activations and transposes made views, as IR before/after; values never change."""
import numpy as np
import pytest

import avalon as av
import avalon.ir as ir
from avalon.passes import PassManager
from avalon.passes.layout import CHANNELS_LAST, is_view
from avalon.passes.testing import assert_rewrites, assert_same_results, random_inputs

CONV_CHAIN = """
func @f(%x: tensor<2x3x8x8xf32>, %w: tensor<4x3x3x3xf32>, %b: tensor<4xf32>) -> (tensor<2x36xf32>) {
  %0 = conv2d %x, %w : tensor<2x4x6x6xf32>
  %1 = reshape %b {shape = [1, 4, 1, 1]} : tensor<1x4x1x1xf32>
  %2 = broadcast %1 {shape = [2, 4, 6, 6]} : tensor<2x4x6x6xf32>
  %3 = add %0, %2 : tensor<2x4x6x6xf32>
  %4 = relu %3 : tensor<2x4x6x6xf32>
  %5 = max_pool2d %4 {kernel = [2, 2], stride = [2, 2]} : tensor<2x4x3x3xf32>
  %6 = reshape %5 {shape = [2, 36]} : tensor<2x36xf32>
  return %6
}"""


def test_conv_bias_relu_chain_goes_channels_last_up_to_a_reshape():
    # the pool reads NHWC; its own result feeds a reshape (possibly a metadata-only view of
    # contiguous storage), so it stays row-major
    assert_rewrites("layout", CONV_CHAIN, """
    func @f(%x: tensor<2x3x8x8xf32>, %w: tensor<4x3x3x3xf32>, %b: tensor<4xf32>) -> (tensor<2x36xf32>) {
      %0 = conv2d %x, %w : tensor<2x4x6x6xf32, layout = [0, 2, 3, 1]>
      %1 = reshape %b {shape = [1, 4, 1, 1]} : tensor<1x4x1x1xf32>
      %2 = broadcast %1 {shape = [2, 4, 6, 6]} : tensor<2x4x6x6xf32>
      %3 = add %0, %2 : tensor<2x4x6x6xf32, layout = [0, 2, 3, 1]>
      %4 = relu %3 : tensor<2x4x6x6xf32, layout = [0, 2, 3, 1]>
      %5 = max_pool2d %4 {kernel = [2, 2], stride = [2, 2]} : tensor<2x4x3x3xf32>
      %6 = reshape %5 {shape = [2, 36]} : tensor<2x36xf32>
      return %6
    }""", changed=True)


def test_graph_outputs_and_inputs_stay_row_major():
    assert_rewrites("layout", """
    func @f(%x: tensor<2x3x8x8xf32>, %w: tensor<4x3x3x3xf32>) -> (tensor<2x4x6x6xf32>, tensor<2x4x6x6xf32>) {
      %0 = conv2d %x, %w : tensor<2x4x6x6xf32>
      %1 = relu %0 : tensor<2x4x6x6xf32>
      %2 = conv2d %x, %w : tensor<2x4x6x6xf32>
      %3 = neg %2 : tensor<2x4x6x6xf32>
      return %1, %3
    }""", """
    func @f(%x: tensor<2x3x8x8xf32>, %w: tensor<4x3x3x3xf32>) -> (tensor<2x4x6x6xf32>, tensor<2x4x6x6xf32>) {
      %0 = conv2d %x, %w : tensor<2x4x6x6xf32, layout = [0, 2, 3, 1]>
      %1 = relu %0 : tensor<2x4x6x6xf32>
      %2 = conv2d %x, %w : tensor<2x4x6x6xf32, layout = [0, 2, 3, 1]>
      %3 = neg %2 : tensor<2x4x6x6xf32>
      return %1, %3
    }""")


def test_fused_groups_take_and_pass_on_channels_last_with_region_types_in_sync():
    g = assert_rewrites("layout", """
    func @f(%x: tensor<2x3x8x8xf32>, %w: tensor<4x3x3x3xf32>, %b: tensor<2x4x6x6xf32>) -> (tensor<2x4x3x3xf32>) {
      %0 = fusion @fused_conv2d_add_0(%x, %w, %b) : tensor<2x4x6x6xf32> {
        ^bb0(%a: tensor<2x3x8x8xf32>, %k: tensor<4x3x3x3xf32>, %c: tensor<2x4x6x6xf32>):
        %1 = conv2d %a, %k : tensor<2x4x6x6xf32>
        %2 = add %1, %c : tensor<2x4x6x6xf32>
        yield %2
      }
      %3 = fusion @fused_relu_1(%0) : tensor<2x4x6x6xf32> {
        ^bb0(%d: tensor<2x4x6x6xf32>):
        %4 = relu %d : tensor<2x4x6x6xf32>
        yield %4
      }
      %5 = max_pool2d %3 {kernel = [2, 2], stride = [2, 2]} : tensor<2x4x3x3xf32>
      %6 = neg %5 : tensor<2x4x3x3xf32>
      return %6
    }""", """
    func @f(%x: tensor<2x3x8x8xf32>, %w: tensor<4x3x3x3xf32>, %b: tensor<2x4x6x6xf32>) -> (tensor<2x4x3x3xf32>) {
      %0 = fusion @fused_conv2d_add_0(%x, %w, %b) : tensor<2x4x6x6xf32, layout = [0, 2, 3, 1]> {
        ^bb0(%a: tensor<2x3x8x8xf32>, %k: tensor<4x3x3x3xf32>, %c: tensor<2x4x6x6xf32>):
        %1 = conv2d %a, %k : tensor<2x4x6x6xf32>
        %2 = add %1, %c : tensor<2x4x6x6xf32, layout = [0, 2, 3, 1]>
        yield %2
      }
      %3 = fusion @fused_relu_1(%0) : tensor<2x4x6x6xf32, layout = [0, 2, 3, 1]> {
        ^bb0(%d: tensor<2x4x6x6xf32, layout = [0, 2, 3, 1]>):
        %4 = relu %d : tensor<2x4x6x6xf32, layout = [0, 2, 3, 1]>
        yield %4
      }
      %5 = max_pool2d %3 {kernel = [2, 2], stride = [2, 2]} : tensor<2x4x3x3xf32, layout = [0, 2, 3, 1]>
      %6 = neg %5 : tensor<2x4x3x3xf32>
      return %6
    }""")
    fused = g.ops[1]
    assert fused.regions[0].args[0].type == fused.operands[0].type  # what the verifier insists on


def test_transposes_feeding_matmuls_become_views():
    g = assert_rewrites("layout", """
    func @f(%x: tensor<5x4xf32>, %w: tensor<3x4xf32>, %v: tensor<2x4x3xf32>, %u: tensor<2x4x6xf32>) -> (tensor<5x3xf32>, tensor<2x3x6xf32>) {
      %0 = transpose %w {perm = [1, 0]} : tensor<4x3xf32>
      %1 = matmul %x, %0 : tensor<5x3xf32>
      %2 = transpose %v {perm = [0, 2, 1]} : tensor<2x3x4xf32>
      %3 = matmul %2, %u : tensor<2x3x6xf32>
      return %1, %3
    }""", """
    func @f(%x: tensor<5x4xf32>, %w: tensor<3x4xf32>, %v: tensor<2x4x3xf32>, %u: tensor<2x4x6xf32>) -> (tensor<5x3xf32>, tensor<2x3x6xf32>) {
      %0 = transpose %w {perm = [1, 0]} : tensor<4x3xf32, layout = [1, 0]>
      %1 = matmul %x, %0 : tensor<5x3xf32>
      %2 = transpose %v {perm = [0, 2, 1]} : tensor<2x3x4xf32, layout = [0, 2, 1]>
      %3 = matmul %2, %u : tensor<2x3x6xf32>
      return %1, %3
    }""")
    t0, t2 = g.ops[0], g.ops[2]
    assert is_view(t0) and is_view(t2)
    # the view's strides are the operand's strides, permuted: the same bytes, no copy
    assert t0.results[0].type.strides() == tuple(t0.operands[0].type.strides()[p] for p in t0.attrs["perm"])


@pytest.mark.parametrize("perm", [[1, 2, 0], [2, 0, 1], [2, 1, 0], [1, 0, 2]])
def test_view_layout_gives_operand_strides_for_any_permutation(perm):
    shape = (2, 3, 4)
    src_layouts = [None, (0, 2, 1), (2, 0, 1)]
    for lay in src_layouts:
        src = ir.TensorType(shape, "f32", lay)
        out_shape = [shape[p] for p in perm]
        text = f"""
        func @f(%x: {src}, %y: tensor<{out_shape[0]}x{out_shape[2]}x5xf32>) -> (tensor<{out_shape[0]}x{out_shape[1]}x5xf32>) {{
          %0 = transpose %x {{perm = {perm}}} : tensor<{'x'.join(map(str, out_shape))}xf32>
          %1 = matmul %0, %y : tensor<{out_shape[0]}x{out_shape[1]}x5xf32>
          return %1
        }}"""
        g = ir.parse(text)
        PassManager.parse("layout", verify_each=True).run(g)
        t = g.ops[0]
        assert t.results[0].type.strides() == tuple(src.strides()[p] for p in perm)
        assert is_view(t)


def test_transposes_that_are_outputs_or_feed_views_are_left_alone():
    text = """
    func @f(%w: tensor<3x4xf32>) -> (tensor<4x3xf32>, tensor<12xf32>) {
      %0 = transpose %w {perm = [1, 0]} : tensor<4x3xf32>
      %1 = transpose %w {perm = [1, 0]} : tensor<4x3xf32>
      %2 = reshape %1 {shape = [12]} : tensor<12xf32>
      return %0, %2
    }"""
    assert_rewrites("layout", text, text, changed=False)


def test_options_switch_each_rewrite_off_and_a_second_run_changes_nothing():
    text = CONV_CHAIN
    assert_rewrites("layout{channels-last=false}", text, text, changed=False)
    g = ir.parse(text)
    assert PassManager.parse("layout").run(g)
    assert not PassManager.parse("layout").run(g)


def test_interpreter_ignores_layouts():
    """Same arrays from a graph whatever layouts its types carry (the reference is layout-blind)."""
    g = ir.parse(CONV_CHAIN)
    before = g.clone()
    PassManager.parse("layout").run(g)
    assert any(op.results[0].type.layout == CHANNELS_LAST for op in g.ops)
    assert_same_results(before, g, seeds=(0, 1, 2), rtol=0, atol=0)
    args = random_inputs(g)
    outs = av.interpret(g, *args)
    assert outs[0].flags.c_contiguous and outs[0].shape == (2, 36)


def test_lenet_keeps_its_values_and_round_trips(rng):
    from avalon.demo import Net
    av.manual_seed(0)
    net = Net()
    x = rng.standard_normal((2, 1, 28, 28)).astype(np.float32)
    g = av.trace(net, x)
    before = g.clone()
    assert PassManager.parse("canonicalize,cse,dce,layout", verify_each=True).run(g)
    text = str(g)
    assert text.count("layout = [0, 2, 3, 1]") >= 6 and text.count("layout = [1, 0]") == 2
    assert str(ir.parse(text)) == text
    params = [p for _, p in av.named_parameters(net)]
    np.testing.assert_allclose(av.interpret(g, *params, x)[0], av.interpret(before, *params, x)[0], rtol=0, atol=0)
