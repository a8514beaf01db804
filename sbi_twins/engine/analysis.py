"""Structural analysis of a Myokit model for code generation.

The analysis answers the questions the kernel generator needs:

* which variables are *parameters* (literal constants a user may change per cell),
* which states are Hodgkin-Huxley gates (integrated with the exact exponential Rush-Larsen update)
  and which are not (integrated explicitly),
* which of the explicitly integrated states are *linear in themselves*, ``dot(x) = a - b x`` with
  ``a`` and ``b`` free of ``x`` (occupancies of Markov models such as a ryanodine receptor), and
  their rate ``b``: the kernels for stiff cells update them exponentially (generalised
  Rush-Larsen),
* how every intermediate variable depends on time: on parameters only (``CONST``: evaluated once
  per cell), on the membrane potential only (``VOLT``: evaluated once per constant-voltage clamp
  segment), or on other states (``DYN``: evaluated every step).

The model conventions (labels and bindings) are documented in ``simulators/README.md``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import myokit
import myokit.lib.hh as hh

#: Label of the membrane potential state.
LABEL_V = "membrane_potential"
#: Label of the total ionic current recorded under voltage clamp.
LABEL_I_ION = "cellular_current"
_SUPPORTED_BINDINGS = {"time", "pace"}


class Kind(enum.IntEnum):
    """How often a variable must be re-evaluated (ordered: a variable is at least its inputs)."""

    CONST = 0
    VOLT = 1
    DYN = 2


@dataclass(frozen=True)
class Gate:
    """A Hodgkin-Huxley gate ``x`` with steady state ``inf`` and rate ``1/tau`` (both V-only)."""

    state: myokit.Variable
    inf: myokit.Expression
    rate: myokit.Expression


@dataclass(frozen=True)
class LinearState:
    """An explicit state with ``dot(x) = a - rate * x``, where ``a`` and ``rate`` do not depend on
    ``x`` (they may depend on V and on other states).
    """

    state: myokit.Variable
    rate: myokit.Expression


class ModelStructureError(ValueError):
    """The model file does not follow the conventions the engine needs."""


def identifier(var: myokit.Variable) -> str:
    """Python identifier used for ``var`` in generated code (``ina.m`` -> ``m_ina__m``)."""
    return "m_" + var.qname().replace(".", "__")


class ModelAnalysis:
    """Classify the variables and states of a validated Myokit model.

    Parameters
    ----------
    model : myokit.Model
        A model that follows the sbi-twins conventions: the membrane potential labelled
        ``membrane_potential``, the total ionic current labelled ``cellular_current``, time bound
        to ``time`` and (optionally) the stimulus switch bound to ``pace``.
    """

    def __init__(self, model: myokit.Model):
        self.model = model
        self.v = self._required_label(LABEL_V, "the membrane potential state")
        self.i_ion = self._required_label(LABEL_I_ION, "the total ionic current (pA/pF)")
        if not self.v.is_state():
            raise ModelStructureError(
                f"'{self.v.qname()}' is labelled {LABEL_V} but is not a state; "
                "write it as 'dot(V) = -(i_ion + i_stim)' (divided by Cm if not normalised)."
            )
        self.time = model.time()
        self.pace = model.binding("pace")
        for var in model.variables(deep=True):
            binding = var.binding()
            if binding is not None and binding not in _SUPPORTED_BINDINGS:
                raise ModelStructureError(
                    f"'{var.qname()}' is bound to '{binding}', which sbi-twins does not provide; "
                    f"supported bindings: {', '.join(sorted(_SUPPORTED_BINDINGS))}."
                )

        self.parameters: list[myokit.Variable] = [
            var
            for var in model.variables(deep=True, sort=False)
            if var.is_literal() and not var.is_state() and var.binding() is None
        ]
        self._parameter_set = set(self.parameters)
        self.states: list[myokit.Variable] = list(model.states())
        self.gates: list[Gate] = [g for g in map(self._as_gate, self.states) if g is not None]
        gate_states = {g.state for g in self.gates}
        self.explicit_states: list[myokit.Variable] = [
            s for s in self.states if s not in gate_states
        ]

        self.linear_states: list[LinearState] = [
            linear for linear in map(self._as_linear, self.explicit_states) if linear is not None
        ]

        self._kinds: dict[myokit.Variable, Kind] = {}
        for var in model.variables(deep=True):
            self.kind(var)
        for gate in self.gates:
            for expr in (gate.inf, gate.rate):
                if self.expr_kind(expr) > Kind.VOLT:
                    raise ModelStructureError(
                        f"gate '{gate.state.qname()}' has kinetics that depend on states other "
                        "than the membrane potential"
                    )

    # -- helpers -------------------------------------------------------------------------------
    def _required_label(self, label: str, what: str) -> myokit.Variable:
        var = self.model.label(label)
        if var is None:
            raise ModelStructureError(
                f"the model has no variable labelled '{label}' ({what}); add a line "
                f"'label {label}' under that variable in the .mmt file."
            )
        return var

    def _as_gate(self, state: myokit.Variable) -> Gate | None:
        if state is self.v:
            return None
        try:
            inf, tau = hh.get_inf_and_tau(state, self.v)
            return Gate(state, myokit.Name(inf), myokit.Divide(myokit.Number(1), myokit.Name(tau)))
        except TypeError:
            pass
        try:
            alpha, beta = hh.get_alpha_and_beta(state, self.v)
        except TypeError:
            return None
        total = myokit.Plus(myokit.Name(alpha), myokit.Name(beta))
        return Gate(state, myokit.Divide(myokit.Name(alpha), total), total)

    def _as_linear(self, state: myokit.Variable) -> LinearState | None:
        if state is self.v:
            return None  # clamped (or, in current clamp, integrated with the step controller)
        try:
            slope = self.self_derivative(state)
        except (NotImplementedError, myokit.MyokitError):
            return None  # a function myokit cannot differentiate: keep the explicit update
        if self._depends_on(slope, state, {}):
            return None
        return LinearState(state, myokit.PrefixMinus(slope))

    def self_derivative(self, state: myokit.Variable) -> myokit.Expression:
        """The partial derivative of ``dot(state)`` with respect to ``state``.

        Other states are held fixed; intermediate variables are differentiated through (myokit's
        ``PartialDerivative`` placeholders are replaced by their expressions, recursively), so
        the result refers only to parameters, states, bound variables and intermediate
        variables of the model.
        """
        lhs = myokit.Name(state)

        def resolve(expr: myokit.Expression) -> myokit.Expression:
            subst = {
                ref: resolve(ref.dependent_expression().var().rhs().diff(lhs))
                for ref in expr.walk(myokit.PartialDerivative)
            }
            return expr.clone(subst=subst) if subst else expr

        return resolve(state.rhs().diff(lhs))

    def _depends_on(
        self, expr: myokit.Expression, state: myokit.Variable, memo: dict[myokit.Variable, bool]
    ) -> bool:
        """Whether ``expr`` refers to ``state``, directly or through intermediate variables (not
        through other states, which are held fixed).
        """
        for ref in expr.references():
            var = ref.var()
            if var is state:
                return True
            if var.is_state() or var.binding() is not None or var in self._parameter_set:
                continue
            if var not in memo:
                memo[var] = False  # the model is acyclic; this only guards the recursion
                memo[var] = self._depends_on(var.rhs(), state, memo)
            if memo[var]:
                return True
        return False

    def kind(self, var: myokit.Variable) -> Kind:
        """How often ``var`` changes in a simulation (see :class:`Kind`)."""
        if var in self._kinds:
            return self._kinds[var]
        if var is self.v:
            kind = Kind.VOLT
        elif var.is_state() or var.binding() is not None:
            kind = Kind.DYN
        else:
            kind = self.expr_kind(var.rhs())
        self._kinds[var] = kind
        return kind

    def expr_kind(self, expr: myokit.Expression) -> Kind:
        """What an expression depends on: parameters only, voltage too, or other states."""
        kinds = [Kind.CONST]
        for ref in expr.references():
            if isinstance(ref, myokit.Derivative):
                raise ModelStructureError(
                    f"expression '{expr.code()}' uses a derivative dot(...); rewrite it in terms "
                    "of the variables that define that derivative."
                )
            kinds.append(self.kind(ref.var()))
        return max(kinds)

    def closure(self, exprs: list[myokit.Expression], kind: Kind) -> list[myokit.Variable]:
        """Intermediate variables of ``kind`` needed to evaluate ``exprs``, in evaluation order.

        Parameters, states, bound variables and the membrane potential are inputs, never part of
        a closure.
        """
        ordered: list[myokit.Variable] = []
        seen: set[myokit.Variable] = set()

        def visit(var: myokit.Variable) -> None:
            if var in seen:
                return
            seen.add(var)
            if var.is_state() or var.binding() is not None or var in self._parameter_set:
                return
            for ref in _sorted_refs(var.rhs()):
                visit(ref.var())
            if self.kind(var) == kind:
                ordered.append(var)

        for expr in exprs:
            for ref in _sorted_refs(expr):
                visit(ref.var())
        return ordered

    def explicit_rhs(self, include_v: bool) -> list[tuple[myokit.Variable, myokit.Expression]]:
        """``(state, dot(state) expression)`` for the explicitly integrated states."""
        return [(s, s.rhs()) for s in self.explicit_states if include_v or s is not self.v]

    def uses(self, var: myokit.Variable | None) -> bool:
        """True if any equation refers to ``var``."""
        return var is not None and any(True for _ in var.refs_by())


def _sorted_refs(expr: myokit.Expression) -> list[myokit.Expression]:
    """References of ``expr`` in a fixed order, so generated code is identical across processes
    (myokit returns a set, whose order changes with hash randomisation).
    """
    return sorted(expr.references(), key=lambda ref: ref.var().qname())
