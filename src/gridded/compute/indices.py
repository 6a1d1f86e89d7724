"""Band indices (NDVI and friends) as expressions over band names, read by a small whitelist grammar
(never eval, never numexpr on user text) and evaluated per observation in float32.

    expression := term (("+" | "-") term)*
    term       := factor (("*" | "/") factor)*
    factor     := ("+" | "-") factor | atom
    atom       := number | band | function "(" expression ("," expression)* ")" | "(" expression ")"

A division by zero is NaN, as is any operation on a missing value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NoReturn

import numpy as np

from ..errors import ConfigError

BUILTIN_INDICES = {
    "ndvi": "(nir - red) / (nir + red)",
    "ndwi": "(green - nir) / (green + nir)",  # McFeeters 1996: open water
    "nbr": "(nir - swir22) / (nir + swir22)",
    "ndmi": "(nir - swir16) / (nir + swir16)",
    "evi": "2.5 * (nir - red) / (nir + 6 * red - 7.5 * blue + 1)",
    "savi": "1.5 * (nir - red) / (nir + red + 0.5)",
}
# a built-in's common names, as other sensors' assets name those bands (Landsat's nir08)
ALIASES = {"nir": ("nir08", "B08", "nir"), "red": ("B04",), "green": ("B03",), "blue": ("B02",),
           "swir16": ("B11",), "swir22": ("B12",)}
FUNCTIONS = {"sqrt": 1, "abs": 1, "exp": 1, "log": 1, "clip": 3, "min": 2, "max": 2}
TOKEN = re.compile(r"\s*(?:(?P<number>\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)"
                   r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<op>[-+*/(),]))")
NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True, slots=True)
class Node:
    """A parsed expression: ("num", value), ("band", name), ("neg", x), (op, a, b) or ("call", f, args...)."""

    kind: str
    args: tuple = ()


class _Parser:
    def __init__(self, text: str, where: str):
        self.text, self.where = text, where
        self.tokens: list[tuple[str, str, int]] = []
        pos = 0
        while pos < len(text):
            match = TOKEN.match(text, pos)
            if not match or match.end() == pos:
                if text[pos:].strip() == "":
                    break
                bad = text[pos:].lstrip()[0]
                self.fail(pos + len(text[pos:]) - len(text[pos:].lstrip()), f"unexpected {bad!r}")
            kind = match.lastgroup
            if kind is None:  # trailing spaces
                break
            self.tokens.append((kind, match.group(kind), match.start(kind)))
            pos = match.end()
        self.i = 0

    def fail(self, pos: int, what: str) -> NoReturn:
        raise ConfigError(f"{self.where}: {what} at position {pos + 1} of {self.text!r}; use band names, numbers, "
                          f"+ - * /, parentheses and {', '.join(FUNCTIONS)}")

    def peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, value: str | None = None) -> tuple[str, str, int]:
        token = self.peek()
        if token is None:
            self.fail(len(self.text), f"expected {value!r}" if value else "the expression ends too soon")
        if value is not None and token[1] != value:
            self.fail(token[2], f"expected {value!r}, found {token[1]!r}")
        self.i += 1
        return token

    def parse(self) -> Node:
        if not self.tokens:
            self.fail(0, "an empty expression")
        node = self.expression()
        if (token := self.peek()) is not None:
            self.fail(token[2], f"unexpected {token[1]!r}")
        return node

    def expression(self) -> Node:
        node = self.term()
        while (token := self.peek()) and token[1] in "+-":
            op = self.take()[1]
            node = Node(op, (node, self.term()))
        return node

    def term(self) -> Node:
        node = self.factor()
        while (token := self.peek()) and token[1] in "*/":
            op = self.take()[1]
            node = Node(op, (node, self.factor()))
        return node

    def factor(self) -> Node:
        token = self.peek()
        if token and token[1] in "+-":
            self.take()
            inner = self.factor()
            return inner if token[1] == "+" else Node("neg", (inner,))
        return self.atom()

    def atom(self) -> Node:
        kind, value, pos = self.take()
        if kind == "number":
            return Node("num", (float(value),))
        if value == "(":
            node = self.expression()
            self.take(")")
            return node
        if kind == "name":
            if (token := self.peek()) and token[1] == "(":
                if value not in FUNCTIONS:
                    self.fail(pos, f"function {value!r} is not allowed")
                self.take("(")
                args = [self.expression()]
                while (token := self.peek()) and token[1] == ",":
                    self.take(",")
                    args.append(self.expression())
                self.take(")")
                if len(args) != FUNCTIONS[value]:
                    self.fail(pos, f"{value} takes {FUNCTIONS[value]} argument(s), got {len(args)}")
                return Node("call", (value, *args))
            if value in FUNCTIONS:
                self.fail(pos, f"{value} is a function; call it, e.g. {value}(nir)")
            return Node("band", (value,))
        self.fail(pos, f"unexpected {value!r}")


def parse_expression(text: str, *, where: str = "--band-index") -> Node:
    """An index expression -> its tree; a one-line ConfigError naming the position of what is wrong."""
    return _Parser(text, where).parse()


def bands_of(node: Node) -> set[str]:
    """The band names an expression reads."""
    return set(bands_in_order(node))


def bands_in_order(node: Node) -> tuple[str, ...]:
    """The band names an expression reads, each once, as they appear in it."""
    if node.kind == "band":
        return (node.args[0],)
    if node.kind == "num":
        return ()
    children = node.args[1:] if node.kind == "call" else node.args
    return tuple(dict.fromkeys(band for child in children for band in bands_in_order(child)))


def evaluate(node: Node, values: dict[str, np.ndarray]) -> np.ndarray:
    """The expression over float32 arrays (NaN where a value is missing): float32, NaN where any
    input is NaN, and where a division is by zero."""
    with np.errstate(all="ignore"):
        result = _eval(node, values)
    if np.ndim(result) == 0:  # an expression of numbers only
        result = np.full(next(iter(values.values())).shape, result, dtype=np.float32)
    return np.asarray(result, dtype=np.float32)


# what the fused kernel computes exactly as numpy does; exp and log are left to evaluate(): numpy's
# float32 exp and log and the C library's can differ in the last bit
FUSED_CALLS = ("sqrt", "abs", "min", "max", "clip")


def fused(node: Node) -> bool:
    """Whether the fused kernel computes the expression (program_of is not None), without
    importing numba: it reads a band and calls nothing but FUSED_CALLS."""
    def calls_fused(n: Node) -> bool:
        if n.kind in ("num", "band"):
            return True
        if n.kind == "call" and n.args[0] not in FUSED_CALLS:
            return False
        return all(calls_fused(child) for child in (n.args[1:] if n.kind == "call" else n.args))

    return bool(bands_of(node)) and calls_fused(node)


def program_of(node: Node) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]] | None:
    """An expression as instructions for the fused kernel (compute/_jit.py index_rows): the code
    ((n, 5) int64: opcode, register, operands), the constants (float32) and the bands it loads in
    the order the code numbers them; None for an expression the kernel does not compute (a call to
    exp or log, or numbers only)."""
    if not fused(node):
        return None
    from . import _jit as j

    ops = {"+": j.OP_ADD, "-": j.OP_SUB, "*": j.OP_MUL, "/": j.OP_DIV}
    calls = {"sqrt": j.OP_SQRT, "abs": j.OP_ABS, "min": j.OP_MIN, "max": j.OP_MAX, "clip": j.OP_CLIP}
    code: list[tuple[int, ...]] = []
    consts: list[float] = []
    loaded: dict[str, int] = {}

    def emit(op: int, *operands: int) -> int:
        code.append((op, len(code), *operands, *(0,) * (3 - len(operands))))
        return len(code) - 1

    def walk(n: Node) -> int:
        if n.kind == "num":
            consts.append(float(np.float32(n.args[0])))
            return emit(j.OP_NUM, len(consts) - 1)
        if n.kind == "band":
            if n.args[0] not in loaded:  # each band loaded once a row
                loaded[n.args[0]] = emit(j.OP_BAND, len(loaded))
            return loaded[n.args[0]]
        registers = [walk(child) for child in (n.args[1:] if n.kind == "call" else n.args)]
        op = j.OP_NEG if n.kind == "neg" else calls[n.args[0]] if n.kind == "call" else ops[n.kind]
        return emit(op, *registers)

    walk(node)
    return np.array(code, dtype=np.int64), np.array(consts or [0], dtype=np.float32), tuple(loaded)


def index_stack(node: Node, stacks: dict[str, np.ndarray], sentinels: dict, encodings: dict[str, tuple[float, float]],
                physical, *, threads: int | None = None) -> np.ndarray:
    """An index per observation, (time, y, x) float32 with NaN where any band it reads is unclear:
    evaluate() over the bands' physical values, as one pass of the fused kernel where it can (the
    bands stored in one dtype) and through numpy otherwise, with the same float32 results.
    `physical(band)`: a band's float32 physical values, for the numpy path."""
    program = program_of(node)
    if not bands_of(node):  # numbers only: the one value everywhere
        return np.full(next(iter(stacks.values())).shape, evaluate(node, {"": np.zeros(1, np.float32)})[0])
    if program is None or len({stacks[b].dtype for b in program[2]}) != 1:
        return evaluate(node, {band: physical(band) for band in bands_of(node)})
    from ._jit import index_rows
    from .arrays import is_float_dtype, sentinels_for
    from .blocks import run_in_row_blocks

    code, consts, names = program
    bands = tuple(np.ascontiguousarray(stacks[b]) for b in names)
    dtype = bands[0].dtype
    typed, use = sentinels_for({b: stacks[b] for b in names}, sentinels, dtype)
    scales = np.array([encodings[b][0] for b in names], dtype=np.float32)
    offsets = np.array([encodings[b][1] for b in names], dtype=np.float32)
    out: np.ndarray = np.empty(bands[0].shape, dtype=np.float32)

    def rows(r0: int, r1: int) -> None:
        regs = np.empty((len(code), out.shape[-1]), dtype=np.float32)
        index_rows(bands, typed, use, is_float_dtype(dtype), scales, offsets, code, consts, r0, r1, regs, out)

    run_in_row_blocks(rows, out.shape[-2], threads)
    return out


