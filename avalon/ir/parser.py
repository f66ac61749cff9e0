"""Reads the text IR back into a Graph. Errors name the line, the column and what was expected.

Any text, however broken or hostile, gives a Graph or a `ParseError` (never a plain Python
exception), in time linear in its length: nesting is depth-limited (attribute lists and regions,
`MAX_DEPTH`) rather than left to Python's recursion limit, integers are limited to 64 bits before
Python converts them (no int-digit-limit error, no 5,000-digit shapes), strings are decoded with
their errors located, and every value an op or type constructor could reject is checked here or
turned into a located error. Symbols the bare `@name` form cannot spell are quoted, `@"fünf"`, as
in MLIR, so every name the printer writes reads back.
"""
from __future__ import annotations

import json
import re
import warnings

import numpy as np

from .core import Block, Graph, Location, Op, Value
from .dtypes import BY_NAME
from .registry import OPS, TERMINATORS
from .types import TensorType
from .verify import VerifyError, verify


class ParseError(ValueError):
    def __init__(self, msg: str, line: int, col: int, source: str | None = None):
        self.msg, self.line, self.col, self.source = msg, line, col, source
        where = f"{source}:" if source else ""
        super().__init__(f"{where}{line}:{col}: {msg}")


class LocatedVerifyError(ParseError, VerifyError):
    """Parsed text that does not verify (a type mismatch, a wrong operand count): a VerifyError
    located, like every other parse error, at the line and column of the op at fault."""

    def __init__(self, err: VerifyError, line: int, col: int, source: str | None):
        super().__init__(str(err), line, col, source)
        self.op = err.op


_TOKEN = re.compile(r"""
    (?P<ws>[ \t\r]+|//[^\n]*)
  | (?P<nl>\n)
  | (?P<value>%[A-Za-z0-9_.$-]+)
  | (?P<symbol>@[A-Za-z0-9_.$-]+|@"(?:[^"\\\n]|\\.)*")
  | (?P<block>\^[A-Za-z0-9_]+)
  | (?P<string>"(?:[^"\\\n]|\\.)*")
  | (?P<arrow>->)
  | (?P<number>-?\d+\.?\d*(?:[eE][-+]?\d+)?|(?:-?inf|nan)(?![A-Za-z0-9_]))
  | (?P<ident>[A-Za-z_][A-Za-z0-9_.$]*)
  | (?P<punct>[(){}\[\]<>,:=])
""", re.VERBOSE | re.ASCII)  # a string ends at its line: positions after it stay right


MAX_DEPTH = 64  # nested attribute lists or regions; real IR nests a few levels
_INT_LIMIT = 2 ** 63


class _Tok:
    __slots__ = ("kind", "text", "line", "col")

    def __init__(self, kind, text, line, col):
        self.kind, self.text, self.line, self.col = kind, text, line, col

    def __repr__(self):
        return f"'{self.text}'" if self.kind != "eof" else "end of input"


def _lex(text: str, source: str | None) -> list[_Tok]:
    toks, pos, line, start = [], 0, 1, 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            why = (" (dynamic dimensions are not supported: every dimension is a static size)"
                   if text[pos] == "?" else "")
            raise ParseError(f"unexpected character {text[pos]!r}{why}", line, pos - start + 1, source)
        kind = m.lastgroup
        if kind == "nl":
            line += 1
            start = m.end()
        elif kind != "ws":
            toks.append(_Tok(kind, m.group(), line, pos - start + 1))
        pos = m.end()
    toks.append(_Tok("eof", "", line, pos - start + 1))
    return toks


