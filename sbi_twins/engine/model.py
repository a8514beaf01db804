"""Cell models: load a Myokit ``.mmt`` file and simulate batches of cells with generated kernels."""

from __future__ import annotations

import difflib
import hashlib
import math
import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import myokit
import numpy as np
import pandas as pd

from .. import _resources
from .._util import (
    RECORDING_PREFIX,
    check_number,
    check_positive,
    refuse_directory,
    whole_multiple,
)
from ..protocol import Protocol, load_protocol
from .analysis import ModelAnalysis, ModelStructureError
from .codegen import CODEGEN_VERSION, kernel_module
from .kernel_cache import damaged_cache_error, is_cache_failure, load_module, reload_module

ParamsLike = None | pd.DataFrame | Mapping[str, Any]

_SEGMENT_KIND = {"step": 0, "ramp": 1, "sine": 2}
#: Time resolution (ms) at which protocol durations must be exact.
_TIME_QUANTUM_MS = 1e-6
#: Name prefixes (after the component) of parameters that cannot be negative: maximal
#: conductances, permeabilities and current scale factors (see :func:`is_conductance`).
CONDUCTANCE_PREFIXES = ("g_", "p_", "P_", "scale_")


def is_conductance(name: str) -> bool:
    """Whether parameter ``name`` (``component.variable``) is a conductance-like magnitude.

    The rule: the variable's name is ``g`` or starts with one of :data:`CONDUCTANCE_PREFIXES`
    (``ina.g_Na``, ``il.g_L``, ``ical.p_CaL``, ``inak.P_NaK``, ``ikr.scale_Kr``). Such a value
    scales a current's magnitude; a negative one reverses that current at every voltage.
    """
    variable = name.rsplit(".", 1)[-1]
    return variable == "g" or variable.startswith(CONDUCTANCE_PREFIXES)


class SimulationWarning(RuntimeWarning):
    """Some cells of a batch could not be simulated (their output rows are NaN)."""


#: The clamp simulations retry failed cells with the stiff kernels at this fraction of the step.
RETRY_STEP_FRACTION = 0.5


