"""cse: duplicates of pure ops merge into the first; anything that might differ keeps them apart."""
from avalon.passes.testing import assert_rewrites


def test_merges_equal_ops_and_commutative_operand_orders():
    assert_rewrites("cse", """
    func @f(%x: tensor<4xf32>, %y: tensor<4xf32>) -> (tensor<4xf32>) {
      %0 = add %x, %y : tensor<4xf32>
      %1 = add %y, %x : tensor<4xf32>
      %2 = exp %0 : tensor<4xf32>
      %3 = exp %1 : tensor<4xf32>
      %4 = sub %2, %3 : tensor<4xf32>
      return %4
    }""", """
    func @f(%x: tensor<4xf32>, %y: tensor<4xf32>) -> (tensor<4xf32>) {
      %0 = add %x, %y : tensor<4xf32>
      %1 = exp %0 : tensor<4xf32>
      %2 = sub %1, %1 : tensor<4xf32>
      return %2
    }""", changed=True)


def test_operand_order_matters_for_non_commutative_ops():
    text = """
    func @f(%x: tensor<4xf32>, %y: tensor<4xf32>) -> (tensor<4xf32>, tensor<4xf32>) {
      %0 = sub %x, %y : tensor<4xf32>
      %1 = sub %y, %x : tensor<4xf32>
      return %0, %1
    }"""
    assert_rewrites("cse", text, text, changed=False)


def test_attributes_must_match_exactly():
    text = """
    func @f(%x: tensor<2x3xf32>) -> (tensor<2xf32>, tensor<3xf32>, tensor<2x3xf32>, tensor<2x3xf32>, tensor<2x3xi32>) {
      %0 = sum %x {axes = [1]} : tensor<2xf32>
      %1 = sum %x {axes = [0]} : tensor<3xf32>
      %2 = constant {value = 0.0, shape = [2, 3]} : tensor<2x3xf32>
      %3 = constant {value = -0.0, shape = [2, 3]} : tensor<2x3xf32>
      %4 = constant {value = 0, shape = [2, 3], dtype = i32} : tensor<2x3xi32>
      return %0, %1, %2, %3, %4
    }"""
    assert_rewrites("cse", text, text, changed=False)


def test_equal_constants_merge():
    assert_rewrites("cse", """
    func @f(%x: tensor<2xf32>) -> (tensor<2xf32>) {
      %0 = constant {value = dense<[1.0, 2.0]>, shape = [2]} : tensor<2xf32>
      %1 = constant {value = dense<[1.0, 2.0]>, shape = [2]} : tensor<2xf32>
      %2 = mul %x, %0 : tensor<2xf32>
      %3 = mul %2, %1 : tensor<2xf32>
      return %3
    }""", """
    func @f(%x: tensor<2xf32>) -> (tensor<2xf32>) {
      %0 = constant {value = dense<[1.0, 2.0]>, shape = [2]} : tensor<2xf32>
      %1 = mul %x, %0 : tensor<2xf32>
      %2 = mul %1, %0 : tensor<2xf32>
      return %2
    }""")


def test_random_ops_with_the_same_seed_merge():
    """random is pure: the same seed gives the same numbers, so two draws from one seed are one."""
    assert_rewrites("cse", """
    func @f(%seed: tensor<i64>) -> (tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) {
      %0 = random %seed {shape = [4]} : tensor<4xf32>
      %1 = random %seed {shape = [4]} : tensor<4xf32>
      %2 = random %seed {shape = [4], distribution = "normal"} : tensor<4xf32>
      return %0, %1, %2
    }""", """
    func @f(%seed: tensor<i64>) -> (tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) {
      %0 = random %seed {shape = [4]} : tensor<4xf32>
      %1 = random %seed {shape = [4], distribution = "normal"} : tensor<4xf32>
      return %0, %0, %1
    }""")


def test_fusions_merge_only_with_identical_bodies():
    assert_rewrites("cse", """
    func @f(%x: tensor<4xf32>) -> (tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) {
      %0 = fusion @g(%x) : tensor<4xf32> {
        ^bb0(%a: tensor<4xf32>):
        %1 = exp %a : tensor<4xf32>
        yield %1
      }
      %2 = fusion @g(%x) : tensor<4xf32> {
        ^bb0(%b: tensor<4xf32>):
        %3 = exp %b : tensor<4xf32>
        yield %3
      }
      %4 = fusion @g(%x) : tensor<4xf32> {
        ^bb0(%c: tensor<4xf32>):
        %5 = tanh %c : tensor<4xf32>
        yield %5
      }
      return %0, %2, %4
    }""", """
    func @f(%x: tensor<4xf32>) -> (tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) {
      %0 = fusion @g(%x) : tensor<4xf32> {
        ^bb0(%a: tensor<4xf32>):
        %1 = exp %a : tensor<4xf32>
        yield %1
      }
      %2 = fusion @g(%x) : tensor<4xf32> {
        ^bb0(%c: tensor<4xf32>):
        %3 = tanh %c : tensor<4xf32>
        yield %3
      }
      return %0, %0, %2
    }""")


def test_inside_a_region_duplicates_merge_but_never_with_outer_ops():
    assert_rewrites("cse", """
    func @f(%x: tensor<4xf32>) -> (tensor<4xf32>, tensor<4xf32>) {
      %0 = constant {value = 2.0, shape = [4]} : tensor<4xf32>
      %1 = fusion @g(%x) : tensor<4xf32> {
        ^bb0(%a: tensor<4xf32>):
        %2 = constant {value = 2.0, shape = [4]} : tensor<4xf32>
        %3 = mul %a, %2 : tensor<4xf32>
        %4 = mul %2, %a : tensor<4xf32>
        %5 = add %3, %4 : tensor<4xf32>
        yield %5
      }
      return %0, %1
    }""", """
    func @f(%x: tensor<4xf32>) -> (tensor<4xf32>, tensor<4xf32>) {
      %0 = constant {value = 2.0, shape = [4]} : tensor<4xf32>
      %1 = fusion @g(%x) : tensor<4xf32> {
        ^bb0(%a: tensor<4xf32>):
        %2 = constant {value = 2.0, shape = [4]} : tensor<4xf32>
        %3 = mul %a, %2 : tensor<4xf32>
        %4 = add %3, %3 : tensor<4xf32>
        yield %4
      }
      return %0, %1
    }""")
