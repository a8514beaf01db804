"""Myokit models for the CVODE references of the clamp kernels (tests and benchmarks share them).

Not a test module: ``tests/test_accuracy.py`` imports it, and ``benchmarks/robustness.py`` adds
this folder to ``sys.path`` to do the same, so both check the kernels against one construction.
"""

from __future__ import annotations

from pathlib import Path

import myokit
import numpy as np

from sbi_twins import Protocol


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


def run_segments(
    sim: myokit.Simulation, protocol: Protocol, logged: str, sample_interval_ms: float = 0.1
) -> np.ndarray:
    """Run ``sim`` through ``protocol`` one segment at a time and return ``logged`` on
    ``protocol.times(sample_interval_ms)``.

    Each segment sets the command constants ``xclamp.v0``, ``slope`` and ``t0`` (so the command
    is smooth within a run, and a sample on a segment edge is taken at the new segment's
    voltage). May raise ``myokit.SimulationError`` where CVODE fails.
    """
    times, edges = protocol.times(sample_interval_ms), protocol.edges_ms
    parts = []
    for k, seg in enumerate(protocol.segments):
        last = k == len(protocol.segments) - 1
        sim.set_constant("xclamp.v0", seg.v_start_mV)
        sim.set_constant("xclamp.slope", (seg.v_end_mV - seg.v_start_mV) / seg.duration_ms)
        sim.set_constant("xclamp.t0", edges[k])
        sim.set_time(edges[k])
        upto = edges[k + 1] + (1e-6 if last else -1e-6)
        log_times = times[(times >= edges[k] - 1e-6) & (times < upto)]
        # the last segment runs half a sample past the end to log the final sample
        duration = seg.duration_ms + (sample_interval_ms / 2 if last else 0.0)
        d = sim.run(duration, log=[logged], log_times=log_times)
        parts.append(np.asarray(d[logged]))
    return np.concatenate(parts)
