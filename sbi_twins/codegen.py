"""Generate batched Numba kernels (Python source text) from a :class:`ModelAnalysis`.

Integration scheme (both modes)
-------------------------------
Every step of length ``h`` is an explicit-midpoint (RK2) step for the non-gate states combined with
Rush-Larsen updates for the Hodgkin-Huxley gates (Marsh, Ziaratgahi & Spiteri 2012, IEEE TBME
59:2584, "RL2"-style)::

    f0     = F(y_n, V_n)                                  # also yields I_ion(t_n) for output
    V_mid  = V(t_n + h/2)            (clamp)  or  V_n + h/2 * dV/dt   (current clamp)
    g_mid  = g_inf(V_mid) + (g_n - g_inf(V_mid)) * exp(-h / (2 tau(V_mid)))
    y_mid  = y_n + h/2 * f0
    f_mid  = F(y_mid, g_mid, V_mid)
    y_n+1  = y_n + h * f_mid
    g_n+1  = g_inf(V_mid) + (g_n - g_inf(V_mid)) * exp(-h / tau(V_mid))

Under a constant-voltage clamp segment the gate update is exact and every voltage-only term
(steady states, decay factors, GHK exponentials, rectification factors) is hoisted out of the time
loop: it is evaluated once per segment instead of once per step. The remaining error sits in the
explicitly integrated states and is second order in ``h``.

Current clamp uses the same step with an error-controlled step size: the difference between the
midpoint and the Euler update is the local error estimate of the Euler step, a conservative bound
for the midpoint step; steps are rejected when it exceeds the tolerance, and they land exactly on
output samples and stimulus edges.
"""

from __future__ import annotations

import textwrap

import myokit
from myokit.formats.python import PythonExpressionWriter

from .model_analysis import Kind, ModelAnalysis, identifier

#: Bump when the generated code changes, so stale kernels in the disk cache are not reused.
CODEGEN_VERSION = "3"

#: LLVM fast-math flags that are safe for NaN/inf detection (no 'nnan'/'ninf'): a bare
#: ``fastmath=True`` would let LLVM fold ``math.isfinite`` to True.
FASTMATH_FLAGS = ("nsz", "arcp", "contract", "afn", "reassoc")


class _Writer(PythonExpressionWriter):
    """Myokit's Python expression writer with our identifiers for variables.

    ``hoisted`` maps the code of sub-expressions that were lifted into temporaries to the
    temporary's name; the writer then refers to the temporary instead of re-evaluating them.
    """

    def __init__(self, hoisted: dict[str, str] | None = None) -> None:
        super().__init__()
        self.set_lhs_function(lambda lhs: identifier(lhs.var()))
        self.hoisted = hoisted or {}

    def ex(self, e: myokit.Expression) -> str:
        name = self.hoisted.get(e.code()) if self.hoisted else None
        return name if name is not None else super().ex(e)

    def _ex_power(self, e: myokit.Power) -> str:
        # x^3 as an integer power lets LLVM use multiplications instead of a pow() call.
        exponent = e[1]
        if isinstance(exponent, myokit.Number) and float(exponent).is_integer():
            base = self.ex(e[0])
            return f"({base})**{int(float(exponent))}"
        return super()._ex_power(e)


