"""Branch-free ``exp``, ``log`` and ``pow`` that LLVM can vectorise across cells.

Numba's ``math.exp``/``math.log`` compile to calls into libm, and a loop containing such a call is
never vectorised (this Numba build has no SVML). The generated voltage-clamp kernel advances a
block of cells in lock step, so these functions are written as plain arithmetic, selects and bit
casts. They are kept as source *templates*: the code generator expands them in place as
straight-line statements, because Numba's function-inlining pass is far too slow for the ~100 call
sites of a cardiac model, and LLVM alone does not inline them. ``vexp``, ``vlog`` and ``vpow``
below are compiled from the same templates, for tests and direct use.

Accuracy (``tests/test_vmath.py``, against numpy): relative error below 1e-13 for ``vexp`` on
[-708, 709] (the fast-math flags let LLVM reassociate the range reduction, costing the last
digits near the ends of the range) and below 1e-15 for ``vlog``; special values (0, negative,
inf, NaN) follow libm. Results that would be subnormal are flushed to zero.

Method: range reduction x = k ln2 + r, |r| <= ln2/2, a degree-12 Taylor polynomial for e^r and 2^k
assembled from its IEEE exponent bits; log splits x = 2^e m with m in [sqrt(1/2), sqrt(2)) from the
bits and sums the atanh series of s = (m-1)/(m+1) (log m = 2 atanh s, |s| <= 0.1716). Textbook
constructions, e.g. J.-M. Muller, "Elementary Functions", 3rd ed., Birkhauser 2016, ch. 11.
"""

from __future__ import annotations

import math

import numba as nb
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

#: LLVM fast-math flags without 'nnan'/'ninf', so NaN comparisons keep their meaning. Even so,
#: ``math.isfinite`` does not survive them (it is folded to True); the kernels test finiteness
#: with ``abs(x) < inf``.
FASTMATH_FLAGS = ("nsz", "arcp", "contract", "afn", "reassoc")
FASTMATH = set(FASTMATH_FLAGS)


@intrinsic
def double_from_bits(typingctx, bits):
    """Reinterpret the 64 bits of an int64 as a float64."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


@intrinsic
def bits_from_double(typingctx, value):
    """Reinterpret the 64 bits of a float64 as an int64."""
    if not isinstance(value, types.Float):
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return types.int64(types.float64), codegen


@intrinsic
def select(typingctx, condition, if_true, if_false):
    """``if_true if condition else if_false`` for floats, as one LLVM ``select``.

    A conditional expression becomes branches and blocks in Numba's IR, whose SSA
    reconstruction takes minutes on the large loops of the lane kernels; this is one call.
    """
    if not (isinstance(condition, types.Boolean) and isinstance(if_true, types.Float)):
        return None

    def codegen(context, builder, signature, args):
        return builder.select(args[0], args[1], args[2])

    return types.float64(types.boolean, types.float64, types.float64), codegen


def _horner(var: str, coefficients: list[float]) -> str:
    """``c0 + var*(c1 + var*(...))`` as source text."""
    text = repr(coefficients[-1])
    for c in reversed(coefficients[:-1]):
        text = f"{c!r} + {var} * ({text})"
    return text


_EXP_POLY = _horner("{t}_r", [1.0 / math.factorial(n) for n in range(13)])
_LOG_POLY = _horner("{t}_s2", [1.0 / (2 * n + 1) for n in range(11)])

#: ``{t} = e**{x}``; every temporary is prefixed with ``{t}``.
EXP_TEMPLATE = f"""\
{{t}}_a = {{x}}
{{t}}_c = min(max({{t}}_a, -708.3), 709.7)
{{t}}_k = math.floor({{t}}_c * 1.4426950408889634 + 0.5)
{{t}}_r = ({{t}}_c - {{t}}_k * 6.93147180369123816490e-01) - {{t}}_k * 1.90821492927058770002e-10
{{t}} = ({_EXP_POLY}) * double_from_bits((nb.int64({{t}}_k) + 1023) << 52)
{{t}} = 0.0 if {{t}}_a < -708.3 else {{t}}
{{t}} = math.inf if {{t}}_a > 709.7 else {{t}}
{{t}} = {{t}}_a if {{t}}_a != {{t}}_a else {{t}}
"""

#: ``{t} = log({x})``; subnormal inputs are scaled by 2**54 so their exponent bits are valid.
LOG_TEMPLATE = f"""\
{{t}}_a = {{x}}
{{t}}_tiny = {{t}}_a < 2.2250738585072014e-308
{{t}}_b = bits_from_double({{t}}_a * 18014398509481984.0 if {{t}}_tiny else {{t}}_a)
{{t}}_m = double_from_bits(({{t}}_b & 0x000FFFFFFFFFFFFF) | 0x3FF0000000000000)
{{t}}_big = {{t}}_m > 1.4142135623730951
{{t}}_m = 0.5 * {{t}}_m if {{t}}_big else {{t}}_m
{{t}}_e = float((({{t}}_b >> 52) & 0x7FF) - 1023) + (1.0 if {{t}}_big else 0.0)
{{t}}_e = {{t}}_e - (54.0 if {{t}}_tiny else 0.0)
{{t}}_s = ({{t}}_m - 1.0) / ({{t}}_m + 1.0)
{{t}}_s2 = {{t}}_s * {{t}}_s
{{t}} = 2.0 * {{t}}_s * ({_LOG_POLY}) + {{t}}_e * 0.6931471805599453
{{t}} = -math.inf if {{t}}_a == 0.0 else {{t}}
{{t}} = math.nan if {{t}}_a < 0.0 else {{t}}
{{t}} = {{t}}_a if {{t}}_a == math.inf else {{t}}
{{t}} = {{t}}_a if {{t}}_a != {{t}}_a else {{t}}
"""

#: ``{t} = {x}**{y}`` for x >= 0 (rate equations); NaN for x < 0.
POW_TEMPLATE = (
    "{t}_x = {x}\n{t}_y = {y}\n"
    + LOG_TEMPLATE.format(t="{t}_l", x="{t}_x")
    + EXP_TEMPLATE.format(t="{t}", x="{t}_y * {t}_l")
    + "{t} = (1.0 if {t}_y == 0.0 else (0.0 if {t}_y > 0.0 else math.inf)) if {t}_x == 0.0 "
    "else {t}\n"
)


def expand(template: str, name: str, **operands: str) -> list[str]:
    """Statements computing ``name`` from ``template`` with the given operand expressions."""
    return template.format(t=name, **operands).splitlines()


def _compile(function: str, args: str, template: str):
    lines = expand(template, "t", **{a: a for a in args.split(", ")})
    source = f"def {function}({args}):\n" + "".join(f"    {line}\n" for line in lines)
    source += "    return t\n"
    namespace = {
        "math": math,
        "nb": nb,
        "double_from_bits": double_from_bits,
        "bits_from_double": bits_from_double,
    }
    exec(compile(source, f"<sbi_twins.vmath.{function}>", "exec"), namespace)
    return nb.njit(fastmath=FASTMATH, error_model="numpy")(namespace[function])


vexp = _compile("vexp", "x", EXP_TEMPLATE)
vlog = _compile("vlog", "x", LOG_TEMPLATE)
vpow = _compile("vpow", "x, y", POW_TEMPLATE)
