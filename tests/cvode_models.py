"""Myokit models for the CVODE references of the clamp kernels (tests and benchmarks share them).

Not a test module: ``tests/test_accuracy.py`` imports it, and ``benchmarks/robustness.py`` adds
this folder to ``sys.path`` to do the same, so both check the kernels against one construction.
"""

from __future__ import annotations

from pathlib import Path

import myokit


def series_resistance_model(model_file: str | Path) -> tuple[myokit.Model, myokit.Variable]:
    """The model clamped through a residual series resistance, with offset and leak.

    The equations of ``KernelSource.artefact_kernel`` written into the myokit model: the
    membrane follows ``dV/dt = (V_cmd + V_off - V) / tau - (I_ion + g_leak (V - E_leak))``,
    the amplifier's estimate ``vest`` of the command lags it with ``tau``, and ``xclamp.rec`` is
    the recorded current. The command is ``v0 + slope * (t - t0)``, set per segment through the
    constants ``xclamp.v0``, ``slope``, ``t0``; ``tau``, ``voff``, ``gl``, ``el`` per cell.

    Returns
    -------
    (myokit.Model, myokit.Variable)
        The model and its membrane-potential variable.
    """
    model = myokit.load_model(str(model_file))
    v = model.label("membrane_potential")
    i_ion = model.label("cellular_current").qname()
    clamp = model.add_component("xclamp")
    for name in ("v0", "slope", "t0", "tau", "voff", "gl", "el"):
        clamp.add_variable(name).set_rhs(0)
    command = clamp.add_variable("vc")
    command.set_rhs(myokit.parse_expression("v0 + slope * (engine.time - t0)", clamp))
    v.set_rhs(
        myokit.parse_expression(
            f"(xclamp.vc + xclamp.voff - {v.qname()}) / xclamp.tau "
            f"- ({i_ion} + xclamp.gl * ({v.qname()} - xclamp.el))",
            v,
        )
    )
    v_est = clamp.add_variable("vest")
    v_est.promote(-80.0)
    v_est.set_rhs(myokit.parse_expression("(vc - vest) / tau", clamp))
    recorded = clamp.add_variable("rec")
    recorded.set_rhs(myokit.parse_expression(f"(vest + voff - {v.qname()}) / tau", clamp))
    return model, v
