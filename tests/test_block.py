"""Block edits: ops linked in order (O(1) inserts and removals), `block.ops` a read-only snapshot,
`reorder` for a whole new schedule, and use lists that stay exact through every edit."""
import pytest

import avalon as av
from avalon import ir
from avalon.ir.builder import Builder, make_op
from avalon.passes import Rewriter

T = ir.TensorType((3,), av.float32)


def chain(*names):
    """A graph applying each unary op in `names` to the input, all independent."""
    g = ir.Graph()
    x = g.add_input(T, "x")
    b = Builder(g)
    for n in names:
        b(n, x)
    g.set_outputs([x])
    return g, x


def names(block):
    return [op.name for op in block.ops]


def check_links(block):
    """prev/next, first/last and parent agree with `block.ops`."""
    ops = block.ops
    assert block.first is (ops[0] if ops else None) and block.last is (ops[-1] if ops else None)
    for i, op in enumerate(ops):
        assert op.parent is block
        assert op.prev is (ops[i - 1] if i else None)
        assert op.next is (ops[i + 1] if i + 1 < len(ops) else None)


def test_insert_before_after_and_remove_keep_order_and_parent():
    g, x = chain("exp", "neg")
    exp, neg = g.ops
    b = g.body
    b.insert_before(exp, make_op("abs", [x]))
    b.insert_after(exp, make_op("tanh", [x]))
    b.insert_after(neg, make_op("relu", [x]))
    b.insert(1, make_op("sign", [x]))
    b.insert(-1, make_op("sqrt", [x]))
    assert names(b) == ["abs", "sign", "exp", "tanh", "neg", "sqrt", "relu"]
    check_links(b)
    b.remove(exp)
    assert exp.parent is None and exp.prev is None and exp.next is None
    g.ops[0].erase()
    g.ops[-1].erase()
    assert names(b) == ["sign", "tanh", "neg", "sqrt"]
    check_links(b)
    b.append(exp)  # a removed op can go back in
    assert names(b) == ["sign", "tanh", "neg", "sqrt", "exp"]
    check_links(b)


def test_an_op_is_in_one_block_at_a_time():
    g, x = chain("exp", "neg")
    with pytest.raises(ValueError, match="already in a block"):
        g.body.append(g.ops[0])
    with pytest.raises(ValueError, match="already in a block"):
        ir.Block([]).append(g.ops[1])
    with pytest.raises(ValueError, match="not in this block"):
        g.body.insert_before(make_op("abs", [x]), make_op("abs", [x]))


def test_reorder_permutes_drops_and_adds_ops():
    g, x = chain("exp", "neg", "tanh")
    exp, neg, tanh = g.ops
    new = make_op("abs", [x])
    g.body.reorder([tanh, new, exp])
    assert names(g.body) == ["tanh", "abs", "exp"]
    assert neg.parent is None and neg.prev is None and neg.next is None
    check_links(g.body)
    with pytest.raises(ValueError, match="twice"):
        g.body.reorder([tanh, tanh])
    g.body.reorder([])
    assert g.ops == [] and g.body.first is None and g.body.last is None


def test_ops_is_a_read_only_list():
    g, x = chain("exp", "neg", "tanh")
    ops = g.ops
    assert ops == list(ops) and ops[1].name == "neg" and [o.name for o in ops[1:]] == ["neg", "tanh"]
    assert len(ops) == 3 and ops[-1] is g.body.last
    for edit in (lambda: ops.append(ops[0]), lambda: ops.insert(0, ops[0]), lambda: ops.reverse(),
                 lambda: ops.pop(), lambda: ops.remove(ops[0]), lambda: ops.sort(key=id), lambda: ops.clear(),
                 lambda: ops.extend([]), ops.__delitem__, lambda: ops.__setitem__(slice(None), [])):
        with pytest.raises(TypeError, match="read-only"):
            edit(0) if edit is ops.__delitem__ else edit()
    with pytest.raises(TypeError, match="read-only"):
        ops += []
    assert names(g.body) == ["exp", "neg", "tanh"]
    g.ops[0].erase()
    assert [o.name for o in ops] == ["exp", "neg", "tanh"]  # a snapshot: later edits make a new one
    assert names(g.body) == ["neg", "tanh"]


def test_uses_follow_operand_edits():
    g, x = chain("exp")
    g.set_outputs([])
    y = g.add_input(T, "y")
    b = Builder(g)
    add = b.op("add", x, x)
    assert list(x.uses) == [(g.ops[0], 0), (add, 0), (add, 1)] and len(x.uses) == 3
    add.set_operand(0, y)
    assert (add, 0) in y.uses and (add, 0) not in x.uses and x.users == [g.ops[0], add]
    x.replace_all_uses_with(y)
    assert not x.uses and len(y.uses) == 3
    add.erase()
    assert list(y.uses) == [(g.ops[0], 0)]


def test_rewriter_insertion_point_follows_the_next_op():
    g, x = chain("exp", "neg")
    exp, neg = g.ops
    rw = Rewriter()
    rw.set_insertion_point(after=neg)  # the last op: new ops go at the end
    rw.build("abs", x)
    rw.set_insertion_point(after=exp)
    rw.build("tanh", x)
    assert names(g.body) == ["exp", "tanh", "neg", "abs"]
    rw.set_insertion_point(before=neg)
    rw.erase_op(neg)  # the insertion point moves to what followed it
    rw.build("relu", x)
    assert names(g.body) == ["exp", "tanh", "relu", "abs"]
    check_links(g.body)


def test_holder_finds_the_op_of_the_block_around_a_nested_use():
    from avalon.ir.fusion import outline
    g = ir.Graph()
    x = g.add_input(T, "x")
    b = Builder(g)
    y = b("exp", x)
    z = b("neg", b("log", y))
    g.set_outputs([z])
    outline([z.op.operands[0].op, z.op], "fused")
    group = next(op for op in g.ops if op.name == "fusion")
    inner = next(op for op in group.regions[0].ops if op.name == "log")
    assert g.body.holder(inner) is group and g.body.holder(y.op) is y.op
    assert group.regions[0].holder(y.op) is None  # outside that block
    assert g.body.holder(g.body.terminator) is g.body.terminator
