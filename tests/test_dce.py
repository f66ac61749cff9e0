"""dce: unused pure ops go, chains of them at once; fusion groups lose unused results and arguments."""
from avalon.passes.testing import assert_rewrites


def test_removes_dead_chains_and_keeps_outputs():
    assert_rewrites("dce", """
    func @f(%x: tensor<4xf32>, %y: tensor<4xf32>) -> (tensor<4xf32>) {
      %0 = exp %x : tensor<4xf32>
      %1 = mul %0, %y : tensor<4xf32>
      %2 = tanh %1 : tensor<4xf32>
      %3 = neg %x : tensor<4xf32>
      return %3
    }""", """
    func @f(%x: tensor<4xf32>, %y: tensor<4xf32>) -> (tensor<4xf32>) {
      %0 = neg %x : tensor<4xf32>
      return %0
    }""", changed=True)


def test_nothing_dead_means_no_change():
    text = """
    func @f(%x: tensor<4xf32>) -> (tensor<4xf32>, tensor<4xf32>) {
      %0 = exp %x : tensor<4xf32>
      return %0, %x
    }"""
    assert_rewrites("dce", text, text, changed=False)


def test_dead_ops_inside_a_fusion_region():
    assert_rewrites("dce", """
    func @f(%x: tensor<4xf32>) -> (tensor<4xf32>) {
      %0 = fusion @g(%x) : tensor<4xf32> {
        ^bb0(%a: tensor<4xf32>):
        %1 = exp %a : tensor<4xf32>
        %2 = tanh %a : tensor<4xf32>
        %3 = neg %2 : tensor<4xf32>
        yield %1
      }
      return %0
    }""", """
    func @f(%x: tensor<4xf32>) -> (tensor<4xf32>) {
      %0 = fusion @g(%x) : tensor<4xf32> {
        ^bb0(%a: tensor<4xf32>):
        %1 = exp %a : tensor<4xf32>
        yield %1
      }
      return %0
    }""")


def test_unused_fusion_results_and_arguments_are_dropped():
    assert_rewrites("dce", """
    func @f(%x: tensor<4xf32>, %y: tensor<4xf32>) -> (tensor<4xf32>) {
      %0 = exp %y : tensor<4xf32>
      %1, %2 = fusion @g(%x, %0) : tensor<4xf32>, tensor<4xf32> {
        ^bb0(%a: tensor<4xf32>, %b: tensor<4xf32>):
        %3 = neg %a : tensor<4xf32>
        %4 = mul %a, %b : tensor<4xf32>
        yield %3, %4
      }
      return %1
    }""", """
    func @f(%x: tensor<4xf32>, %y: tensor<4xf32>) -> (tensor<4xf32>) {
      %0 = fusion @g(%x) : tensor<4xf32> {
        ^bb0(%a: tensor<4xf32>):
        %1 = neg %a : tensor<4xf32>
        yield %1
      }
      return %0
    }""")


def test_a_whole_unused_fusion_goes():
    assert_rewrites("dce", """
    func @f(%x: tensor<4xf32>) -> (tensor<4xf32>) {
      %0 = fusion @g(%x) : tensor<4xf32> {
        ^bb0(%a: tensor<4xf32>):
        %1 = exp %a : tensor<4xf32>
        yield %1
      }
      return %x
    }""", """
    func @f(%x: tensor<4xf32>) -> (tensor<4xf32>) {
      return %x
    }""")