class KernelSource:
    """Source text of the generated kernel module for one model.

    Parameters
    ----------
    analysis : ModelAnalysis
        The analysed model.
    """

    def __init__(self, analysis: ModelAnalysis):
        self.a = analysis
        self._w = _Writer()
        self._hoisted = {Kind.CONST: {}, Kind.VOLT: {}}
        for expr in self._dyn_expressions(include_v=True):
            self._hoist(expr)
        self._w_dyn = _Writer({**self._hoisted[Kind.CONST], **self._hoisted[Kind.VOLT]})

    # -- hoisting --------------------------------------------------------------------------------
    def _dyn_expressions(self, include_v: bool) -> list[myokit.Expression]:
        variables = self.a.closure(self._targets(include_v), Kind.DYN)
        return [v.rhs() for v in variables] + [rhs for _, rhs in self.a.explicit_rhs(include_v)]

    def _hoist(self, expr: myokit.Expression) -> None:
        """Lift the largest parameter- or voltage-only sub-expressions of a state-dependent
        expression into temporaries (e.g. the GHK exponentials inside I_CaL), so that they are
        evaluated once per cell or per clamp segment instead of every step."""
        kind = self.a.expr_kind(expr)
        if kind == Kind.DYN:
            for operand in expr:
                self._hoist(operand)
        elif not (isinstance(expr, myokit.Name) or expr.is_literal()):
            table = self._hoisted[kind]
            table.setdefault(expr.code(), f"k_{('const', 'volt')[kind]}{len(table)}")

    def _hoisted_lines(self, kind: Kind) -> list[str]:
        return [
            f"{name} = {self._w.ex(myokit.parse_expression(code, self.a.model))}"
            for code, name in self._hoisted[kind].items()
        ]

    # -- building blocks -------------------------------------------------------------------------
    def _ex(self, expr: myokit.Expression) -> str:
        return self._w.ex(expr)

    def _assign(self, variables: list[myokit.Variable], writer: _Writer | None = None) -> list[str]:
        writer = writer or self._w
        return [f"{identifier(v)} = {writer.ex(v.rhs())}" for v in variables]

    def _targets(self, include_v: bool) -> list[myokit.Expression]:
        exprs = [rhs for _, rhs in self.a.explicit_rhs(include_v)]
        return exprs + [myokit.Name(self.a.i_ion)]

    def _gate_exprs(self) -> list[myokit.Expression]:
        return [e for g in self.a.gates for e in (g.inf, g.rate)]

    def _volt_block(self, include_v: bool, with_gates: bool) -> list[str]:
        """Voltage-only variables (and, optionally, gate steady states and decay factors)."""
        exprs = self._targets(include_v) + (self._gate_exprs() if with_gates else [])
        lines = self._assign(self.a.closure(exprs, Kind.VOLT)) + self._hoisted_lines(Kind.VOLT)
        if with_gates:
            for k, gate in enumerate(self.a.gates):
                lines.append(f"k_inf{k} = {self._ex(gate.inf)}")
                lines.append(f"k_dh{k} = math.exp(-0.5 * k_h * ({self._ex(gate.rate)}))")
                lines.append(f"k_df{k} = k_dh{k} * k_dh{k}")
        return lines

    def _dyn_block(self, include_v: bool, prefix: str) -> list[str]:
        """State-dependent variables, then the derivatives ``{prefix}{k}`` of explicit states."""
        lines = self._assign(self.a.closure(self._targets(include_v), Kind.DYN), self._w_dyn)
        for k, (_, rhs) in enumerate(self.a.explicit_rhs(include_v)):
            lines.append(f"{prefix}{k} = {self._w_dyn.ex(rhs)}")
        return lines

    def _const_block(self) -> list[str]:
        exprs = self._targets(True) + self._gate_exprs()
        return self._assign(self.a.closure(exprs, Kind.CONST)) + self._hoisted_lines(Kind.CONST)

    def _unpack(self) -> list[str]:
        lines = [f"{identifier(p)} = params[k_cell, {k}]" for k, p in enumerate(self.a.parameters)]
        lines += [f"{identifier(s)} = y0[k_cell, {k}]" for k, s in enumerate(self.a.states)]
        for bound in (self.a.time, self.a.pace):
            if bound is not None:
                lines.append(f"{identifier(bound)} = 0.0")
        return lines

    def _save(self, include_v: bool) -> list[str]:
        lines = [f"k_y{k} = {identifier(s)}" for k, (s, _) in enumerate(self.a.explicit_rhs(include_v))]
        lines += [f"k_g{k} = {identifier(g.state)}" for k, g in enumerate(self.a.gates)]
        return lines

    def _advance(self, include_v: bool, fraction: str, deriv: str, decay: str) -> list[str]:
        """Explicit states ``y = y_saved + fraction*h*deriv``; gates Rush-Larsen with ``decay``."""
        lines = [
            f"{identifier(s)} = k_y{k} + {fraction}k_h * {deriv}{k}"
            for k, (s, _) in enumerate(self.a.explicit_rhs(include_v))
        ]
        lines += [
            f"{identifier(g.state)} = k_inf{k} + (k_g{k} - k_inf{k}) * {decay}{k}"
            for k, g in enumerate(self.a.gates)
        ]
        return lines

    def _set_time(self, expr: str) -> list[str]:
        return [f"{identifier(self.a.time)} = {expr}"] if self.a.uses(self.a.time) else []

    def _set_pace(self, expr: str) -> list[str]:
        return [f"{identifier(self.a.pace)} = {expr}"] if self.a.pace is not None else []

    # -- kernels ---------------------------------------------------------------------------------
    def vc_kernel(self) -> str:
        """Ideal voltage clamp: V follows the command; output is I_ion on the sample grid.

        Time is cut into base intervals ``dt`` (every segment edge and every sample lies on this
        grid). On constant-voltage segments a step spans two base intervals, so its midpoint
        evaluation also yields I_ion at a grid point (one state-dependent evaluation per base
        interval); a segment with an odd number of base intervals ends with one single-interval
        step. On ramps and sines every step is one base interval: there the gates are updated
        with their kinetics at the step's midpoint voltage, which needs the shorter step to stay
        within the accuracy band (measured on clark2022, BENCHMARKS.md).
        """
        v = identifier(self.a.v)
        i_ion = identifier(self.a.i_ion)
        command = (
            f"{v} = _command(k_kind, seg_v0[k_seg], seg_v1[k_seg], seg_amp[k_seg], "
            "seg_freq[k_seg], seg_phase[k_seg], {t}, k_n * dt)"
        )
        body = [
            *self._unpack(),
            *self._const_block(),
            "k_out = 0",
            "k_base = 0",
            "k_alive = True",
            "for k_seg in range(seg_kind.shape[0]):",
            "    k_kind = seg_kind[k_seg]",
            "    k_n = seg_nsteps[k_seg]",
            "    # steps span two base intervals on constant segments only: on ramps and sines",
            "    # the gates see the voltage at one point per step, so steps stay short there",
            "    k_pairs = k_n // 2 if k_kind == 0 else 0",
            "    k_tseg = 0.0",
            "    k_h = 2.0 * dt if k_pairs > 0 else dt",
            "    if k_kind == 0:",
            f"        {v} = seg_v0[k_seg]",
            *_indent(self._volt_block(False, True), 2),
            "    for k_i in range(k_n - k_pairs):",
            "        k_h = 2.0 * dt if k_i < k_pairs else dt",
            "        if k_kind == 0 and k_i == k_pairs and k_i > 0:",
            "            # an odd number of base intervals ends with one single-interval step",
            *_indent(self._volt_block(False, True), 3),
            *_indent(self._set_time("seg_t0[k_seg] + k_tseg"), 2),
            "        if k_kind != 0:",
            "            " + command.format(t="k_tseg"),
            *_indent(self._volt_block(False, False), 3),
            *_indent(self._dyn_block(False, "k_f"), 2),
            "        if k_base % stride == 0:",
            f"            out[k_cell, k_out] = {i_ion}",
            "            k_out += 1",
            f"        if not math.isfinite({i_ion}):",
            "            k_alive = False",
            "            break",
            "        if k_kind != 0:",
            "            " + command.format(t="k_tseg + 0.5 * k_h"),
            *_indent(self._volt_block(False, True), 3),
            *_indent(self._save(False), 2),
            *_indent(self._set_time("seg_t0[k_seg] + k_tseg + 0.5 * k_h"), 2),
            *_indent(self._advance(False, "0.5 * ", "k_f", "k_dh"), 2),
            *_indent(self._dyn_block(False, "k_m"), 2),
            "        if k_i < k_pairs:",
            "            k_base += 1",
            "            if k_base % stride == 0:",
            f"                out[k_cell, k_out] = {i_ion}",
            "                k_out += 1",
            *_indent(self._advance(False, "", "k_m", "k_df"), 2),
            "        k_base += 1",
            "        k_tseg += k_h",
            "    if not k_alive:",
            "        break",
            "if k_alive:",
            f"    {v} = v_end",
            *_indent(self._set_time("t_end"), 1),
            *_indent(self._volt_block(False, False), 1),
            *_indent(self._dyn_block(False, "k_f"), 1),
            f"    out[k_cell, k_out] = {i_ion}",
            f"    k_alive = math.isfinite({i_ion})",
            "ok[k_cell] = k_alive",
        ]
        return _batched(
            "simulate_vc",
            "params, y0, seg_kind, seg_nsteps, seg_t0, seg_v0, seg_v1, seg_amp, seg_freq, "
            "seg_phase, dt, stride, v_end, t_end, out, ok",
            body,
        )

    def ap_kernel(self) -> str:
        """Current clamp with adaptive steps; output is V at every sample time."""
        v = identifier(self.a.v)
        explicit = self.a.explicit_rhs(True)
        iv = next(k for k, (s, _) in enumerate(explicit) if s is self.a.v)
        err_lines = ["k_err = abs(k_h * (k_m{0} - k_f{0})) / atol_v".format(iv)]
        for k, (s, _) in enumerate(explicit):
            if k != iv:
                err_lines.append(
                    f"k_err = max(k_err, abs(k_h * (k_m{k} - k_f{k})) / "
                    f"(rtol * (abs(k_y{k}) + y_scale[{k}])))"
                )
        body = [
            *self._unpack(),
            *self._const_block(),
            "k_t = 0.0",
            "k_dtry = dt_max * 0.25",
            f"out[k_cell, 0] = {v}",
            "k_out = 1",
            "k_alive = True",
            "while k_out < out.shape[1]:",
            "    k_target = k_out * sample_interval",
            "    k_pace, k_edge = _pace(k_t, cycle_length, stim_duration)",
            *_indent(self._set_pace("k_pace"), 1),
            *_indent(self._set_time("k_t"), 1),
            *_indent(self._volt_block(True, False), 1),
            *_indent(self._dyn_block(True, "k_f"), 1),
            *_indent(self._save(True), 1),
            f"    k_vstart = {v}",
            "    while True:",
            "        k_h = min(k_dtry, k_target - k_t, k_edge - k_t)",
            "        k_cut = k_h < k_dtry",
            f"        {v} = k_vstart + 0.5 * k_h * k_f{iv}",
            *_indent(self._set_time("k_t + 0.5 * k_h"), 2),
            *_indent(self._volt_block(True, True), 2),
            *_indent(self._advance(True, "0.5 * ", "k_f", "k_dh"), 2),
            *_indent(self._dyn_block(True, "k_m"), 2),
            *_indent(err_lines, 2),
            "        if k_err <= 1.0 or k_h <= dt_min or not math.isfinite(k_err):",
            "            break",
            "        k_dtry = max(dt_min, k_h * max(0.2, 0.9 / math.sqrt(k_err)))",
            *_indent(self._advance(True, "", "k_m", "k_df"), 1),
            "    k_t += k_h",
            "    k_grow = k_h * min(4.0, max(0.2, 0.9 / math.sqrt(max(k_err, 1e-12))))",
            "    k_dtry = min(dt_max, max(k_dtry, k_grow) if k_cut else k_grow)",
            f"    if not math.isfinite({v}):",
            "        k_alive = False",
            "        break",
            "    if k_t >= k_target - 1e-9:",
            "        k_t = k_target",
            f"        out[k_cell, k_out] = {v}",
            "        k_out += 1",
            "ok[k_cell] = k_alive",
        ]
        return _batched(
            "simulate_ap",
            "params, y0, sample_interval, cycle_length, stim_duration, dt_max, dt_min, atol_v, "
            "rtol, y_scale, out, ok",
            body,
        )

    def module(self) -> str:
        """The complete module: helpers plus both kernels."""
        return _PRELUDE.format(flags=FASTMATH_FLAGS) + self.vc_kernel() + "\n\n" + self.ap_kernel()


