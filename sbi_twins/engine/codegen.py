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

Current clamp in lane blocks
----------------------------
The current-clamp kernel comes twice, with the same step and controller. ``simulate_ap_lanes``
(:meth:`KernelSource.ap_lane_kernel`, the default of ``CellModel.simulate_ap``) advances blocks
of ``LANES`` cells in vectorised loops, each lane with its own time and step; ``simulate_ap``
(:meth:`KernelSource.ap_kernel`) integrates one cell at a time with libm's exp/log/pow. Their
traces differ by rounding only, unless an error estimate sits on its tolerance and the rounding
changes a step; the cell then differs by what the tolerance allows (6 of 256 Kernik 2019 prior
draws over 20 s; BENCHMARKS.md). The per-cell kernel is kept, unchanged, for the viability
filter of dataset generation (``sbi_twins.physiology.check_viability``): datasets record this
module's :data:`CODEGEN_VERSION` and are regenerated bit for bit by their command, and a verdict
made with other rounding could differ for a cell on the edge of a rule. No existing kernel
changed, so the version was not bumped.

Stiff variants of the clamp kernels
-----------------------------------
The explicit midpoint step is unstable once a state relaxes faster than about ``2 / h``. In
Kernik 2019 that happens to the ryanodine-receptor states of calcium-overloaded cells (their
rates grow with Cai**2 and reach thousands per ms; about 8 % of the +-40 % prior's draws on
``clark2022``), which then blow up under the clamp while CVODE integrates them. The stiff
variants (``simulate_vc_stiff``, ``simulate_artefact_stiff``) update every state that is linear
in itself, ``dx/dt = a - b x`` with ``a, b`` free of ``x`` (:attr:`ModelAnalysis.linear_states`),
exponentially with its rate ``b`` frozen over the (half) step, as Rush-Larsen does for the gates
(the generalised Rush-Larsen scheme of Sundnes et al. 2009, IEEE TBME 56:2546)::

    x_mid  = x_n + f0 * phi(b0, h/2)
    x_n+1  = x_n + (f_mid + b_mid (x_mid - x_n)) * phi(b_mid, h),   phi(b, s) = (1 - e^(-b s)) / b