def _eval(node: Node, values: dict[str, np.ndarray]):
    if node.kind == "num":
        return np.float32(node.args[0])
    if node.kind == "band":
        return values[node.args[0]]
    if node.kind == "neg":
        return -_eval(node.args[0], values)
    if node.kind == "call":
        name, *args = node.args
        evaluated = [_eval(a, values) for a in args]
        if name == "clip":
            return np.clip(*evaluated)
        if name in ("min", "max"):  # NaN in, NaN out, as for every other operation
            return (np.minimum if name == "min" else np.maximum)(*evaluated)
        return {"sqrt": np.sqrt, "abs": np.abs, "exp": np.exp, "log": np.log}[name](evaluated[0])
    a, b = (_eval(x, values) for x in node.args)
    if node.kind == "+":
        return a + b
    if node.kind == "-":
        return a - b
    if node.kind == "*":
        return a * b
    return np.where(b == 0, np.float32(np.nan), a / np.where(b == 0, np.float32(1), b))


def resolve_index(name: str, expression: str | None, bands: tuple[str, ...], *, where: str = "--band-index") -> str:
    """The expression of an index: the one given, or a built-in's with its band names as the bands
    read call them (nir is nir08 for Landsat); a one-line ConfigError for a band not read. No bands:
    any band may be named (an index-only product reads the bands its indices name)."""
    if not NAME.match(name):
        raise ConfigError(f"{where} {name}: an index name is lower-case letters, digits and '_', e.g. ndvi")
    if name in bands:
        raise ConfigError(f"{where} {name}: {name} is also a band name; call the index something else")
    where = f"{where} {name}"
    if expression is None:
        if name not in BUILTIN_INDICES:
            raise ConfigError(f"{where}: not a built-in index ({', '.join(BUILTIN_INDICES)}); give its "
                              f"expression, e.g. --band-index {name}=(nir-red)/(nir+red)")
        expression = BUILTIN_INDICES[name]
        for band in sorted(bands_of(parse_expression(expression, where=where))):
            if band not in bands:
                alias = next((a for a in ALIASES.get(band, ()) if a in bands), None)
                if alias:
                    expression = re.sub(rf"\b{band}\b", alias, expression)
    if bands:
        check_bands_read(where, expression, bands)
    else:
        parse_expression(expression, where=f"{where}={expression}")
    return expression


def check_bands_read(where: str, expression: str, bands: tuple[str, ...]) -> None:
    """A one-line ConfigError if the expression names a band not among those read."""
    missing = sorted(bands_of(parse_expression(expression, where=f"{where}={expression}")) - set(bands))
    if missing:
        raise ConfigError(f"{where}={expression}: names band(s) {', '.join(missing)}, which are not read; add them "
                          f"to --bands (reading {', '.join(bands)})")