def _batched(name: str, args: str, body: list[str]) -> str:
    """A per-cell function plus its parallel driver over cells.

    The cell body is compiled as its own (non-parallel) function: Numba's parfor passes on a
    loop body of thousands of statements are what makes compilation slow.
    """
    return (
        "@nb.njit(fastmath=FASTMATH, error_model='numpy', cache=True)\n"
        f"def _{name}_cell(k_cell, {args}):\n"
        + "\n".join(_indent(body, 1))
        + "\n\n\n"
        "@nb.njit(parallel=True, cache=True)\n"
        f"def {name}({args}):\n"
        "    for k_cell in nb.prange(params.shape[0]):\n"
        # the cast keeps one signature: prange indices are sometimes typed uint64
        f"        _{name}_cell(nb.int64(k_cell), {args})\n"
    )


def _indent(lines: list[str], level: int) -> list[str]:
    return [textwrap.indent(line, "    " * level) for line in lines]


_PRELUDE = '''"""Generated by sbi_twins.codegen; do not edit (regenerated when the model file changes)."""
import math

import numba as nb

FASTMATH = set({flags!r})


@nb.njit(fastmath=FASTMATH, error_model="numpy", cache=True, inline="always")
def _command(kind, v0, v1, amp, freq, phase, t, duration):
    """Command voltage at time t into a ramp (kind 1) or sine (kind 2) segment."""
    if kind == 1:
        return v0 + (v1 - v0) * (t / duration)
    return v0 + amp * math.sin(2.0 * math.pi * freq * 1e-3 * t + phase)


@nb.njit(fastmath=FASTMATH, error_model="numpy", cache=True, inline="always")
def _pace(t, cycle_length, stim_duration):
    """Stimulus switch at time t and the time of its next change (pulses start at 0, CL, 2CL...)."""
    if cycle_length <= 0.0:
        return 0.0, math.inf
    start = math.floor((t + 1e-9) / cycle_length) * cycle_length
    if t < start + stim_duration - 1e-9:
        return 1.0, start + stim_duration
    return 0.0, start + cycle_length


'''