``f_mid + b_mid (x_mid - x_n)`` is the derivative at ``x_n`` with the midpoint coefficients, so
the update is exact for frozen coefficients, stable for any rate, and second order like the
midpoint step. The other states keep the explicit update. The model's engine runs these
variants only on the cells that failed (``CellModel`` decides; the default kernels stay as
they are, so results of cells that integrate do not change).
"""

from __future__ import annotations

import hashlib
import inspect
import math
import re
import textwrap

import myokit
from myokit.formats.python import PythonExpressionWriter

from . import vmath
from .analysis import Kind, ModelAnalysis, identifier
from .vmath import FASTMATH_FLAGS

#: Version of the generated kernels, recorded in dataset manifests (a dataset made by another
#: version is refused). Bump it when the code of an existing kernel changes, i.e. when its numbers
#: can change. Adding a kernel needs no bump: the cached module is named by the hash of its source,
#: so stale machine code is never reused anyway.
CODEGEN_VERSION = "10"


class _Writer(PythonExpressionWriter):
    """Myokit's Python expression writer with our identifiers for variables.

    ``hoisted`` maps the code of sub-expressions that were lifted into temporaries to the
    temporary's name; the writer then refers to the temporary instead of re-evaluating them.
    With ``vector_math``, exp/log/pow are expanded into straight-line statements from the
    :mod:`sbi_twins.engine.vmath` templates, collected in :attr:`pre`, and the expression refers
    to the temporary holding the result: a loop over cells then contains no calls and vectorises.
    """

    def __init__(self, hoisted: dict[str, str] | None = None, vector_math: bool = False) -> None:
        super().__init__()
        self.set_lhs_function(lambda lhs: identifier(lhs.var()))
        self.hoisted = hoisted or {}
        self.vector_math = vector_math
        self.pre: list[str] = []
        self._count = 0
        #: code of hoisted denominators -> name of the temporary holding their reciprocal
        self.reciprocals: dict[str, str] = {}

    def statement(self, lhs: str, expr: myokit.Expression) -> list[str]:
        """``lhs = expr``, preceded by any expanded function evaluations it needs."""
        self.pre = []
        rhs = self.ex(expr)
        return self.pre + [f"{lhs} = {rhs}"]

    def exp_statement(self, lhs: str, argument: str) -> list[str]:
        """``lhs = e**argument`` (a call, or an expansion in vector mode)."""
        if not self.vector_math:
            return [f"{lhs} = math.exp({argument})"]
        self.pre = []
        return self.pre + [f"{lhs} = {self._expand(vmath.EXP_TEMPLATE, x=argument)}"]

    def _expand(self, template: str, **operands: str) -> str:
        self._count += 1
        name = f"k_x{self._count}"
        self.pre += vmath.expand(template, name, **operands)
        return name

    def ex(self, e: myokit.Expression) -> str:
        name = self.hoisted.get(e.code()) if self.hoisted else None
        return name if name is not None else super().ex(e)

    def _ex_divide(self, e: myokit.Divide) -> str:
        reciprocal = self.reciprocals.get(e[1].code()) if self.reciprocals else None
        if reciprocal is None:
            return super()._ex_divide(e)
        return f"(({self.ex(e[0])}) * {reciprocal})"

    def _ex_exp(self, e: myokit.Exp) -> str:
        if not self.vector_math:
            return super()._ex_exp(e)
        return self._expand(vmath.EXP_TEMPLATE, x=self.ex(e[0]))

    def _ex_log(self, e: myokit.Log) -> str:
        if not self.vector_math:
            return super()._ex_log(e)
        logs = [self._expand(vmath.LOG_TEMPLATE, x=self.ex(x)) for x in e]
        return logs[0] if len(logs) == 1 else f"({logs[0]} / {logs[1]})"

    def _ex_log10(self, e: myokit.Log10) -> str:
        if not self.vector_math:
            return super()._ex_log10(e)
        return f"({self._expand(vmath.LOG_TEMPLATE, x=self.ex(e[0]))} * {1 / math.log(10)!r})"

    def _ex_power(self, e: myokit.Power) -> str:
        exponent = e[1]
        if isinstance(exponent, myokit.Number) and float(exponent).is_integer():
            n = int(float(exponent))
            if 0 < abs(n) <= 8:
                # Explicit products instead of a pow() call (faster; keeps loops vectorisable).
                product = " * ".join([f"({self.ex(e[0])})"] * abs(n))
                return f"({product})" if n > 0 else f"(1.0 / ({product}))"
            return f"({self.ex(e[0])})**{n}"
        if self.vector_math:
            return self._expand(vmath.POW_TEMPLATE, x=self.ex(e[0]), y=self.ex(e[1]))
        return super()._ex_power(e)


class KernelSource:
    """Source text of the generated kernels for one model, in one math mode.

    Parameters
    ----------
    analysis : ModelAnalysis
        The analysed model.
    vector_math : bool
        Expand exp/log/pow into straight-line code (see :class:`_Writer`), so that a loop over
        cells vectorises: the mode of the lane kernels (clamp and current clamp). The per-cell
        current-clamp kernel (:meth:`ap_kernel`) calls ``math`` directly.
    stiff : bool
        Update the states that are linear in themselves exponentially (see the module
        docstring); the clamp kernels are then named with a ``_stiff`` suffix. The current-clamp
        kernel has no stiff variant (its step controller already shortens the step).
    """

    def __init__(self, analysis: ModelAnalysis, vector_math: bool = False, stiff: bool = False):
        self.a = analysis
        self.stiff = stiff
        #: the linear states updated exponentially, with their rates
        self._linear = {ls.state: ls.rate for ls in analysis.linear_states} if stiff else {}
        self._hoisted = {Kind.CONST: {}, Kind.VOLT: {}}
        self._reciprocals: dict[str, str] = {}
        for expr in self._dyn_expressions(include_v=True):
            self._hoist(expr)
        hoisted = {**self._hoisted[Kind.CONST], **self._hoisted[Kind.VOLT]}
        self._w = _Writer(vector_math=vector_math)
        # state-dependent code refers to the hoisted temporaries
        self._w_dyn = _Writer(hoisted, vector_math=vector_math)
        self._w_dyn.reciprocals = self._reciprocals

    # -- hoisting --------------------------------------------------------------------------------
    def _dyn_expressions(self, include_v: bool) -> list[myokit.Expression]:
        variables = self.a.closure(self._targets(include_v), Kind.DYN)
        return (
            [v.rhs() for v in variables]
            + [rhs for _, rhs in self.a.explicit_rhs(include_v)]
            + self._rates(include_v)
        )

    def _hoist(self, expr: myokit.Expression) -> None:
        """Lift the largest parameter- or voltage-only sub-expressions of a state-dependent
        expression into temporaries (e.g. the GHK exponentials inside I_CaL), so that they are
        evaluated once per cell or per clamp segment instead of every step.
        """
        kind = self.a.expr_kind(expr)
        if kind == Kind.DYN:
            if isinstance(expr, myokit.Divide) and self._hoist_reciprocal(expr[1]):
                self._hoist(expr[0])
                return
            for operand in expr:
                self._hoist(operand)
        elif not (
            isinstance(expr, (myokit.Name, myokit.Condition)) or expr.is_literal()
        ):  # conditions stay inline: a hoisted boolean would be stored as a float
            table = self._hoisted[kind]
            table.setdefault(expr.code(), f"k_{('const', 'volt')[kind]}{len(table)}")

    def _hoist_reciprocal(self, denominator: myokit.Expression) -> bool:
        """Hoist ``1 / denominator`` if it is parameter- or voltage-only: a division costs many
        times a multiplication, and dividing by a per-cell or per-segment constant is common
        (time constants, GHK and exchanger denominators, volume ratios).
        """
        kind = self.a.expr_kind(denominator)
        if kind == Kind.DYN or denominator.is_literal():
            return False  # literal divisors already become multiplications under 'arcp'
        reciprocal = myokit.Divide(myokit.Number(1), denominator)
        table = self._hoisted[kind]
        name = table.setdefault(reciprocal.code(), f"k_{('const', 'volt')[kind]}{len(table)}")
        self._reciprocals[denominator.code()] = name
        return True

    def _hoisted_lines(self, kind: Kind) -> list[str]:
        lines = []
        for code, name in self._hoisted[kind].items():
            lines += self._w.statement(name, myokit.parse_expression(code, self.a.model))
        return lines

    # -- building blocks -------------------------------------------------------------------------
    def _assign(self, variables: list[myokit.Variable], writer: _Writer | None = None) -> list[str]:
        writer = writer or self._w
        return [line for v in variables for line in writer.statement(identifier(v), v.rhs())]

    def _targets(self, include_v: bool) -> list[myokit.Expression]:
        exprs = [rhs for _, rhs in self.a.explicit_rhs(include_v)] + self._rates(include_v)
        return exprs + [myokit.Name(self.a.i_ion)]

    def _rates(self, include_v: bool) -> list[myokit.Expression]:
        """Rates of the exponentially updated states (none unless ``stiff``)."""
        return [self._linear[s] for s, _ in self.a.explicit_rhs(include_v) if s in self._linear]

    def _gate_exprs(self) -> list[myokit.Expression]:
        return [e for g in self.a.gates for e in (g.inf, g.rate)]

    def _volt_block(self, include_v: bool, with_gates: bool) -> list[str]:
        """Voltage-only variables (and, optionally, gate steady states and decay factors)."""
        exprs = self._targets(include_v) + (self._gate_exprs() if with_gates else [])
        lines = self._assign(self.a.closure(exprs, Kind.VOLT)) + self._hoisted_lines(Kind.VOLT)
        if with_gates:
            for k, gate in enumerate(self.a.gates):
                lines += self._w.statement(f"k_inf{k}", gate.inf)
                lines += self._w.statement(f"k_rate{k}", gate.rate)
                lines += self._w.exp_statement(f"k_dh{k}", f"-0.5 * k_h * k_rate{k}")
                lines.append(f"k_df{k} = k_dh{k} * k_dh{k}")
        return lines

    def _dyn_block(self, include_v: bool, prefix: str) -> list[str]:
        """State-dependent variables, then the derivatives ``{prefix}{k}`` of explicit states
        (and, if ``stiff``, the rates ``{prefix}r{k}`` of the linear ones).
        """
        lines = self._assign(self.a.closure(self._targets(include_v), Kind.DYN), self._w_dyn)
        for k, (_, rhs) in enumerate(self.a.explicit_rhs(include_v)):
            lines += self._w_dyn.statement(f"{prefix}{k}", rhs)
        for k, (state, _) in enumerate(self.a.explicit_rhs(include_v)):
            if state in self._linear:
                lines += self._w_dyn.statement(f"{prefix}r{k}", self._linear[state])
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
        explicit = self.a.explicit_rhs(include_v)
        lines = [f"k_y{k} = {identifier(s)}" for k, (s, _) in enumerate(explicit)]
        lines += [f"k_g{k} = {identifier(g.state)}" for k, g in enumerate(self.a.gates)]
        return lines

    def _advance(self, include_v: bool, fraction: str, deriv: str, decay: str) -> list[str]:
        """Explicit states ``y = y_saved + fraction*h*deriv``; gates Rush-Larsen with ``decay``.

        If ``stiff``, linear states instead take the exponential update of the module docstring:
        the half step (``fraction`` given) from the saved state; the full step also uses the
        midpoint value the state holds when it is called.
        """
        lines = []
        for k, (state, _) in enumerate(self.a.explicit_rhs(include_v)):
            x = identifier(state)
            if state not in self._linear:
                lines.append(f"{x} = k_y{k} + {fraction}k_h * {deriv}{k}")
                continue
            rate = f"{deriv}r{k}"
            lines += self._phi(f"k_p{k}", rate, "0.5 * k_h" if fraction else "k_h")
            if fraction:
                lines.append(f"{x} = k_y{k} + {deriv}{k} * k_p{k}")
            else:
                lines.append(f"{x} = k_y{k} + ({deriv}{k} + {rate} * ({x} - k_y{k})) * k_p{k}")
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
    def _lane_values(
        self, include_v: bool = False
    ) -> tuple[list[str], list[str], list[str], list[str]]:
        """Names every lane kernel keeps per lane: parameters, states (V only if ``include_v``:
        current clamp), the saved states (explicit ``k_y``, gates ``k_g``) and the derivatives
        ``k_f`` of the explicit states (with the rates ``k_fr`` of the exponentially updated ones).
        """
        explicit = self.a.explicit_rhs(include_v)
        params = [identifier(p) for p in self.a.parameters]
        states = [identifier(s) for s in self.a.states if include_v or s is not self.a.v]
        saved = [f"k_y{k}" for k in range(len(explicit))]
        saved += [f"k_g{k}" for k in range(len(self.a.gates))]
        derivatives = [f"k_f{k}" for k in range(len(explicit))]
        derivatives += [f"k_fr{k}" for k, (s, _) in enumerate(explicit) if s in self._linear]
        return params, states, saved, derivatives

    def _lane_loop(
        self,
        body: list[str],
        rows: dict[str, int],
        stores: list[str],
        load: bool = True,
        index: str = "{row}, k_c",
    ) -> list[str]:
        """``for k_c in range(LANES)`` over ``body``: per-lane values are loaded from and stored to
        the work array ``k_w[row, lane]`` (``index``: how that element is addressed);
        everything else is a register temporary.
        """
        used = set(_IDENTIFIER.findall("\n".join(body))) if load else set()
        at = {name: f"k_w[{index.format(row=row)}]" for name, row in rows.items()}
        loads = [f"{name} = {at[name]}" for name in rows if name in used]
        saves = [f"{at[name]} = {name}" for name in stores]
        return ["for k_c in range(LANES):", *_indent(loads + body + saves, 1)]

    def vc_kernel(self) -> str:
        """Ideal voltage clamp: V follows the command; output is I_ion on the sample grid.

        Time is cut into base intervals ``dt`` (every segment edge and every sample lies on this
        grid). On constant-voltage segments a step spans two base intervals, so its midpoint
        evaluation also yields I_ion at a grid point (one state-dependent evaluation per base
        interval); a segment with an odd number of base intervals ends with one single-interval
        step. On ramps and sines every step is one base interval: there the gates are updated
        with their kinetics at the step's midpoint voltage, which needs the shorter step to stay
        within the accuracy band (measured on clark2022, BENCHMARKS.md).

        Cells advance in blocks of ``LANES`` in lock step (they all see the same command), so
        each loop over the lanes of a block is free of branches and calls, and LLVM vectorises
        it. Values that live across loops (parameters, constants, states, voltage terms) sit in
        a work array ``k_w[row, lane]``; I_ion is copied to the output in a separate small loop,
        because a store into ``out`` inside a lane loop blocks vectorisation (its address is not
        affine for LLVM, so LLVM cannot rule out aliasing with the work array).
        """
        v = identifier(self.a.v)
        i_ion = identifier(self.a.i_ion)
        params, states, saved, derivatives = self._lane_values()
        const = self._const_block()
        volt = self._volt_block(False, True)
        persistent = params + _assigned(const) + states + _assigned(volt) + saved + derivatives
        extra = ["k_ion", "k_bad"]  # I_ion of the current evaluation; count of non-finite values
        rows = {name: row for row, name in enumerate(dict.fromkeys(persistent + extra))}

        unpack = [f"{p} = params[k_src, {k}]" for k, p in enumerate(params)]
        unpack += [
            f"{identifier(s)} = y0[k_src, {k}]"
            for k, s in enumerate(self.a.states)
            if s is not self.a.v
        ]
        init = self._lane_loop(
            ["k_src = min(k_c0 + k_c, params.shape[0] - 1)", *unpack, *const, "k_bad = 0.0"],
            rows,
            params + _assigned(const) + states + ["k_bad"],
            load=False,
        )
        voltage = self._lane_loop(volt, rows, _assigned(volt))
        volt_rhs = self._volt_block(False, False)
        voltage_rhs = self._lane_loop(volt_rhs, rows, _assigned(volt_rhs))
        first_half = self._lane_loop(
            [
                *self._set_time("k_tstart"),
                *self._dyn_block(False, "k_f"),
                f"k_ion = {i_ion}",
                # NaN/inf propagate through the states, so checking here covers every sample
                "k_bad += 0.0 if abs(k_ion) < math.inf else 1.0",  # see _finite
                *self._save(False),
            ],
            rows,
            saved + derivatives + ["k_ion", "k_bad"],
        )
        second_half = self._lane_loop(
            [
                *self._set_time("k_tmid"),
                *self._advance(False, "0.5 * ", "k_f", "k_dh"),
                *self._dyn_block(False, "k_m"),
                f"k_ion = {i_ion}",
                *self._advance(False, "", "k_m", "k_df"),
            ],
            rows,
            states + ["k_ion"],
        )
        copy_out = (
            "for k_c in range(LANES):\n    out[k_c0 + k_c, {slot}] = "
            + f"k_w[{rows['k_ion']}, k_c]"
        )
        segment = [
            "        k_kind, k_n = seg_kind[k_seg], seg_nsteps[k_seg]",
            "        k_v0, k_t0 = seg_v0[k_seg], seg_t0[k_seg]",
            "    # steps span two base intervals on constant segments only (see docstring)",
            "    k_pairs = k_n // 2 if k_kind == 0 else 0",
            "    k_tseg = 0.0",
            "    for k_i in range(k_n - k_pairs):",
            "        k_h = 2.0 * dt if k_i < k_pairs else dt",
            "        k_tstart = k_t0 + k_tseg",
            "        k_tmid = k_tstart + 0.5 * k_h",
            "        k_rec0 = k_base % stride == 0",
            "        k_rec1 = k_i < k_pairs and (k_base + 1) % stride == 0",
            "        for k_half in range(1 if k_seg == k_nseg else 2):",
            "            # voltage terms: on steps once per segment (and again for a short last",
            "            # step), with gates; on ramps and sines every step, at its start only",
            "            # what the right-hand side needs, at its midpoint also the gates",
            "            k_ramp = k_kind != 0",
            "            k_rhs = k_ramp and k_half == 0",
            "            k_full = (k_ramp and k_half == 1) or (",
            "                not k_ramp and k_half == 0 and (k_i == 0 or k_i == k_pairs))",
            "            if k_rhs or k_full:",
            f"                {v} = k_v0 if not k_ramp else _command(k_kind, k_v0, "
            "seg_v1[k_seg], seg_amp[k_seg], seg_freq[k_seg], seg_phase[k_seg], "
            "k_tseg + 0.5 * k_h * k_half, k_n * dt)",
            "            if k_full:",
            *_indent(voltage, 4),
            "            if k_rhs:",
            *_indent(voltage_rhs, 4),
            "            if k_half == 0:",
            *_indent(first_half, 4),
            "                if k_rec0:",
            *_indent(copy_out.format(slot="k_out").splitlines(), 5),
            "                    k_out += 1",
            "            else:",
            *_indent(second_half, 4),
            "                if k_rec1:",
            *_indent(copy_out.format(slot="k_out").splitlines(), 5),
            "                    k_out += 1",
            "        k_base += 2 if k_i < k_pairs else 1",
            "        k_tseg += k_h",
        ]
        args = (
            "params, y0, seg_kind, seg_nsteps, seg_t0, seg_v0, seg_v1, seg_amp, seg_freq, "
            "seg_phase, dt, stride, v_end, t_end, out, ok"
        )
        last = "k_kind, k_n, k_v0, k_t0 = 0, 1, v_end, t_end"
        return _lane_kernel(self._name("simulate_vc"), args, rows, init, last, segment)

    def _name(self, kernel: str) -> str:
        return kernel + ("_stiff" if self.stiff else "")

    def _phi(self, lhs: str, rate: str, span: str) -> list[str]:
        """``lhs = (1 - exp(-rate*span)) / rate``: the exact step factor of ``dx/dt = F - rate*x``
        (``span`` as ``rate`` -> 0).
        """
        decay = f"{lhs}_e"
        return [
            *self._w.exp_statement(decay, f"-({rate}) * {span}"),
            f"{lhs} = (1.0 - {decay}) / {rate} if abs({rate}) * {span} > 1e-9 else {span}",
        ]

    def artefact_kernel(self) -> str:
        """Voltage clamp through series resistance: V is a state driven by the command.

        The recording model of :mod:`sbi_twins.recording.artefacts` (after Lei et al. 2020): per
        cell a residual time constant ``tau = (1 - alpha) Rs Cm``, a voltage offset, and a seal leak
        ``g_leak (V - E_leak)`` that adds to I_ion. With ``I = I_ion + I_leak``::

            dV/dt     = (V_cmd + V_off - V) / tau - I(V, y)
            dV_est/dt = (V_cmd - V_est) / tau          (the amplifier's prediction of V)
            recorded  = I + dV/dt - dV_est/dt

        ``tau`` can be far shorter than a step (a well-compensated recording), so V takes a
        linearly implicit exponential step: ``I`` is linearised around the current V with its
        slope ``g = dI/dV`` at frozen states (a one-sided difference), and the linear ODE is
        solved exactly over the step; this is stable for any ``tau``. Gates and other states
        take the midpoint/Rush-Larsen step of the other kernels, at the predicted midpoint V.
        The recorded current follows from the two ODEs as ``(V_est + V_off - V) / tau``; it is
        exact for a passive cell (tested against the closed form). In the stiff limit
        (``tau`` << step) V settles each step on the quasi-steady value for the midpoint
        currents, so the recorded current lags the ideal one by half a step (25 us at the
        default step, well below the group delay of the amplifier's own low-pass filter).

        Steps are one grid interval ``dt`` on ramps and sines and for the first ``n_dense``
        intervals of every constant segment (where the sodium current and the clamp transient
        live); after that a step spans a whole sample interval (``stride`` grid intervals).

        Cells advance in lanes as in :meth:`vc_kernel`; every step evaluates the voltage terms
        (V differs per cell). Output: the recorded current and V at every sample.
        """
        v = identifier(self.a.v)
        i_ion = identifier(self.a.i_ion)
        params, states, saved, derivatives = self._lane_values()
        const = self._const_block()
        clamp = ["k_tinv", "k_voff", "k_gl", "k_el", "k_vm", "k_vest"]
        step = ["k_ion", "k_bad", "k_geff", "k_a", "k_vmid", "k_rec", "k_vrec"]
        persistent = params + _assigned(const) + states + saved + derivatives + clamp + step
        rows = {name: row for row, name in enumerate(dict.fromkeys(persistent))}

        unpack = [f"{p} = params[k_src, {k}]" for k, p in enumerate(params)]
        unpack += [
            f"{identifier(s)} = y0[k_src, {k}]"
            for k, s in enumerate(self.a.states)
            if s is not self.a.v
        ]
        unpack += [
            "k_tinv = 1.0 / nuisance[k_src, 0]",
            "k_voff = nuisance[k_src, 1]",
            "k_gl = nuisance[k_src, 2]",
            "k_el = nuisance[k_src, 3]",
            "k_vest = v_start",
            "k_vm = v_start + k_voff",
        ]
        init = self._lane_loop(
            ["k_src = min(k_c0 + k_c, params.shape[0] - 1)", *unpack, *const, "k_bad = 0.0"],
            rows,
            params + _assigned(const) + states + clamp + ["k_bad"],
            load=False,
        )
        volt_rhs = self._volt_block(False, False)
        ion_only = self._assign(self.a.closure([myokit.Name(self.a.i_ion)], Kind.DYN), self._w_dyn)
        start = self._lane_loop(
            [
                f"{v} = k_vm",
                *volt_rhs,
                *self._set_time("k_tstart"),
                *self._dyn_block(False, "k_f"),
                f"k_ion = {i_ion} + k_gl * (k_vm - k_el)",
                "k_bad += 0.0 if abs(k_ion) < math.inf else 1.0",  # see _finite
                # slope of I at frozen states, for the implicit treatment of V
                f"{v} = k_vm + {_SLOPE_DV!r}",
                *volt_rhs,
                *ion_only,
                f"k_geff = ({i_ion} + k_gl * ({v} - k_el) - k_ion) * {1 / _SLOPE_DV!r}",
                # start on the quasi-steady V of the holding command (linearised I)
                "k_vq = (k_vcmid + k_voff + (k_geff * k_vm - k_ion) / k_tinv) / "
                "(1.0 + k_geff / k_tinv)",
                "k_ion = k_ion + k_geff * (k_vq - k_vm) if k_base == 0 else k_ion",
                "k_vm = k_vq if k_base == 0 else k_vm",
                "k_rec = (k_vest + k_voff - k_vm) * k_tinv",
                "k_vrec = k_vm",
                *self._save(False),
                "k_a = k_tinv + k_geff",
                *self._phi("k_phi", "k_a", "0.5 * k_h"),
                "k_vmid = k_vm + k_phi * ((k_vcmid + k_voff - k_vm) * k_tinv - k_ion)",
            ],
            rows,
            saved
            + derivatives
            + ["k_ion", "k_bad", "k_geff", "k_a", "k_vmid", "k_rec", "k_vrec"]
            + ["k_vm"],
        )
        finish = self._lane_loop(
            [
                f"{v} = k_vmid",
                *self._volt_block(False, True),
                *self._set_time("k_tmid"),
                *self._advance(False, "0.5 * ", "k_f", "k_dh"),
                *self._dyn_block(False, "k_m"),
                f"k_imid = {i_ion} + k_gl * (k_vmid - k_el)",
                *self._advance(False, "", "k_m", "k_df"),
                *self._phi("k_phi", "k_a", "k_h"),
                "k_vm = k_vm + k_phi * ((k_vcmid + k_voff - k_vm) * k_tinv - k_imid"
                " - k_geff * (k_vm - k_vmid))",
                *self._w.exp_statement("k_edec", "-k_h * k_tinv"),
                "k_vest = k_vcmid + (k_vest - k_vcmid) * k_edec",
            ],
            rows,
            states + ["k_vm", "k_vest"],
        )
        copy_out = [
            "for k_c in range(LANES):",
            f"    out[k_c0 + k_c, k_out] = k_w[{rows['k_rec']}, k_c]",
            f"    out_v[k_c0 + k_c, k_out] = k_w[{rows['k_vrec']}, k_c]",
        ]
        segment = [
            "        k_kind, k_n, k_v0 = seg_kind[k_seg], seg_nsteps[k_seg], seg_v0[k_seg]",
            "    k_i = 0",
            "    while k_i < k_n:",
            "        # a whole sample interval per step on the settled part of constant segments",
            "        k_coarse = k_kind == 0 and k_i >= n_dense and k_base % stride == 0",
            "        k_m = stride if k_coarse and k_n - k_i >= stride else 1",
            "        k_h = k_m * dt",
            "        k_tstart = k_base * dt",
            "        k_tmid = k_tstart + 0.5 * k_h",
            "        k_vcmid = k_v0 if k_kind == 0 else _command(k_kind, k_v0, seg_v1[k_seg], "
            "seg_amp[k_seg], seg_freq[k_seg], seg_phase[k_seg], (k_i + 0.5) * dt, k_n * dt)",
            *_indent(start, 2),
            "        if k_base % stride == 0:",
            *_indent(copy_out, 3),
            "            k_out += 1",
            "            if k_out == out.shape[1]:",
            "                break",
            *_indent(finish, 2),
            "        k_base += k_m",
            "        k_i += k_m",
        ]
        args = (
            "params, y0, nuisance, seg_kind, seg_nsteps, seg_v0, seg_v1, seg_amp, "
            "seg_freq, seg_phase, dt, stride, n_dense, v_start, v_end, out, out_v, ok"
        )
        last = "k_kind, k_n, k_v0 = 0, 1, v_end"
        return _lane_kernel(self._name("simulate_artefact"), args, rows, init, last, segment)

    def _ap_error(self, scale: str = "y_scale[{k}]", nested: bool = False) -> tuple[int, list[str]]:
        """Index of V among the explicit states, and the lines computing ``k_err``: the largest
        Euler-midpoint difference over the step, scaled by its tolerance (<= 1 is accepted).
        ``scale`` is the expression of explicit state ``{k}``'s error scale. ``nested`` gives
        one statement of nested ``max`` (the same value), so that the lane loops do not assign
        a variable repeatedly (work for Numba's SSA pass, the slowest part of compiling them).
        """
        explicit = self.a.explicit_rhs(True)
        iv = next(k for k, (s, _) in enumerate(explicit) if s is self.a.v)
        terms = [
            f"abs(k_h * (k_m{k} - k_f{k})) / (rtol * (abs(k_y{k}) + {scale.format(k=k)}))"
            for k in range(len(explicit))
            if k != iv
        ]
        first = f"abs(k_h * (k_m{iv} - k_f{iv})) / atol_v"
        if nested:
            err = first
            for term in terms:
                err = f"max({err}, {term})"
            return iv, [f"k_err = {err}"]
        return iv, [f"k_err = {first}"] + [f"k_err = max(k_err, {term})" for term in terms]

    def ap_kernel(self) -> str:
        """Current clamp with adaptive steps, one cell at a time; output is V at every sample
        time. The step controller is the one of :meth:`ap_lane_kernel`.
        """
        if self.stiff:
            raise ValueError("the current-clamp kernel has no stiff variant (see KernelSource)")
        v = identifier(self.a.v)
        iv, err_lines = self._ap_error()
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
            "        if k_err <= 1.0 or k_h <= dt_min or not _finite(k_err):",
            "            break",
            f"        k_dtry = {_SHRINK}",
            *_indent(self._advance(True, "", "k_m", "k_df"), 1),
            "    k_t += k_h",
            f"    k_grow = {_GROW}",
            f"    k_dtry = {_NEXT}",
            f"    if not _finite({v}):",
            "        k_alive = False",
            "        break",
            "    if k_t >= k_target - 1e-9:",
            "        k_t = k_target",
            f"        out[k_cell, k_out] = {v}",
            "        k_out += 1",
            "ok[k_cell] = k_alive",
            *[f"y_end[k_cell, {k}] = {identifier(s)}" for k, s in enumerate(self.a.states)],
        ]
        return _batched(
            "simulate_ap",
            "params, y0, sample_interval, cycle_length, stim_duration, dt_max, dt_min, atol_v, "
            "rtol, y_scale, out, ok, y_end",
            body,
        )

    def ap_lane_kernel(self) -> str:
        """Current clamp with adaptive steps, cells in blocks of ``LANES``; output as
        :meth:`ap_kernel`.

        Every iteration makes one trial step in every lane of the block, each lane with its own
        time, step size, next sample and stimulus edge: the step from the current state (the
        right-hand side at the step start is evaluated afresh every iteration, also after a
        rejection, when it repeats the previous value), the error estimate, then per lane a
        select between the step's result (accepted) and the saved state (rejected: the step
        shrinks). The controller and tolerances are those of :meth:`ap_kernel`, so each lane
        takes the same steps as that kernel's cell would, up to the rounding of the expanded
        exp/log/pow (``vector_math``) where an error estimate sits at its tolerance. A lane
        whose V becomes non-finite stops (``ok`` False); the block stops when every lane has
        written its last sample. Samples are written in a small loop after the vectorised
        ones (see :meth:`vc_kernel` on stores in lane loops).
        """
        if self.stiff:
            raise ValueError("the current-clamp kernel has no stiff variant (see KernelSource)")
        v = identifier(self.a.v)
        kernel = "simulate_ap_lanes"
        loop_args = "k_w, dt_max, dt_min, atol_v, rtol, n_samples"
        iv, err_lines = self._ap_error(scale="k_ys{k}", nested=True)
        params, states, saved, derivatives = self._lane_values(include_v=True)
        const = self._const_block()
        pace = self._set_pace("k_pace")
        # error scales copied per lane: with a load from another array in a lane loop LLVM
        # cannot rule out aliasing with the work array and did not vectorise the loop
        scales = [f"k_ys{k} = y_scale[{k}]" for k in range(len(self.a.explicit_rhs(True)))]
        control = ["k_t", "k_dtry", "k_next", "k_live", "k_h", "k_cut", "k_target", "k_rec"]
        control += ["k_pace", "k_edge"]
        persistent = params + _assigned(const) + _assigned(scales) + states + saved
        persistent += derivatives + control
        rows = {name: row for row, name in enumerate(dict.fromkeys(persistent + _assigned(pace)))}

        unpack = [f"{p} = params[k_src, {k}]" for k, p in enumerate(params)]
        unpack += [f"{identifier(s)} = y0[k_src, {k}]" for k, s in enumerate(self.a.states)]
        init = self._lane_loop(
            [
                "k_src = min(k_c0 + k_c, params.shape[0] - 1)",
                *unpack,
                *const,
                *scales,
                "k_t = 0.0",
                "k_dtry = dt_max * 0.25",
                "k_next = 1.0",  # index of the next sample (a float: it lives in k_w)
                "k_live = 1.0",
            ],
            rows,
            params
            + _assigned(const)
            + _assigned(scales)
            + states
            + ["k_t", "k_dtry"]
            + ["k_next", "k_live"],
            load=False,
            index=_FLAT,
        )
        start = self._lane_loop(
            [
                *pace,
                *self._set_time("k_t"),
                *self._volt_block(True, False),
                *self._dyn_block(True, "k_f"),
                *self._save(True),
                "k_h = min(k_dtry, k_target - k_t, k_edge - k_t)",
                "k_cut = select(k_h < k_dtry, 1.0, 0.0)",
            ],
            rows,
            saved + derivatives + ["k_target", "k_h", "k_cut"] + _assigned(pace),
            index=_FLAT,
        )
        # the full step, or for a rejected lane the saved state
        kept = [f"k_y{k}" for k in range(len(self.a.explicit_rhs(True)))]
        kept += [f"k_g{k}" for k in range(len(self.a.gates))]
        full = [
            f"{lhs} = select(k_acc, {rhs}, {keep})"
            for (lhs, rhs), keep in zip(
                (line.split(" = ", 1) for line in self._advance(True, "", "k_m", "k_df")),
                kept,
                strict=True,
            )
        ]
        volt = self._volt_block(True, True)
        end = [
            *self._dyn_block(True, "k_m"),
            *err_lines,
            # accepted: within tolerance, at the smallest step, or non-finite (then V is)
            "k_acc = (k_live > 0.0) & ((k_err <= 1.0) | (k_h <= dt_min) | "
            "(not abs(k_err) < math.inf))",
            *full,
            f"k_grow = {_GROW}",
            f"k_dnext = {_NEXT}",
            f"k_dtry = select(k_acc, k_dnext, select(k_live > 0.0, {_SHRINK}, k_dtry))",
            "k_tnew = select(k_acc, k_t + k_h, k_t)",
            f"k_dead = k_acc & (not abs({v}) < math.inf)",  # see _finite
            "k_sample = k_acc & (not k_dead) & (k_tnew >= k_target - 1e-9)",
            "k_t = select(k_sample, k_target, k_tnew)",
            "k_rec = select(k_sample, 1.0, 0.0)",
            "k_next = k_next + k_rec",
            # running 1, done 0, failed -1
            "k_live = select(k_dead, -1.0, select(k_next >= n_samples, 0.0, k_live))",
        ]
        # the midpoint's voltage terms in a loop of their own, as in vc_kernel; the end of the
        # step reads some of them
        volt_rows = [n for n in _assigned(volt) if n in set(_IDENTIFIER.findall("\n".join(end)))]
        for name in volt_rows:
            rows.setdefault(name, len(rows))
        mid = self._lane_loop(
            [
                f"{v} = k_y{iv} + 0.5 * k_h * k_f{iv}",
                *self._set_time("k_t + 0.5 * k_h"),
                *volt,
                *self._advance(True, "0.5 * ", "k_f", "k_dh"),
            ],
            rows,
            states + volt_rows,
            index=_FLAT,
        )
        step = self._lane_loop(
            end, rows, states + ["k_dtry", "k_t", "k_rec", "k_next", "k_live"], index=_FLAT
        )

        def at(name: str) -> str:
            return f"k_w[{_FLAT.format(row=rows[name])}]"

        body = [
            f"k_w = np.empty({len(rows)} * LANES)",
            "k_c0 = k_blk * LANES",
            "n_samples = out.shape[1]",
            *init,
            "for k_c in range(LANES):",
            f"    out[k_c0 + k_c, 0] = {at(v)}",
            "k_running = True",
            "while k_running:",
            # per lane the next sample time and the stimulus, in a scalar loop: _pace branches
            # (on the cycle length, the same for all lanes, which LLVM may unswitch by copying
            # the whole time loop), and this is cheap next to the right-hand sides
            "    for k_c in range(LANES):",
            f"        {at('k_target')} = {at('k_next')} * sample_interval",
            f"        k_p, k_e = _pace({at('k_t')}, cycle_length, stim_duration)",
            f"        {at('k_pace')} = k_p",
            f"        {at('k_edge')} = k_e",
            *[f"    _{kernel}_{part}({loop_args})" for part in ("start", "mid", "end")],
            "    k_running = False",
            "    for k_c in range(LANES):",
            f"        if {at('k_rec')} != 0.0:",
            f"            out[k_c0 + k_c, nb.int64({at('k_next')}) - 1] = {at(v)}",
            f"        k_running |= {at('k_live')} > 0.0",
            "for k_c in range(LANES):",
            f"    ok[k_c0 + k_c] = {at('k_live')} == 0.0",
            *[
                f"    y_end[k_c0 + k_c, {k}] = {at(identifier(s))}"
                for k, s in enumerate(self.a.states)
            ],
        ]
        # each lane loop of the time loop is a function of its own: Numba's SSA pass takes
        # time superlinear in the size of a function (measured on Kernik 2019 under load:
        # 10 min to compile the kernel as one function, 4 min as four)
        parts = [
            "@nb.njit(fastmath=FASTMATH, error_model='numpy', cache=True)\n"
            f"def _{kernel}_{part}({loop_args}):\n" + "\n".join(_indent(loop, 1)) + "\n\n\n"
            for part, loop in (("start", start), ("mid", mid), ("end", step))
        ]
        return "".join(parts) + _blocked(
            kernel,
            "params, y0, sample_interval, cycle_length, stim_duration, dt_max, dt_min, atol_v, "
            "rtol, y_scale, out, ok, y_end",
            body,
        )


def kernel_module(analysis: ModelAnalysis) -> str:
    """The complete kernel module of a model: helpers, the four kernels (the current clamp in
    lane blocks and per cell) and, if the model has states that are linear in themselves, the
    stiff variants of the two clamp kernels.

    The module imports :mod:`sbi_twins.engine.vmath`; Numba's cache does not notice changes in
    another file, so that file's hash is written into the module (whose name is its hash).
    """
    vector = KernelSource(analysis, vector_math=True)
    vmath_hash = hashlib.sha256(inspect.getsource(vmath).encode()).hexdigest()[:16]
    return (
        f"# sbi_twins.vmath {vmath_hash}\n"
        + _PRELUDE.format(flags=FASTMATH_FLAGS)
        + vector.vc_kernel()
        + "\n\n"
        + vector.artefact_kernel()
        + "\n\n"
        + KernelSource(analysis).ap_kernel()
        + _stiff_kernels(analysis)
        + "\n\n"
        + vector.ap_lane_kernel()
    )


def _stiff_kernels(analysis: ModelAnalysis) -> str:
    """The stiff clamp kernels, after the others so that their text stays as it was."""
    if not analysis.linear_states:
        return ""
    stiff = KernelSource(analysis, vector_math=True, stiff=True)
    return "\n\n" + stiff.vc_kernel() + "\n\n" + stiff.artefact_kernel()


def _lane_kernel(
    name: str, args: str, rows: dict[str, int], init: list[str], last: str, segment: list[str]
) -> str:
    """A clamp kernel over blocks of ``LANES`` cells, plus its parallel driver over blocks.

    ``init`` fills the work array; ``segment`` is the loop body for one protocol segment (its
    first lines read the segment's kind, step count and start voltage); ``last`` sets those for
    the final sample, which is run as a one-step constant segment.
    """
    body = [
        f"k_w = np.empty(({len(rows)}, LANES))",
        "k_c0 = k_blk * LANES",
        *init,
        "k_out = 0",
        "k_base = 0",
        "k_nseg = seg_kind.shape[0]",
        "for k_seg in range(k_nseg + 1):",
        "    if k_seg == k_nseg:  # the final sample, as a one-step constant segment",
        f"        {last}",
        "    else:",
        *segment,
        "for k_c in range(LANES):",
        f"    ok[k_c0 + k_c] = k_w[{rows['k_bad']}, k_c] == 0.0",
    ]
    return _blocked(name, args, body)


def _blocked(name: str, args: str, body: list[str]) -> str:
    """A function over the block ``k_blk`` of ``LANES`` cells, plus its parallel driver over
    blocks (the arrays' first dimension is a whole number of blocks).
    """
    return (
        "@nb.njit(fastmath=FASTMATH, error_model='numpy', cache=True)\n"
        f"def _{name}_block(k_blk, {args}):\n" + "\n".join(_indent(body, 1)) + "\n\n\n"
        "@nb.njit(parallel=True, cache=True)\n"
        f"def {name}({args}):\n"
        "    for k_blk in nb.prange(out.shape[0] // LANES):\n"
        "        # the cast keeps one signature: prange indices are sometimes typed uint64\n"
        f"        _{name}_block(nb.int64(k_blk), {args})\n"
    )


def _batched(name: str, args: str, body: list[str]) -> str:
    """A per-cell function plus its parallel driver over cells.

    The cell body is compiled as its own (non-parallel) function: Numba's parfor passes on a
    loop body of thousands of statements are what makes compilation slow.
    """
    return (
        "@nb.njit(fastmath=FASTMATH, error_model='numpy', cache=True)\n"
        f"def _{name}_cell(k_cell, {args}):\n" + "\n".join(_indent(body, 1)) + "\n\n\n"
        "@nb.njit(parallel=True, cache=True)\n"
        f"def {name}({args}):\n"
        "    for k_cell in nb.prange(params.shape[0]):\n"
        # the cast keeps one signature: prange indices are sometimes typed uint64
        f"        _{name}_cell(nb.int64(k_cell), {args})\n"
    )


#: Element ``row, lane`` of the current-clamp lane kernel's flat work array. Its lane loops are
#: functions of their own, which receive the array: with two-dimensional indexing LLVM cannot
#: tell that rows do not overlap (the row length is a run-time value) and does not vectorise.
_FLAT = "{row} * LANES + k_c"

#: The current-clamp step controller (both kernels): the next trial step after a rejected step,
#: the growth after an accepted one, and the next step after an accepted one (``k_cut``: the
#: step was shortened to land on a sample or stimulus edge, so the step that was tried before
#: stays available).
_SHRINK = "max(dt_min, k_h * max(0.2, 0.9 / math.sqrt(k_err)))"
_GROW = "k_h * min(4.0, max(0.2, 0.9 / math.sqrt(max(k_err, 1e-12))))"
_NEXT = "min(dt_max, max(k_dtry, k_grow) if k_cut else k_grow)"

#: Voltage increment (mV) of the one-sided difference for dI/dV in the series-resistance kernel.
_SLOPE_DV = 1e-3

_IDENTIFIER = re.compile(r"\b[mk]_\w+\b")


def _assigned(lines: list[str]) -> list[str]:
    """Names assigned by ``lines`` (in order), except the ``k_x`` expansion temporaries."""
    names = (line.split(" = ", 1)[0].strip() for line in lines if " = " in line)
    return [n for n in dict.fromkeys(names) if not n.startswith("k_x")]


def _indent(lines: list[str], level: int) -> list[str]:
    return [textwrap.indent(line, "    " * level) for line in lines]


_PRELUDE = '''"""Generated by sbi_twins.engine.codegen from a model file; do not edit."""
import math

import numba as nb
import numpy as np

from sbi_twins.engine.vmath import bits_from_double, double_from_bits, select

FASTMATH = set({flags!r})
#: Cells advanced in lock step by one vectorised loop.
LANES = 16


@nb.njit(fastmath=FASTMATH, error_model="numpy", cache=True, inline="always")
def _command(kind, v0, v1, amp, freq, phase, t, duration):
    """Command voltage at time t into a ramp (kind 1) or sine (kind 2) segment."""
    if kind == 1:
        return v0 + (v1 - v0) * (t / duration)
    return v0 + amp * math.sin(2.0 * math.pi * freq * 1e-3 * t + phase)


@nb.njit(fastmath=FASTMATH, error_model="numpy", cache=True)
def _finite(x):
    """False for NaN and +-inf. (math.isfinite is folded to True under these fast-math flags.)"""
    return abs(x) < math.inf


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