class CellModel:
    """A cell model compiled to batched Numba kernels.

    Use :func:`load_model` to create one. Parameters are the literal constants of the model file,
    addressed by their ``component.variable`` names; every simulation starts from the file's
    initial state unless ``initial_state`` is given.

    **Failed cells.** The clamp simulations integrate explicitly, which blows up when a state
    relaxes much faster than the step (in Kernik 2019: the ryanodine-receptor states of
    calcium-overloaded cells). With ``retry`` (the default) such cells are simulated once more
    with the stiff variant of the kernel at :data:`RETRY_STEP_FRACTION` of the step: the states
    that are linear in themselves take exponential updates, stable at any rate (generalised
    Rush-Larsen; :mod:`sbi_twins.engine.codegen`). The other cells keep the default kernel's
    results. Cells that fail again (or fail in a model without such states, which has no stiff
    kernel) are NaN rows, and a :class:`SimulationWarning` names them with their parameters.
    """

    def __init__(self, model: myokit.Model, path: Path, file_hash: str):
        self._myokit_model = model
        self.path = path
        self.file_hash = file_hash
        self.name = path.stem
        self._analysis = ModelAnalysis(model)
        a = self._analysis
        self.parameter_names: tuple[str, ...] = tuple(p.qname() for p in a.parameters)
        self.default_parameters: np.ndarray = np.array([p.eval() for p in a.parameters], float)
        self.default_parameters.flags.writeable = False
        self.state_names: tuple[str, ...] = tuple(s.qname() for s in a.states)
        self.initial_state: np.ndarray = np.array(model.initial_values(as_floats=True), float)
        self.initial_state.flags.writeable = False
        _refuse_non_finite("parameter", self.parameter_names, self.default_parameters)
        _refuse_non_finite("initial state", self.state_names, self.initial_state)
        self._index = {n: i for i, n in enumerate(self.parameter_names)}
        explicit = a.explicit_rhs(True)
        # Error scales for the adaptive current-clamp step: the magnitude of each state at start.
        self._ap_y_scale = np.array(
            [max(abs(self.initial_state[a.states.index(s)]), 1e-9) for s, _ in explicit]
        )
        self._kernels: ModuleType | None = None

    def __repr__(self) -> str:
        return (
            f"CellModel({self.name!r}, {len(self.state_names)} states "
            f"({len(self._analysis.gates)} Rush-Larsen gates), "
            f"{len(self.parameter_names)} parameters)"
        )

    @property
    def kernels(self) -> ModuleType:
        """The generated kernel module (generated, cached on disk and imported on first use)."""
        if self._kernels is None:
            self._kernels = load_module(self._kernel_source())
        return self._kernels

    def _kernel_source(self) -> str:
        return f"# model sha256 {self.file_hash}, codegen v{CODEGEN_VERSION}\n" + kernel_module(
            self._analysis
        )

    def _run_kernel(self, name: str, *args: Any) -> None:
        """Call kernel ``name``; if Numba cannot read its cached machine code, heal the cache
        (delete this model's cached files, compile again, warn) and call it once more.
        """
        try:
            getattr(self.kernels, name)(*args)
        except Exception as error:
            if not is_cache_failure(error):
                raise
            reason = f"{type(error).__name__} while Numba read the compiled {name}"
            self._kernels = reload_module(self._kernel_source(), reason)
            try:
                getattr(self._kernels, name)(*args)
            except Exception as again:
                if is_cache_failure(again):
                    raise damaged_cache_error(again) from None
                raise

    # -- inputs --------------------------------------------------------------------------------
    def parameter_matrix(
        self, params: ParamsLike = None, *, allow_negative: bool = False
    ) -> np.ndarray:
        """Turn ``params`` into a C-contiguous ``(N, P)`` array in :attr:`parameter_names` order.

        Parameters
        ----------
        params : None, pandas.DataFrame or mapping of name -> array-like of shape (N,)
            ``None`` gives the defaults for one cell. Names not given keep their defaults;
            scalars are broadcast over the cells. Names that start with ``recording.`` belong
            to the recording model (:mod:`sbi_twins.recording`) and are ignored here.
        allow_negative : bool, default False
            Accept negative values of conductance-like parameters. By default they are refused:
            a parameter whose variable name is ``g`` or starts with ``g_`` (maximal
            conductance), ``p_``/``P_`` (permeability, maximal pump rate) or ``scale_`` (a
            current's scale factor) sizes a current, and a negative size reverses it, which is
            almost always a sign error (:func:`is_conductance`). Pass True to study such cells
            anyway (e.g. a dynamic-clamp subtraction).

        Raises
        ------
        ValueError
            Unknown names (the valid ones are listed), inconsistent lengths, values that are
            not finite numbers, or negative conductances (the parameter and cells are named).
        """
        if params is None:
            return self.default_parameters[None, :].copy()  # writable: a read-only array is
            # a different Numba type and would trigger a second compilation
        if isinstance(params, pd.DataFrame):
            columns = {str(c): params[c].to_numpy() for c in params.columns}
        elif isinstance(params, Mapping):
            columns = dict(params)
        else:
            raise ValueError(
                "params must be None, a pandas.DataFrame or a mapping of parameter name -> "
                f"values, not {type(params).__name__}"
            )
        columns = {k: v for k, v in columns.items() if not str(k).startswith(RECORDING_PREFIX)}
        unknown = [name for name in columns if name not in self._index]
        if unknown:
            raise ValueError(self._unknown_message(unknown))
        arrays = {}
        for name, values in columns.items():
            try:
                arr = np.asarray(values, dtype=float)
            except (TypeError, ValueError):
                raise ValueError(f"parameter '{name}' must be numeric") from None
            if arr.ndim > 1:
                raise ValueError(
                    f"parameter '{name}' must be a scalar or 1-D array of shape (N,), "
                    f"got shape {arr.shape}"
                )
            arrays[name] = arr
        lengths = {arr.size for arr in arrays.values() if arr.ndim == 1}
        if len(lengths) > 1:
            detail = ", ".join(f"{k}: {v.size}" for k, v in arrays.items() if v.ndim == 1)
            raise ValueError(f"parameter arrays have different lengths ({detail})")
        if isinstance(params, pd.DataFrame):  # rows are cells, even with no cell column left
            lengths.add(len(params))
        n = lengths.pop() if lengths else 1
        if n == 0:
            raise ValueError("params describe zero cells")
        matrix = np.tile(self.default_parameters, (n, 1))
        for name, arr in arrays.items():
            bad = ~np.isfinite(arr)
            if bad.any():
                cells = np.flatnonzero(np.broadcast_to(bad, (n,)))[:10].tolist()
                raise ValueError(f"parameter '{name}' has non-finite values (cells {cells})")
            if not allow_negative and is_conductance(name):
                _refuse_negative(name, np.broadcast_to(arr, (n,)))
            matrix[:, self._index[name]] = arr
        return np.ascontiguousarray(matrix)

    def _unknown_message(self, unknown: list[str]) -> str:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, self.parameter_names, n=1)
            hints.append(f"'{name}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        return (
            f"unknown parameter(s) for model '{self.name}': {', '.join(hints)}. "
            f"Valid names are: {', '.join(self.parameter_names)}"
        )

    def _initial_states(self, initial_state: np.ndarray | None, n: int) -> np.ndarray:
        if initial_state is None:
            return np.ascontiguousarray(np.tile(self.initial_state, (n, 1)))
        y0 = np.asarray(initial_state, dtype=float)
        n_states = len(self.state_names)
        if y0.shape == (n_states,):
            y0 = np.tile(y0, (n, 1))
        if y0.shape != (n, n_states):
            raise ValueError(
                f"initial_state must have shape ({n_states},) or ({n}, {n_states}) "
                f"(states: {', '.join(self.state_names)}), got {np.shape(initial_state)}"
            )
        if not np.isfinite(y0).all():
            raise ValueError("initial_state contains non-finite values")
        return np.ascontiguousarray(y0)

    # -- simulations ---------------------------------------------------------------------------
    def simulate_vc(
        self,
        protocol: Protocol | str | os.PathLike,
        params: ParamsLike = None,
        sample_interval_ms: float = 0.1,
        *,
        dt_ms: float = 0.2,
        initial_state: np.ndarray | None = None,
        allow_negative: bool = False,
        retry: bool = True,
    ) -> np.ndarray:
        """Simulate an ideal voltage clamp and return the total ionic current.

        Parameters
        ----------
        protocol : Protocol or str or path
            The clamp protocol (or the name of a bundled one, or a ``.toml`` path).
        params : None, DataFrame or mapping, optional
            Parameter values per cell (see :meth:`parameter_matrix`).
        sample_interval_ms : float
            Output sampling interval; samples at ``protocol.times(sample_interval_ms)``.
        dt_ms : float
            Largest integration step. On constant-voltage segments steps span two intervals of
            the finest grid (at most ``dt_ms / 2``) that holds every segment edge and every
            sample time, so the Rush-Larsen gate update is exact and I_ion is evaluated exactly
            at the samples; ramps and sines use single-interval steps.
        initial_state : array, optional
            Initial state, shape (S,) or (N, S), in :attr:`state_names` order.
        allow_negative : bool, default False
            Accept negative conductances (see :meth:`parameter_matrix`).
        retry : bool, default True
            Simulate the cells whose integration blew up once more with the stiff kernel (see
            the class docstring), so that they are not lost.

        Returns
        -------
        numpy.ndarray
            Shape (N, T): the current labelled ``cellular_current`` (pA/pF for Kernik 2019) at each
            sample time; samples on a step edge are taken at the new voltage. Rows of cells whose
            integration blew up (after the retry) are NaN (a :class:`SimulationWarning` names them
            with their parameters; when every cell failed it names the protocol's most extreme
            command as the likely cause).
        """
        if not isinstance(protocol, Protocol):
            protocol = load_protocol(protocol)
        times = protocol.times(sample_interval_ms)
        check_positive("dt_ms", dt_ms)
        theta = self.parameter_matrix(params, allow_negative=allow_negative)
        y0 = self._initial_states(initial_state, theta.shape[0])

        def run(kernel: str, cells: np.ndarray | slice, step_ms: float) -> tuple[list, np.ndarray]:
            h, stride, nsteps = _clamp_grid(protocol, sample_interval_ms, step_ms / 2)
            rest = (
                *_segment_arrays(protocol, nsteps, with_start_times=True),
                h,
                stride,
                float(protocol.voltage(np.array([times[-1]]))[0]),
                float(times[-1]),
            )
            return self._run_clamp(kernel, theta[cells], y0[cells], (), rest, times.size, 1)

        (out,), ok = run("simulate_vc", slice(None), dt_ms)
        retried = retry and self._retry_clamp(run, "simulate_vc", dt_ms, [out], ok)
        blame = _protocol_blame(protocol)
        return _flag_failures(out, ok, blame, self._describer(theta), retried)

    def simulate_vc_artefacts(
        self,
        protocol: Protocol | str | os.PathLike,
        params: ParamsLike,
        clamp: np.ndarray,
        sample_interval_ms: float = 0.1,
        *,
        dt_ms: float = 0.05,
        dense_ms: float = 5.0,
        initial_state: np.ndarray | None = None,
        allow_negative: bool = False,
        retry: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Simulate voltage clamp through series resistance, with leak and voltage offset.

        The equations are in :meth:`sbi_twins.engine.codegen.KernelSource.artefact_kernel`; most
        users want :func:`sbi_twins.recording.simulate_recordings`, which derives ``clamp`` from
        physical recording parameters and adds noise and filtering.

        Parameters
        ----------
        protocol : Protocol or str or path
            The clamp protocol.
        params : None, DataFrame or mapping
            Parameter values per cell (see :meth:`parameter_matrix`).
        clamp : array, shape (N, 4) or (4,)
            Per cell: residual time constant ``tau`` (ms, > 0; ``(1 - alpha) Rs Cm``), voltage
            offset (mV), leak conductance (nS/pF) and leak reversal potential (mV).
        sample_interval_ms : float
            Output sampling interval.
        dt_ms : float
            Fine step (the largest grid interval holding every edge and sample not above it),
            used on ramps and sines and for the first ``dense_ms`` of every step segment; the
            rest of a step segment advances one sample interval per step.
        dense_ms : float
            Span of fine steps after each segment start.
        initial_state : array, optional
            Initial state, shape (S,) or (N, S); V starts at the quasi-steady voltage of the
            holding command plus offset.
        allow_negative : bool, default False
            Accept negative conductances (see :meth:`parameter_matrix`).
        retry : bool, default True
            Simulate the cells whose integration blew up once more with the stiff kernel (see
            the class docstring).

        Returns
        -------
        (numpy.ndarray, numpy.ndarray)
            Recorded current (pA/pF) and membrane potential (mV), both (N, T). Rows of cells
            whose integration blew up (after the retry) are NaN in both (a
            :class:`SimulationWarning` names them with their parameters).
        """
        if not isinstance(protocol, Protocol):
            protocol = load_protocol(protocol)
        times = protocol.times(sample_interval_ms)
        check_positive("dt_ms", dt_ms)
        check_number("dense_ms", dense_ms, minimum=0.0)
        theta = self.parameter_matrix(params, allow_negative=allow_negative)
        n_cells = theta.shape[0]
        clamp = np.asarray(clamp, dtype=float)
        if clamp.ndim == 1:
            clamp = np.tile(clamp, (n_cells, 1))
        if clamp.shape != (n_cells, 4):
            raise ValueError(
                f"clamp must have shape (4,) or ({n_cells}, 4) (tau_ms, v_offset_mV, g_leak, "
                f"e_leak_mV), got {clamp.shape}"
            )
        if not (np.isfinite(clamp).all() and (clamp[:, 0] > 0).all()):
            raise ValueError("clamp values must be finite, with tau_ms > 0")
        y0 = self._initial_states(initial_state, n_cells)

        def run(kernel: str, cells: np.ndarray | slice, step_ms: float) -> tuple[list, np.ndarray]:
            h, stride, nsteps = _clamp_grid(protocol, sample_interval_ms, step_ms)
            rest = (
                *_segment_arrays(protocol, nsteps, with_start_times=False),
                h,
                stride,
                math.ceil(dense_ms / h - 1e-9),
                float(protocol.voltage(np.array([0.0]))[0]),
                float(protocol.voltage(np.array([times[-1]]))[0]),
            )
            first = (np.ascontiguousarray(clamp[cells]),)
            return self._run_clamp(kernel, theta[cells], y0[cells], first, rest, times.size, 2)

        (current, voltage), ok = run("simulate_artefact", slice(None), dt_ms)
        retried = retry and self._retry_clamp(
            run, "simulate_artefact", dt_ms, [current, voltage], ok
        )
        blame = _protocol_blame(protocol)
        current = _flag_failures(current, ok, blame, self._describer(theta), retried)
        voltage[~ok] = np.nan
        return current, voltage

    def _run_clamp(
        self,
        kernel: str,
        theta: np.ndarray,
        y0: np.ndarray,
        first: tuple,
        rest: tuple,
        n_times: int,
        n_outputs: int,
    ) -> tuple[list[np.ndarray], np.ndarray]:
        """Run a clamp kernel as ``kernel(theta, y0, *first, *rest, *outputs, ok)`` on whole
        blocks of lanes; return the ``n_outputs`` output arrays and ``ok`` of the real cells.
        """
        n_cells = theta.shape[0]
        n_padded = -(-n_cells // self.kernels.LANES) * self.kernels.LANES  # whole blocks
        outputs = [np.empty((n_padded, n_times)) for _ in range(n_outputs)]
        ok = np.empty(n_padded, dtype=np.bool_)
        self._run_kernel(kernel, theta, y0, *first, *rest, *outputs, ok)
        return [o[:n_cells] for o in outputs], ok[:n_cells]

    def _retry_clamp(
        self,
        run: Callable[[str, np.ndarray, float], tuple[list[np.ndarray], np.ndarray]],
        kernel: str,
        dt_ms: float,
        outputs: list[np.ndarray],
        ok: np.ndarray,
    ) -> bool:
        """Run the failed cells of a clamp simulation again with the stiff kernel, in place
        (``run(kernel, cells, step_ms)`` simulates some cells); True if a retry was made.
        """
        failed = np.flatnonzero(~ok)
        if failed.size == 0 or not self._analysis.linear_states:
            return False  # nothing failed, or a model without stiff kernels to retry with
        again, ok_again = run(f"{kernel}_stiff", failed, dt_ms * RETRY_STEP_FRACTION)
        for output, values in zip(outputs, again, strict=True):
            output[failed] = values
        ok[failed] = ok_again
        return True

    def _describer(self, theta: np.ndarray) -> Callable[[int], str]:
        """``describe(cell)``: a failed cell's parameters that differ from the model file's, for
        the failure warning.
        """

        def describe(cell: int) -> str:
            same = np.isclose(theta[cell], self.default_parameters, rtol=1e-12, atol=0.0)
            values = ", ".join(
                f"{self.parameter_names[k]}={theta[cell, k]:.6g}" for k in np.flatnonzero(~same)
            )
            return f"cell {cell}: {values or 'the model file values'}"

        return describe

    def simulate_ap(
        self,
        params: ParamsLike = None,
        duration_ms: float = 10_000,
        sample_interval_ms: float = 0.5,
        cycle_length_ms: float | None = None,
        *,
        stimulus_duration_ms: float = 2.0,
        initial_state: np.ndarray | None = None,
        atol_mV: float = 0.02,
        rtol: float = 2e-3,
        dt_max_ms: float = 0.2,
        return_final_state: bool = False,
        allow_negative: bool = False,
        lane_blocks: bool = True,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Simulate current clamp (spontaneous or paced) and return the membrane potential.

        Parameters
        ----------
        params : None, DataFrame or mapping, optional
            Parameter values per cell (see :meth:`parameter_matrix`).
        duration_ms : float
            Simulated time; samples at ``0, dt, ..., duration_ms`` (end point included).
        sample_interval_ms : float
            Output sampling interval; must divide ``duration_ms``.
        cycle_length_ms : float, optional
            ``None`` for spontaneous activity. Otherwise the model's ``pace``-bound variable is set
            to 1 for ``stimulus_duration_ms`` at ``t = 0, CL, 2 CL, ...``; in the bundled models
            the stimulus current is ``pace * stimulus.amplitude`` (Kernik 2019: -10 pA/pF).
        stimulus_duration_ms : float
            Length of each stimulus pulse.
        initial_state : array, optional
            Initial state, shape (S,) or (N, S), in :attr:`state_names` order.
        atol_mV, rtol : float
            Local error tolerances of the adaptive step: absolute on V, relative on the other
            explicitly integrated states. The defaults keep beat timing within 1 ms over 10 s of
            Kernik 2019 activity (see BENCHMARKS.md).
        dt_max_ms : float
            Largest step (steps also stop at every sample and stimulus edge). Beat timing is
            sensitive to small errors during slow diastolic depolarisation, which a local error
            estimate under-weights; capping the step at 0.2 ms keeps the cumulative drift of
            upstroke times below 1 ms over 10 s (measured against CVODE, BENCHMARKS.md).
        return_final_state : bool
            Also return the final state of every cell.
        allow_negative : bool, default False
            Accept negative conductances (see :meth:`parameter_matrix`).
        lane_blocks : bool, default True
            Integrate cells in blocks of lanes advanced by vectorised loops (about 2.8x faster
            per core) rather than one cell at a time. Both take the same adaptive steps, so
            their traces differ by rounding (the lane kernel expands exp/log/pow inline),
            except where the rounding changes a step whose error estimate sits on its
            tolerance: then by what the tolerance allows (6 of 256 Kernik 2019 prior draws
            over 20 s, upstrokes at most 0.05 ms apart; BENCHMARKS.md). The viability filter
            of dataset generation runs the per-cell kernel (False), so that datasets are
            regenerated bit for bit.

        Returns
        -------
        numpy.ndarray or (numpy.ndarray, numpy.ndarray)
            Shape (N, T): membrane potential (mV). Rows of cells whose integration blew up are
            NaN (a :class:`SimulationWarning` names them). With ``return_final_state``, also the
            final states (NaN rows for failed cells).
        """
        for name, value in [
            ("duration_ms", duration_ms),
            ("sample_interval_ms", sample_interval_ms),
            ("atol_mV", atol_mV),
            ("rtol", rtol),
            ("dt_max_ms", dt_max_ms),
            ("stimulus_duration_ms", stimulus_duration_ms),
        ]:
            check_positive(name, value)
        n_samples = 1 + whole_multiple(
            duration_ms, sample_interval_ms, name="duration_ms", step_name="sample_interval_ms"
        )
        if cycle_length_ms is None:
            cycle = 0.0
        else:
            check_positive("cycle_length_ms", cycle_length_ms)
            if self._analysis.pace is None:
                raise ValueError(
                    f"model '{self.name}' has no variable bound to 'pace', so it cannot be paced; "
                    "add e.g. 'pace = 0 bind pace' and a stimulus current 'pace * amplitude'."
                )
            if stimulus_duration_ms >= cycle_length_ms:
                raise ValueError(
                    f"stimulus_duration_ms ({stimulus_duration_ms}) must be shorter than "
                    f"cycle_length_ms ({cycle_length_ms})"
                )
            cycle = float(cycle_length_ms)
        theta = self.parameter_matrix(params, allow_negative=allow_negative)
        n_cells = theta.shape[0]
        y0 = self._initial_states(initial_state, n_cells)
        # the lane kernel writes whole blocks (its extra lanes repeat the last cell)
        lanes = self.kernels.LANES if lane_blocks else 1
        n_rows = -(-n_cells // lanes) * lanes
        out = np.full((n_rows, n_samples), np.nan)
        ok = np.zeros(n_rows, dtype=np.bool_)
        y_end = np.full((n_rows, y0.shape[1]), np.nan)
        self._run_kernel(
            "simulate_ap_lanes" if lane_blocks else "simulate_ap",
            theta,
            y0,
            float(sample_interval_ms),
            cycle,
            float(stimulus_duration_ms),
            float(dt_max_ms),
            1e-6,
            float(atol_mV),
            float(rtol),
            self._ap_y_scale,
            out,
            ok,
            y_end,
        )
        out, ok, y_end = out[:n_cells], ok[:n_cells], y_end[:n_cells]
        out = _flag_failures(out, ok, _AP_BLAME, self._describer(theta), retried=False)
        if return_final_state:
            y_end[~ok] = np.nan
            return out, y_end
        return out


def _quantise(value_ms: float, what: str) -> int:
    return whole_multiple(value_ms, _TIME_QUANTUM_MS, name=f"{what} (ms)", step_name="1e-6 ms")


def _clamp_grid(
    protocol: Protocol, sample_interval_ms: float, dt_max_ms: float
) -> tuple[float, int, np.ndarray]:
    """Finest common time grid of a clamp protocol and its sampling.

    Returns the grid interval ``h`` (ms, the largest not above ``dt_max_ms``), the number of
    intervals per output sample, and the number of intervals in each segment, such that every
    segment edge and every sample time is a grid point.
    """
    units = [
        _quantise(s.duration_ms, f"segment {k + 1} duration")
        for k, s in enumerate(protocol.segments)
    ]
    sample_units = _quantise(sample_interval_ms, "sample_interval_ms")
    common = math.gcd(sample_units, *units)
    substeps = math.ceil(common * _TIME_QUANTUM_MS / dt_max_ms - 1e-9)
    h = common * _TIME_QUANTUM_MS / substeps
    nsteps = np.array([u // common * substeps for u in units], dtype=np.int64)
    return h, sample_units // common * substeps, nsteps


def _segment_arrays(protocol: Protocol, nsteps: np.ndarray, with_start_times: bool) -> list:
    """The per-segment arrays the clamp kernels take: kind, steps, (start times,) start and end
    voltages, sine amplitude, frequency and phase.
    """
    segs = protocol.segments
    starts = [protocol.edges_ms[:-1]] if with_start_times else []
    return [
        np.array([_SEGMENT_KIND[s.kind] for s in segs], dtype=np.int64),
        nsteps,
        *starts,
        np.array([s.v_start_mV for s in segs], float),
        np.array([s.v_end_mV for s in segs], float),
        np.array([s.amplitude_mV for s in segs], float),
        np.array([s.frequency_hz for s in segs], float),
        np.array([s.phase_rad for s in segs], float),
    ]


#: What to suspect when every cell of a current-clamp batch failed.
_AP_BLAME = "the model file's initial state, a parameter all cells share or the pacing settings"


def _protocol_blame(protocol: Protocol) -> str:
    """What to suspect when every cell of a clamp batch failed: the protocol's extreme command."""
    voltage, number = protocol.most_extreme_command()
    where = f"segment {number}" if number else "the holding level"
    return (
        f"the protocol {protocol.name!r} (its most extreme command is {voltage:+g} mV, in "
        f"{where}; check that the model can be clamped there)"
    )


#: Failed cells whose parameters a SimulationWarning lists.
_CELLS_DESCRIBED = 3


def _flag_failures(
    out: np.ndarray, ok: np.ndarray, blame: str, describe: Callable[[int], str], retried: bool
) -> np.ndarray:
    """NaN the rows of failed cells and warn; ``blame`` is what to suspect if all failed,
    ``describe(cell)`` names a failed cell's parameters, ``retried`` says that the failed cells
    were simulated again with the stiff kernel.
    """
    if not ok.all():
        bad = np.flatnonzero(~ok)
        out[bad] = np.nan
        shown = ", ".join(map(str, bad[:20])) + (" ..." if bad.size > 20 else "")
        again = " (also when simulated again with the stiff kernel)" if retried else ""
        if bad.size == ok.size and ok.size > 1:
            advice = f"Every cell failed, so the likely cause is {blame}."
        else:
            cells = "; ".join(describe(int(c)) for c in bad[:_CELLS_DESCRIBED])
            more = bad.size - _CELLS_DESCRIBED
            which = f" ({cells}" + (f"; and {more} more)" if more > 0 else ")")
            if ok.size == 1:
                advice = f"Check that parameter set{which}, or {blame}."
            else:
                advice = f"Check those parameter sets{which}."
        warnings.warn(
            f"integration produced non-finite values for {bad.size} cell(s) (index {shown})"
            f"{again}; their rows are NaN. {advice}",
            SimulationWarning,
            stacklevel=3,
        )
    return out


def _refuse_non_finite(what: str, names: tuple[str, ...], values: np.ndarray) -> None:
    """Refuse a model file whose literal parameters or initial state are NaN or infinite."""
    bad = [f"{n} = {v}" for n, v in zip(names, values, strict=True) if not math.isfinite(v)]
    if bad:
        raise ModelStructureError(
            f"non-finite {what} value(s) in the model file: {', '.join(bad)}; every {what} "
            "must be a finite number (a value like 1e999 overflows to inf)"
        )


def _refuse_negative(name: str, values: np.ndarray) -> None:
    negative = np.flatnonzero(values < 0)
    if negative.size:
        cells = ", ".join(map(str, negative[:10])) + (" ..." if negative.size > 10 else "")
        raise ValueError(
            f"parameter '{name}' sizes a current (conductance, permeability or scale factor) "
            f"and is negative for {negative.size} cell(s) (index {cells}; e.g. "
            f"{values[negative[0]]:g}); check its sign, or pass allow_negative=True to "
            "simulate such cells anyway"
        )


_LOADED: dict[tuple[Path, str], CellModel] = {}


def load_model(name_or_path: str | os.PathLike) -> CellModel:
    """Load a cell model by bundled name (e.g. ``"kernik2019"``) or from a ``.mmt`` path.

    Raises
    ------
    FileNotFoundError
        Unknown bundled name (the available ones are listed) or missing file.
    IsADirectoryError
        The path is a directory.
    ValueError
        The file is not text, cannot be parsed (myokit's message and line are shown), does not
        follow the engine's conventions (``simulators/README.md``), or has a NaN or infinite
        parameter or initial state.
    """
    try:
        path = _resources.resolve(name_or_path, "simulators", ".mmt")
    except FileNotFoundError:
        refuse_directory(name_or_path, "a .mmt model file")
        raise
    data = path.read_bytes()
    file_hash = hashlib.sha256(data).hexdigest()
    key = (path.resolve(), file_hash)
    if key not in _LOADED:
        text = _model_text(path, data)
        try:
            model = myokit.parse_model(text)
            model.validate()
        except myokit.ParseError as e:
            message = myokit.format_parse_error(e)
            raise ValueError(f"cannot parse model file {path}:\n{message}") from None
        except myokit.MyokitError as e:
            raise ValueError(f"invalid model file {path}: {e}") from None
        try:
            _LOADED[key] = CellModel(model, path, file_hash)
        except ModelStructureError as e:
            raise ModelStructureError(f"{path}: {e}") from None
    return _LOADED[key]


def _model_text(path: Path, data: bytes) -> str:
    """The text of a model file; a binary file is refused before myokit sees it."""
    try:
        if b"\0" in data:
            raise UnicodeDecodeError("utf-8", data, data.index(b"\0"), len(data), "NUL byte")
        return data.decode()
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{path} is not a text .mmt file (byte {e.start} is not UTF-8 text: {e.reason}); "
            "pass a Myokit model file (simulators/README.md)"
        ) from None
