"""A small, safe language for Celldetective's feature queries.

Celldetective evaluates queries with ``DataFrame.query``, which can run arbitrary
code. Here a query is parsed by a recursive-descent parser into a tree of a few node
types and evaluated over arrays; nothing is ever passed to ``eval``.

Grammar (pandas-compatible subset)::

    expr    := or
    or      := and (("or" | "|") and)*
    and     := not (("and" | "&") not)*
    not     := ("not" | "~") not | compare
    compare := sum (("<" | "<=" | ">" | ">=" | "==" | "!=") sum)*   # chains like 10 < area < 80
    sum     := product (("+" | "-") product)*
    product := unary (("*" | "/") unary)*
    unary   := "-" unary | atom
    atom    := NUMBER | NAME | `quoted name` | "(" expr ")"

Names refer to per-object measurements (``area``, ``eccentricity``,
``<channel>_mean``...). Comparisons with NaN are false, as in pandas.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

__all__ = ["Query", "QuerySyntaxError", "parse_query"]


class QuerySyntaxError(ValueError):
    """A query that does not follow the grammar."""


_TOKEN = re.compile(
    r"""\s*(?:
        (?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
      | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
      | `(?P<quoted>[^`]+)`
      | (?P<op><=|>=|==|!=|<|>|\(|\)|\+|-|\*|/|&|\||~)
    )""",
    re.VERBOSE,
)
_COMPARE: dict[str, Callable] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt,
    ">=": operator.ge, "==": operator.eq, "!=": operator.ne,
}
_ARITH: dict[str, Callable] = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}
_CONSTANTS = {"inf": math.inf, "nan": math.nan, "True": 1.0, "False": 0.0}


def _tokenize(text: str) -> list[tuple[str, str]]:
    pos, out = 0, []
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise QuerySyntaxError(f"unexpected character {text[pos:].strip()[:1]!r} at position {pos} in {text!r}")
        kind = m.lastgroup
        val = m.group(kind)
        if kind == "name" and val in ("and", "or", "not"):
            kind = "op"
        out.append((kind, val))
        pos = m.end()
    return out


@dataclass(frozen=True)
class _Node:
    kind: str          # num, name, cmp, arith, neg, not, and, or
    value: object = None
    args: tuple = ()


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.toks = _tokenize(text)
        self.i = 0

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, *values: str) -> str | None:
        tok = self.peek()
        if tok and tok[0] == "op" and tok[1] in values:
            self.i += 1
            return tok[1]
        return None

    def parse(self) -> _Node:
        if not self.toks:
            raise QuerySyntaxError("empty query")
        node = self.or_()
        if self.peek() is not None:
            raise QuerySyntaxError(f"unexpected {self.peek()[1]!r} in {self.text!r}")
        return node

    def or_(self) -> _Node:
        node = self.and_()
        while self.take("or", "|"):
            node = _Node("or", args=(node, self.and_()))
        return node

    def and_(self) -> _Node:
        node = self.not_()
        while self.take("and", "&"):
            node = _Node("and", args=(node, self.not_()))
        return node

    def not_(self) -> _Node:
        if self.take("not", "~"):
            return _Node("not", args=(self.not_(),))
        return self.compare()

    def compare(self) -> _Node:
        first = self.sum_()
        terms, ops = [first], []
        while (op := self.take(*_COMPARE)) is not None:
            ops.append(op)
            terms.append(self.sum_())
        if not ops:
            return first
        # a < b < c means (a < b) and (b < c), as in Python and pandas
        node = _Node("cmp", ops[0], (terms[0], terms[1]))
        for k in range(1, len(ops)):
            node = _Node("and", args=(node, _Node("cmp", ops[k], (terms[k], terms[k + 1]))))
        return node

    def sum_(self) -> _Node:
        node = self.product()
        while (op := self.take("+", "-")) is not None:
            node = _Node("arith", op, (node, self.product()))
        return node

    def product(self) -> _Node:
        node = self.unary()
        while (op := self.take("*", "/")) is not None:
            node = _Node("arith", op, (node, self.unary()))
        return node

    def unary(self) -> _Node:
        if self.take("-"):
            return _Node("neg", args=(self.unary(),))
        if self.take("+"):
            return self.unary()
        return self.atom()

    def atom(self) -> _Node:
        tok = self.peek()
        if tok is None:
            raise QuerySyntaxError(f"query {self.text!r} ends too early")
        kind, val = tok
        if kind == "op" and val == "(":
            self.i += 1
            node = self.or_()
            if not self.take(")"):
                raise QuerySyntaxError(f"missing ')' in {self.text!r}")
            return node
        if kind == "num":
            self.i += 1
            return _Node("num", float(val))
        if kind in ("name", "quoted"):
            self.i += 1
            if kind == "name" and val in _CONSTANTS:
                return _Node("num", _CONSTANTS[val])
            return _Node("name", val)
        raise QuerySyntaxError(f"unexpected {val!r} in {self.text!r}")


def _names(node: _Node) -> set[str]:
    if node.kind == "name":
        return {node.value}
    out: set[str] = set()
    for a in node.args:
        out |= _names(a)
    return out


def _eval(node: _Node, table: Mapping[str, np.ndarray]):
    k = node.kind
    if k == "num":
        return node.value
    if k == "name":
        return np.asarray(table[node.value], dtype=float)
    if k == "neg":
        return -_eval(node.args[0], table)
    if k == "arith":
        with np.errstate(divide="ignore", invalid="ignore"):
            return _ARITH[node.value](_eval(node.args[0], table), _eval(node.args[1], table))
    if k == "cmp":
        with np.errstate(invalid="ignore"):
            return _COMPARE[node.value](_eval(node.args[0], table), _eval(node.args[1], table))
    if k == "not":
        return ~np.asarray(_eval(node.args[0], table), dtype=bool)
    a = np.asarray(_eval(node.args[0], table), dtype=bool)
    b = np.asarray(_eval(node.args[1], table), dtype=bool)
    return (a & b) if k == "and" else (a | b)


@dataclass(frozen=True)
class Query:
    """A parsed query: ``names`` it reads, and ``matches(table)`` over per-object columns."""

    text: str
    tree: _Node

    @property
    def names(self) -> set[str]:
        return _names(self.tree)

    def matches(self, table: Mapping[str, np.ndarray], n: int) -> np.ndarray:
        """Boolean array: which of the ``n`` objects the query selects."""
        missing = self.names - set(table)
        if missing:
            raise KeyError(f"query {self.text!r} uses unknown feature(s) {sorted(missing)}")
        out = np.asarray(_eval(self.tree, table))
        if out.dtype != bool:
            raise QuerySyntaxError(f"query {self.text!r} is not a condition (it has no comparison)")
        return np.broadcast_to(out, (n,)).copy()


def parse_query(text: str) -> Query:
    """Parse a feature query; raises :class:`QuerySyntaxError` with a readable message."""
    if not isinstance(text, str):
        raise QuerySyntaxError(f"a query must be a string, got {text!r}")
    return Query(text, _Parser(text).parse())