class _Parser:
    def __init__(self, text: str, source: str | None):
        self.source = source
        self.toks = _lex(text, source)
        self.i = 0
        self.depth = 0
        self.where: dict[Op, _Tok] = {}  # each op's name token, to locate verifier errors

    # -- token helpers
    @property
    def tok(self) -> _Tok:
        return self.toks[self.i]

    def error(self, msg: str, tok: _Tok | None = None) -> ParseError:
        t = tok or self.tok
        return ParseError(msg, t.line, t.col, self.source)

    def next(self) -> _Tok:
        t = self.tok
        self.i += 1
        return t

    def at(self, text: str) -> bool:
        return self.tok.text == text and self.tok.kind in ("punct", "arrow", "ident")

    def accept(self, text: str) -> bool:
        if self.at(text):
            self.i += 1
            return True
        return False

    def expect(self, text: str, what: str | None = None) -> _Tok:
        if not self.at(text):
            raise self.error(f"expected '{text}'{' ' + what if what else ''} but found {self.tok!r}")
        return self.next()

    def expect_kind(self, kind: str, what: str) -> _Tok:
        if self.tok.kind != kind:
            raise self.error(f"expected {what} but found {self.tok!r}")
        return self.next()

    def enter(self, what: str, tok: _Tok) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(f"{what} nested more than {MAX_DEPTH} deep", tok)

    def string(self, tok: _Tok) -> str:
        """The text of a string literal (JSON escapes), or a located error."""
        try:
            v = json.loads(tok.text)
        except ValueError as e:
            raise self.error(f"bad string literal: {e.args[0] if e.args else e}", tok) from None
        if not isinstance(v, str):  # pragma: no cover - the lexer only passes quoted text
            raise self.error("bad string literal", tok)
        return v

    def integer(self, tok: _Tok, what: str = "an integer") -> int:
        t = tok.text
        body = t[1:] if t.startswith("-") else t
        if not body.isdigit():
            raise self.error(f"expected {what} but found {tok!r}", tok)
        if len(body) > 19 or not -_INT_LIMIT <= int(t) < _INT_LIMIT:
            raise self.error(f"integer {t[:24]}{'...' if len(t) > 24 else ''} does not fit in 64 bits", tok)
        return int(t)

    def symbol(self, tok: _Tok) -> str:
        t = tok.text[1:]
        return self.string(_Tok("string", t, tok.line, tok.col + 1)) if t.startswith('"') else t

    # -- grammar
    def parse_type(self) -> TensorType:
        t0 = self.tok
        if not (t0.kind == "ident" and t0.text == "tensor"):
            raise self.error(f"expected a type like tensor<2x3xf32> but found {t0!r}")
        self.next()
        self.expect("<")
        parts: list[str] = []
        # dims and dtype lex as numbers/idents like "2x3xf32"; glue tokens up to '>' or ','
        while not (self.at(">") or self.at(",")):
            if self.tok.kind == "eof":
                raise self.error("unterminated tensor type")
            parts.append(self.next().text)
        body = "".join(parts)
        *dims, dt = body.split("x") if body else [""]
        if dt not in BY_NAME:
            raise self.error(f"unknown element type '{dt[:40]}' in tensor<{body[:80]}>; known: {', '.join(BY_NAME)}",
                             t0)
        if not all(d.isascii() and d.isdigit() and len(d) <= 18 for d in dims):
            raise self.error(f"bad shape in tensor<{body[:80]}>: dims are non-negative integers below 10^18", t0)
        shape = tuple(int(d) for d in dims)
        layout = None
        if self.accept(","):
            key = self.expect_kind("ident", "'layout'")
            if key.text != "layout":
                raise self.error("expected 'layout'", key)
            self.expect("=")
            lt = self.tok
            layout = self.parse_attr_value()
            if not (isinstance(layout, list) and all(type(i) is int for i in layout)):
                raise self.error("a layout is a list of dimension numbers like [0, 2, 3, 1]", lt)
        self.expect(">")
        try:
            return TensorType(shape, BY_NAME[dt], layout)
        except (ValueError, TypeError) as e:
            raise self.error(str(e), t0) from None

    def parse_attr_value(self):
        t = self.tok
        if t.kind == "number":
            self.next()
            if t.text in ("inf", "-inf", "nan"):
                return float(t.text)
            if any(c in t.text for c in ".eE"):
                return float(t.text)
            return self.integer(t)
        if t.kind == "string":
            self.next()
            return self.string(t)
        if t.kind == "punct" and t.text == "[":
            self.next()
            self.enter("attribute lists", t)
            items = []
            if not self.accept("]"):
                items.append(self.parse_attr_value())
                while self.accept(","):
                    items.append(self.parse_attr_value())
                self.expect("]", "to close the list")
            self.depth -= 1
            return items
        if t.kind == "ident":
            self.next()
            if t.text in ("true", "false"):
                return t.text == "true"
            if t.text in BY_NAME:
                return BY_NAME[t.text]
            if t.text == "dense":
                self.expect("<")
                at = self.tok
                items = self.parse_attr_value()
                self.expect(">")
                return self.dense(items, at)
        raise self.error(f"expected an attribute value but found {t!r}", t)

    def dense(self, items, tok: _Tok) -> np.ndarray:
        """A rectangular array of numbers (not ragged, not strings or dtypes)."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                a = np.asarray(items)
        except (ValueError, TypeError, OverflowError, Warning):
            a = None
        if a is None or a.dtype.kind not in "biuf":
            raise self.error("dense<...> holds a rectangular array of numbers (equal-length rows)", tok)
        return a

    def parse_attrs(self) -> dict:
        attrs = {}
        self.expect("{")
        if self.accept("}"):
            return attrs
        while True:
            key = self.expect_kind("ident", "an attribute name")
            if key.text in attrs:
                raise self.error(f"attribute '{key.text}' is given twice", key)
            self.expect("=")
            attrs[key.text] = self.parse_attr_value()
            if self.accept("}"):
                return attrs
            self.expect(",", "or '}' in the attribute list")

    def use(self, scope: dict[str, Value]) -> Value:
        t = self.expect_kind("value", "a value like %0")
        name = t.text[1:]
        if name not in scope:
            raise self.error(f"use of undefined value %{name}", t)
        return scope[name]

    def define(self, scope: dict[str, Value], tok: _Tok, v: Value) -> None:
        name = tok.text[1:]
        if name in scope:
            raise self.error(f"value %{name} is defined twice", tok)
        scope[name] = v

    def parse_args(self, scope) -> list[tuple[str, TensorType, _Tok]]:
        self.expect("(")
        args = []
        if not self.accept(")"):
            while True:
                tok = self.expect_kind("value", "an argument like %x")
                self.expect(":")
                args.append((tok.text[1:], self.parse_type(), tok))
                if self.accept(")"):
                    break
                self.expect(",", "or ')' after an argument")
        return args

    def parse_block_body(self, block: Block, scope: dict[str, Value], terminator: str) -> None:
        while True:
            t = self.tok
            if t.kind == "ident" and t.text in TERMINATORS:
                if t.text != terminator:
                    raise self.error(f"'{t.text}' is not allowed here; expected '{terminator}'", t)
                self.next()
                vals = []
                if self.tok.kind == "value":
                    vals.append(self.use(scope))
                    while self.accept(","):
                        vals.append(self.use(scope))
                term = block.set_terminator(terminator, vals)
                self.where[term] = t
                term.loc = self.parse_loc()
                return
            if t.kind == "eof" or (t.kind == "punct" and t.text == "}"):
                raise self.error(f"block ends without '{terminator}'", t)
            block.append(self.parse_op(scope))

    def parse_loc(self) -> Location | None:
        if not self.at("loc"):
            return None
        self.next()
        self.expect("(")
        f = self.expect_kind("string", "a file name string")
        self.expect(":")
        ln = self.expect_kind("number", "a line number")
        line = self.integer(ln, "a line number")
        self.expect(")")
        return Location(self.string(f), line)

    def parse_op(self, scope: dict[str, Value]) -> Op:
        result_toks = []
        if self.tok.kind == "value":
            result_toks.append(self.next())
            while self.accept(","):
                result_toks.append(self.expect_kind("value", "a result name"))
            self.expect("=")
        name_tok = self.expect_kind("ident", "an op name")
        name = name_tok.text
        if name not in OPS:
            raise self.error(f"unknown op '{name}'", name_tok)
        d = OPS[name]
        attrs: dict = {}
        if self.tok.kind == "symbol":
            if not d.symbol:
                raise self.error(f"'{name}' takes no @symbol")
            attrs[d.symbol] = self.symbol(self.next())
        operands = []
        paren = self.accept("(")
        if self.tok.kind == "value":
            operands.append(self.use(scope))
            while self.accept(","):
                operands.append(self.use(scope))
        if paren:
            self.expect(")", "to close the operand list")
        if self.at("{"):
            attrs.update(self.parse_attrs())
        self.expect(":", "before the result types")
        types = []
        if self.tok.kind == "ident" and self.tok.text == "tensor":
            types.append(self.parse_type())
            while self.accept(","):
                types.append(self.parse_type())
        if len(types) != len(result_toks):
            raise self.error(f"'{name}' names {len(result_toks)} result(s) but gives {len(types)} type(s)", name_tok)
        loc = self.parse_loc()
        try:
            attrs = d.normalize_attrs(attrs)
        except (TypeError, ValueError) as e:
            raise self.error(str(e), name_tok) from None
        op = Op(name, operands, types, attrs, loc=loc)
        self.where[op] = name_tok
        for tok, r in zip(result_toks, op.results):
            self.define(scope, tok, r)
        if self.at("{") and "region" not in d.traits:
            raise self.error(f"'{name}' takes no region (only 'fusion' holds one)")
        while self.at("{"):
            self.enter("regions", self.next())
            bb = self.expect_kind("block", "a block label like ^bb0")
            del bb
            args = self.parse_args(scope)
            self.expect(":")
            region = Block([t for _, t, _ in args], [n for n, _, _ in args])
            inner: dict[str, Value] = {}  # regions are isolated from above
            for (_, _, tok), v in zip(args, region.args):
                self.define(inner, tok, v)
            self.parse_block_body(region, inner, "yield")
            self.expect("}", "to close the region")
            self.depth -= 1
            op.add_region(region)
        return op

    def parse_graph(self) -> Graph:
        self.expect("func", "to start a function")
        name = self.symbol(self.expect_kind("symbol", "a function name like @forward"))
        scope: dict[str, Value] = {}
        args = self.parse_args(scope)
        body = Block([t for _, t, _ in args], [n for n, _, _ in args])
        for (_, _, tok), v in zip(args, body.args):
            self.define(scope, tok, v)
        self.expect("->")
        self.expect("(")
        out_types = []
        if not self.accept(")"):
            out_types.append(self.parse_type())
            while self.accept(","):
                out_types.append(self.parse_type())
            self.expect(")")
        self.expect("{", "to open the function body")
        graph = Graph(name, body)
        ret_tok = None
        self.parse_block_body(body, scope, "return")
        ret_tok = self.toks[self.i - 1]
        self.expect("}", "to close the function")
        if self.tok.kind != "eof":
            raise self.error(f"unexpected {self.tok!r} after the function")
        got = [v.type for v in graph.outputs]
        if got != out_types:
            raise self.error(f"return gives ({', '.join(map(str, got))}) but the signature says "
                             f"({', '.join(map(str, out_types))})", ret_tok)
        return graph


def parse(text: str, source: str | None = None) -> Graph:
    """Parse text IR into a verified Graph. Raises ParseError naming line and column, also for
    text that reads but does not verify (then a `LocatedVerifyError`, a VerifyError as well), so
    a hand edit's type mismatch points at its line as a typo does, as MLIR's parser does."""
    p = _Parser(text, source)
    graph = p.parse_graph()
    try:
        verify(graph)
    except VerifyError as e:
        tok = p.where.get(e.op) if e.op is not None else None
        tok = tok or p.toks[0]
        raise LocatedVerifyError(e, tok.line, tok.col, source) from None
    return graph
