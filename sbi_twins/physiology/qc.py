"""Quality control of real recordings: explicit rules with stated defaults, one verdict each.

:func:`qc` checks one :class:`~sbi_twins.recording.Recording` against :class:`QCRules` and returns
a table with one row per rule: the value measured, the threshold, whether it passed, and the
reason in plain words. A rule whose value the recording cannot give (no series resistance in
its metadata, no holding segment, an action-potential rule on a voltage-clamp recording) is
*not checked*: ``passed`` is NA, never False. ``table.attrs["passed"]`` is True when no rule
failed.

The rules and their defaults
----------------------------
Amplifier and seal (from the membrane test, ``metadata`` keys ``r_seal_GOhm``, ``cm_pF``,
``rs_MOhm`` or the ``measured=`` argument):

``seal_resistance`` >= 0.1 GΩ
    Lei et al. 2019 (Biophys J 117:2438, "Rapid characterization of hERG channel kinetics I",
    QC1: R_seal in [100 MΩ, 1 TΩ]). In whole cell the membrane test reads the input resistance,
    seal and membrane in parallel, a lower bound on the seal.
``membrane_capacitance`` in [10, 150] pF
    Lei et al. 2019 accept 1-100 pF for CHO cells (a smaller Cm means no cell). iPSC-CMs are
    larger and more varied: about 15-100 pF across studies (the bundled recording prior and the
    Kernik 2019 model cell, 60 pF; Clark et al. 2023's cells 26-72 pF). Below 10 pF the patch is
    not a whole cardiomyocyte; above 150 pF it is most likely a cluster of coupled cells, which
    one compartment cannot model and one electrode cannot clamp.
``series_resistance`` <= 40 MΩ (voltage clamp)
    Lei et al. 2019 require <= 25 MΩ of CHO cells in automated patch. Manual patch of
    iPSC-CMs routinely runs higher (25-38 MΩ in the voltage-clamp trials of Clark et al. 2023),
    and the default estimator's recording model simulates up to 40 MΩ
    (``priors/kernik2019_pm40.toml``): beyond that a recording lies outside what it was trained
    on. :meth:`QCRules.for_prior` takes the limit of another estimator's prior (70 MΩ for
    ``kernik2019_real``, the prior of ``clark_na_iv``: Clark et al.'s cells reach 66 MΩ). Not
    checked in current clamp, where no current flows through Rs at rest.

Voltage clamp (on the protocol's segments at the holding level, ``transient_ms`` after their
start, from ``protocol=`` or rebuilt from the recorded command):

``command_matches_protocol``
    the recorded command is the given protocol's, within ``command_tolerance_mV`` away from its
    edges (:func:`sbi_twins.recording.alignment.command_differences`).
``holding_current`` in [-200, +100] pA
    Mean current of the first holding window: the leak through the seal plus the cell's own
    current at that level. The bounds are the "broken-in holding current" criterion of the
    image-guided autopatcher (PMC5144721, Table 1: greater than -200 pA and below 100 pA, as a
    seal-quality check). At -80 mV a 1 GΩ seal leaks -80 pA (the two cells of Clark et al. 2023
    hold at -83 to -87 pA).
``noise`` <= 0.5 pA/pF RMS
    Standard deviation about a straight line through the first holding window. 0.5 pA/pF is the
    highest baseline noise the bundled recording prior simulates; Clark et al.'s cells show
    0.12-0.23 pA/pF at 10 kHz.
``holding_drift`` |ΔI| <= 50 pA
    Mean holding current of the last holding window minus that of the first (of the first and
    last thirds of the window when there is only one). The recording model has a constant seal
    leak; 50 pA at -80 mV is the seal falling from 1 to 0.6 GΩ (Lei et al. 2019, QC4, likewise
    require R_seal, Cm and Rs to stay within 50 % between measurements). Clark et al.'s two
    shared cells drift by 9 and 22 pA over the 5.25 s of ``clark_na_iv``.

Current clamp (action potentials; the recorded potential is low-pass filtered first, see
:func:`recording_ap_features`; beats, CL, APD, MDP and peak as in
:func:`sbi_twins.physiology.ap_features`):

``beats_present`` >= 3 complete beats
    A quiescent cell has no action-potential features to fit or compare. Three complete beats
    (four upstrokes) as in :class:`~sbi_twins.physiology.ViabilityRules`.
``cycle_length_cv`` <= 0.2
    Coefficient of variation of the intervals between upstrokes; the viability rule's bound.
    Regular iPSC-CMs vary by a few per cent (the shared beating cell: 0.03); above 0.2 the rhythm
    has pauses or bursts and a mean cycle length describes no beat.
``alternans`` <= 0.1
    Difference between the mean APD90 of even and odd beats, relative to the mean APD90: an APD
    that alternates beat to beat. Clark et al. excluded one cell for alternans (1.4 by this
    measure); in the cells of their dataset that beat regularly (CL CV <= 0.2) it stays below
    0.04.
``diastolic_potential`` <= -50 mV
    The maximum diastolic potential (of a quiescent cell: its median potential). Depolarised
    iPSC-CMs are often an artefact of seal leak, even with gigaohm seals (Clark et al. 2023,
    Europace); -50 mV is also the viability rule's bound on the MDP.
``peak_potential`` >= 0 mV
    APs that do not overshoot 0 mV come from damaged or leak-depolarised cells (the viability
    rule's bound on the peak).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import pandas as pd
from scipy import signal

from .._util import check_integer, check_number, check_positive
from ..prior import Prior
from ..protocol import Protocol
from ..recording.alignment import command_differences
from ..recording.io import CURRENT_CLAMP, VOLTAGE_CLAMP, Recording
from ..recording.protocol_io import protocol_from_recording
from .features import ap_features, upstroke_times, upward_crossings
from .viability import ViabilityRules

__all__ = [
    "MEASURED_KEYS",
    "QC_COLUMNS",
    "QC_RULES",
    "QCRules",
    "qc",
    "qc_summary",
    "recording_ap_features",
]

#: Columns of the table :func:`qc` returns.
QC_COLUMNS: tuple[str, ...] = ("rule", "value", "unit", "threshold", "passed", "reason")

#: The rules, in the order of the table's rows.
QC_RULES: tuple[str, ...] = (
    "seal_resistance",
    "membrane_capacitance",
    "series_resistance",
    "command_matches_protocol",
    "holding_current",
    "noise",
    "holding_drift",
    "beats_present",
    "cycle_length_cv",
    "alternans",
    "diastolic_potential",
    "peak_potential",
)

#: Keys of ``metadata`` (or ``measured=``) that the amplifier rules read.
MEASURED_KEYS: tuple[str, ...] = ("r_seal_GOhm", "cm_pF", "rs_MOhm")

# A holding window shorter than this gives no reliable mean or noise.
_MIN_WINDOW_MS = 10.0
# A protocol step within this of the holding level is at the holding level.
_HOLDING_MATCH_MV = 0.5


def _check_cutoff(name: str, value: object) -> float:
    """A filter cut-off: a number > 0, or math.inf for no filter."""
    if value == math.inf:
        return math.inf
    return check_positive(name, value)


@dataclass(frozen=True)
class QCRules:
    """Thresholds of the quality-control rules; the module docstring says where each comes from.

    Parameters
    ----------
    min_seal_GOhm : float, default 0.1
        Lowest seal (or input) resistance, GΩ.
    min_cm_pF, max_cm_pF : float, default 10, 150
        Range of the membrane capacitance, pF.
    max_rs_MOhm : float, default 40
        Highest series (access) resistance in voltage clamp, MΩ.
    command_tolerance_mV : float, default 1
        Largest difference between the recorded command and the protocol, mV.
    min_holding_pA, max_holding_pA : float, default -200, 100
        Range of the holding current, pA.
    max_noise_pA_per_pF : float, default 0.5
        Highest RMS noise of the holding current, pA/pF.
    max_drift_pA : float, default 50
        Largest change of the holding current between the first and last holding windows, pA.
    transient_ms : float, default 5
        Skipped at the start of each holding window (capacitive transients).
    min_beats : int, default 3
        Fewest complete beats (a beat followed by another) in current clamp.
    max_cl_cv : float, default 0.2
        Highest coefficient of variation of the beat intervals.
    max_alternans : float, default 0.1
        Largest even/odd APD90 difference, as a fraction of the mean APD90.
    max_mdp_mV : float, default -50
        Highest maximum diastolic (or resting) potential, mV.
    min_peak_mV : float, default 0
        Lowest mean AP peak, mV.
    threshold_mV : float, default -20
        An upward crossing of this potential is a beat.
    ap_lowpass_kHz : float, default 1
        Cut-off of the zero-phase low-pass filter applied to a recorded potential before beats
        are counted (``math.inf``: none); see :func:`recording_ap_features`.
    """

    min_seal_GOhm: float = 0.1
    min_cm_pF: float = 10.0
    max_cm_pF: float = 150.0
    max_rs_MOhm: float = 40.0
    command_tolerance_mV: float = 1.0
    min_holding_pA: float = -200.0
    max_holding_pA: float = 100.0
    max_noise_pA_per_pF: float = 0.5
    max_drift_pA: float = 50.0
    transient_ms: float = 5.0
    # the beating rules of the training cells (ViabilityRules), so a cell that passes QC is one
    # the estimators were trained on
    min_beats: int = ViabilityRules.min_beats
    max_cl_cv: float = ViabilityRules.max_cl_cv
    max_alternans: float = 0.1
    max_mdp_mV: float = ViabilityRules.max_mdp_mV
    min_peak_mV: float = ViabilityRules.min_peak_mV
    threshold_mV: float = ViabilityRules.threshold_mV
    ap_lowpass_kHz: float = 1.0

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name == "min_beats":
                object.__setattr__(self, item.name, check_integer(item.name, value, minimum=1))
            elif item.name == "ap_lowpass_kHz":
                object.__setattr__(self, item.name, _check_cutoff(item.name, value))
            else:
                object.__setattr__(self, item.name, check_number(item.name, value))
        for name in (
            "min_seal_GOhm",
            "min_cm_pF",
            "max_rs_MOhm",
            "command_tolerance_mV",
            "max_noise_pA_per_pF",
            "max_drift_pA",
            "max_cl_cv",
            "max_alternans",
        ):
            check_positive(name, getattr(self, name))
        check_number("transient_ms", self.transient_ms, minimum=0.0)
        for low, high in (("min_cm_pF", "max_cm_pF"), ("min_holding_pA", "max_holding_pA")):
            if getattr(self, low) >= getattr(self, high):
                raise ValueError(
                    f"{low} ({getattr(self, low):g}) must be below {high} ({getattr(self, high):g})"
                )

    def to_dict(self) -> dict[str, Any]:
        """The thresholds as a plain dict."""
        return asdict(self)

    @classmethod
    def for_prior(cls, prior: Prior, **overrides: Any) -> QCRules:
        """The default rules with the series-resistance limit of a prior's recording model.

        A recording whose access resistance the estimator's prior cannot produce lies outside
        what the estimator was trained on, so ``max_rs_MOhm`` becomes the prior's upper bound of
        ``recording.rs_MOhm`` (70 MΩ for ``kernik2019_real``; a prior without it keeps 40 MΩ).
        ``overrides`` set any other threshold.
        """
        rs = next((p for p in prior.parameters if p.name == "recording.rs_MOhm"), None)
        if rs is not None and rs.distribution in ("uniform", "log_uniform"):
            overrides = {"max_rs_MOhm": rs.high, **overrides}
        elif rs is not None and rs.distribution == "fixed":
            overrides = {"max_rs_MOhm": rs.value, **overrides}
        return cls(**overrides)


def qc(
    recording: Recording,
    rules: QCRules = QCRules(),  # noqa: B008 (frozen, so one shared default is safe)
    protocol: Protocol | None = None,
    *,
    measured: Mapping[str, float] | None = None,
) -> pd.DataFrame:
    """Check a recording against the quality-control rules.

    Parameters
    ----------
    recording : Recording
        A voltage-clamp or current-clamp recording.
    rules : QCRules
        The thresholds (defaults: see the module docstring).
    protocol : Protocol, optional
        The voltage-clamp protocol the recording was made with. Without it the protocol is
        rebuilt from the recorded command (:func:`~sbi_twins.recording.protocol_io.
        protocol_from_recording`); with it, the command is also checked against it.
    measured : mapping, optional
        Membrane-test values, overriding ``recording.metadata``: ``r_seal_GOhm``, ``cm_pF``,
        ``rs_MOhm``. ``cm_pF`` also converts between pA and pA/pF.

    Returns
    -------
    pandas.DataFrame
        One row per rule of :data:`QC_RULES`, columns :data:`QC_COLUMNS`: ``value`` (float, NaN
        when not measured), ``unit``, ``threshold`` (text such as ``">= 0.1"``), ``passed``
        (nullable boolean: NA when not checked) and ``reason`` (plain words). ``attrs`` holds
        ``passed`` (no rule failed), ``failed`` (names of the failed rules) and ``summary``
        (one line, see :func:`qc_summary`).

    Raises
    ------
    ValueError
        `recording` is not a Recording, `rules` not a QCRules, or `measured` holds an unknown
        key or a value that is not a positive number.
    """
    if not isinstance(recording, Recording):
        raise ValueError(f"recording must be a Recording, got {type(recording).__name__}")
    if not isinstance(rules, QCRules):
        raise ValueError(f"rules must be a QCRules, got {type(rules).__name__}")
    if protocol is not None and not isinstance(protocol, Protocol):
        raise ValueError(f"protocol must be a Protocol or None, got {type(protocol).__name__}")
    values = _measured_values(recording, measured)
    rows = _amplifier_rows(recording, rules, values)
    if recording.mode == VOLTAGE_CLAMP:
        rows += _voltage_clamp_rows(recording, rules, protocol, values.get("cm_pF"))
        rows += [_not_checked(name, "applies to current-clamp recordings") for name in _AP_RULES]
    else:
        rows += [_not_checked(name, "applies to voltage-clamp recordings") for name in _VC_RULES]
        rows += _current_clamp_rows(recording, rules)
    table = pd.DataFrame(rows, columns=list(QC_COLUMNS))
    table["value"] = table["value"].astype(float)
    table["passed"] = table["passed"].astype("boolean")
    failed = table.loc[table["passed"].eq(False).fillna(False), "rule"].tolist()
    table.attrs.update(passed=not failed, failed=failed)
    table.attrs["summary"] = qc_summary(table)
    return table


def qc_summary(table: pd.DataFrame) -> str:
    """One line for a :func:`qc` table: ``"pass (7 of 12 rules checked)"`` or why it failed."""
    checked = int(table["passed"].notna().sum())
    failing = table[table["passed"].eq(False).fillna(False)]
    if failing.empty and checked == 0:
        return "pass, but vacuously: no rule could be checked (see the reasons in the table)"
    if failing.empty:
        return f"pass ({checked} of {len(table)} rules checked)"
    return "fail: " + "; ".join(failing["reason"])


def recording_ap_features(
    recording: Recording, *, threshold_mV: float = -20.0, lowpass_kHz: float = 1.0
) -> pd.DataFrame:
    """Action-potential features of a current-clamp recording, after low-pass filtering.

    A raw patch-clamp potential sampled at 10 kHz carries about 1 mV of noise per sample: the
    slow repolarisation then crosses the beat threshold several times and every AP counts as
    several beats. A zero-phase 4-pole Bessel low-pass filter at `lowpass_kHz` (applied forwards
    and backwards, so no delay) removes that noise and keeps the upstroke, which lasts
    milliseconds: on the beating cell of ``shared/data/clark_ipsc`` it turns 40 "beats" into the
    21 APs of the trace and moves the peak by 2 mV.

    Parameters
    ----------
    recording : Recording
        A current-clamp recording (signal in mV or V).
    threshold_mV : float, default -20
        An upward crossing of this potential is a beat.
    lowpass_kHz : float, default 1
        Filter cut-off; no filter when it is at or above half the sampling rate, or ``math.inf``.

    Returns
    -------
    pandas.DataFrame
        One row: the columns of :func:`sbi_twins.physiology.ap_features`.
    """
    potential, interval = _filtered_potential(recording, lowpass_kHz)
    return ap_features(potential, interval, threshold_mV)


# --------------------------------------------------------------------------- rows

_VC_RULES = (
    "command_matches_protocol",
    "holding_current",
    "noise",
    "holding_drift",
)
_AP_RULES = (
    "beats_present",
    "cycle_length_cv",
    "alternans",
    "diastolic_potential",
    "peak_potential",
)


def _row(
    rule: str, value: float, unit: str, threshold: str, passed: bool | None, reason: str
) -> dict[str, Any]:
    return {
        "rule": rule,
        "value": value,
        "unit": unit,
        "threshold": threshold,
        "passed": passed,
        "reason": reason,
    }


def _not_checked(rule: str, why: str, unit: str = "", threshold: str = "") -> dict[str, Any]:
    return _row(rule, math.nan, unit, threshold, None, f"not checked: {why}")


def _measured_values(
    recording: Recording, measured: Mapping[str, float] | None
) -> dict[str, float]:
    values = {
        k: recording.metadata[k] for k in MEASURED_KEYS if recording.metadata.get(k) is not None
    }
    if measured is not None:
        if not isinstance(measured, Mapping):
            raise ValueError(
                f"measured must be a mapping such as {{'cm_pF': 30.0}}, got {measured!r}"
            )
        unknown = sorted(set(measured) - set(MEASURED_KEYS))
        if unknown:
            raise ValueError(
                f"measured has unknown key(s) {', '.join(map(repr, unknown))}; known: "
                f"{', '.join(MEASURED_KEYS)}"
            )
        values.update({k: v for k, v in measured.items() if v is not None})
    return {k: check_positive(f"measured {k}", v) for k, v in values.items()}


def _amplifier_rows(
    recording: Recording, rules: QCRules, values: dict[str, float]
) -> list[dict[str, Any]]:
    rows = []
    seal = values.get("r_seal_GOhm")
    threshold = f">= {rules.min_seal_GOhm:g}"
    if seal is None:
        rows.append(
            _not_checked(
                "seal_resistance",
                "no r_seal_GOhm in the recording's metadata (pass measured={'r_seal_GOhm': ...})",
                "GOhm",
                threshold,
            )
        )
    else:
        ok = seal >= rules.min_seal_GOhm
        why = f"seal resistance {seal:.3g} GΩ" + (
            "" if ok else f" is below {rules.min_seal_GOhm:g} GΩ: the seal leaks"
        )
        rows.append(_row("seal_resistance", seal, "GOhm", threshold, ok, why))
    cm = values.get("cm_pF")
    threshold = f"{rules.min_cm_pF:g} to {rules.max_cm_pF:g}"
    if cm is None:
        rows.append(
            _not_checked(
                "membrane_capacitance",
                "no cm_pF in the recording's metadata (pass measured={'cm_pF': ...})",
                "pF",
                threshold,
            )
        )
    else:
        ok = rules.min_cm_pF <= cm <= rules.max_cm_pF
        why = (
            f"membrane capacitance {cm:.3g} pF"
            if ok
            else f"membrane capacitance {cm:.3g} pF is outside {threshold} pF: "
            + ("not a whole cardiomyocyte" if cm < rules.min_cm_pF else "probably coupled cells")
        )
        rows.append(_row("membrane_capacitance", cm, "pF", threshold, ok, why))
    rs = values.get("rs_MOhm")
    threshold = f"<= {rules.max_rs_MOhm:g}"
    if recording.mode == CURRENT_CLAMP:
        rows.append(
            _not_checked(
                "series_resistance",
                "no current flows through Rs in current clamp at rest",
                "MOhm",
                threshold,
            )
        )
    elif rs is None:
        rows.append(
            _not_checked(
                "series_resistance",
                "no rs_MOhm in the recording's metadata (pass measured={'rs_MOhm': ...})",
                "MOhm",
                threshold,
            )
        )
    else:
        ok = rs <= rules.max_rs_MOhm
        why = f"series resistance {rs:.3g} MΩ" + (
            "" if ok else f" is above {rules.max_rs_MOhm:g} MΩ: the clamp lags the command"
        )
        rows.append(_row("series_resistance", rs, "MOhm", threshold, ok, why))
    return rows


# --------------------------------------------------------------------------- voltage clamp


def _voltage_clamp_rows(
    recording: Recording, rules: QCRules, protocol: Protocol | None, cm_pF: float | None
) -> list[dict[str, Any]]:
    rows = [_command_row(recording, rules, protocol)]
    if protocol is None:
        try:
            protocol = protocol_from_recording(recording, "recorded")
        except ValueError as error:
            why = f"no protocol given and none could be rebuilt from the command ({error})"
            return rows + [_not_checked(name, why) for name in _VC_RULES[1:]]
    windows = _holding_windows(recording, protocol, rules.transient_ms)
    if not windows:
        why = (
            f"the protocol has no step at its holding level ({protocol.holding_mV:g} mV) "
            f"longer than {rules.transient_ms + _MIN_WINDOW_MS:g} ms within the recording"
        )
        return rows + [_not_checked(name, why) for name in _VC_RULES[1:]]
    in_pA = _current(recording, "pA", cm_pF)
    in_density = _current(recording, "pA/pF", cm_pF)
    level = f"{protocol.holding_mV:g} mV"
    no_cm = "needs the membrane capacitance to convert {} (pass measured={{'cm_pF': ...}})"
    threshold = f"{rules.min_holding_pA:g} to {rules.max_holding_pA:g}"
    if in_pA is None:
        rows.append(_not_checked("holding_current", no_cm.format("pA/pF to pA"), "pA", threshold))
    else:
        held = float(np.mean(in_pA[windows[0]]))
        ok = rules.min_holding_pA <= held <= rules.max_holding_pA
        why = f"holding current {held:.3g} pA at {level}" + (
            "" if ok else f" is outside {threshold} pA: a leaky seal or a damaged cell"
        )
        rows.append(_row("holding_current", held, "pA", threshold, ok, why))
    threshold = f"<= {rules.max_noise_pA_per_pF:g}"
    if in_density is None:
        rows.append(_not_checked("noise", no_cm.format("pA to pA/pF"), "pA/pF", threshold))
    else:
        noise = _noise(in_density[windows[0]])
        ok = noise <= rules.max_noise_pA_per_pF
        why = f"noise {noise:.3g} pA/pF RMS" + (
            "" if ok else f" is above {rules.max_noise_pA_per_pF:g} pA/pF RMS"
        )
        rows.append(_row("noise", noise, "pA/pF", threshold, ok, why))
    threshold = f"<= {rules.max_drift_pA:g} (absolute)"
    if in_pA is None:
        rows.append(_not_checked("holding_drift", no_cm.format("pA/pF to pA"), "pA", threshold))
    else:
        drift, span = _drift(in_pA, windows, recording.sample_interval_ms)
        ok = abs(drift) <= rules.max_drift_pA
        why = f"holding current changed by {drift:+.3g} pA over {span / 1e3:.3g} s" + (
            ""
            if ok
            else f", more than {rules.max_drift_pA:g} pA: the seal or the cell is not stable"
        )
        rows.append(_row("holding_drift", drift, "pA", threshold, ok, why))
    return rows


def _command_row(recording: Recording, rules: QCRules, protocol: Protocol | None) -> dict[str, Any]:
    threshold = f"0 (tolerance {rules.command_tolerance_mV:g} mV)"
    if protocol is None:
        return _not_checked("command_matches_protocol", "no protocol given", "segments", threshold)
    if recording.command_mV is None:
        return _not_checked(
            "command_matches_protocol", "the recording holds no command", "segments", threshold
        )
    differences = command_differences(recording, protocol, rules.command_tolerance_mV)
    if not differences:
        return _row(
            "command_matches_protocol",
            0.0,
            "segments",
            threshold,
            True,
            f"command is protocol {protocol.name!r}",
        )
    return _row(
        "command_matches_protocol",
        float(len(differences)),
        "segments",
        threshold,
        False,
        f"command differs from protocol {protocol.name!r} in {len(differences)} segment(s), "
        f"first {differences[0]}",
    )


def _holding_windows(recording: Recording, protocol: Protocol, transient_ms: float) -> list[slice]:
    """Sample ranges of the steps at the holding level, after their transient, in order."""
    t = recording.time_ms
    edges = protocol.edges_ms
    windows = []
    for k, segment in enumerate(protocol.segments):
        if (
            segment.kind != "step"
            or abs(segment.v_start_mV - protocol.holding_mV) > _HOLDING_MATCH_MV
        ):
            continue
        start, stop = edges[k] + transient_ms, min(edges[k + 1], t[-1])
        if stop - start >= _MIN_WINDOW_MS:
            windows.append(slice(*np.searchsorted(t, [start, stop])))
    return windows


def _current(recording: Recording, unit: str, cm_pF: float | None) -> np.ndarray | None:
    try:
        return recording.to_unit(unit, cm_pF=cm_pF).signal
    except ValueError:  # no capacitance to convert between pA and pA/pF
        return None


def _noise(current: np.ndarray) -> float:
    """RMS about the least-squares line: slow drift is not noise."""
    x = np.arange(current.size, dtype=float)
    slope, intercept = np.polyfit(x, current, 1)
    return float(np.std(current - (intercept + slope * x)))


def _drift(current: np.ndarray, windows: list[slice], interval_ms: float) -> tuple[float, float]:
    """Change of the mean holding current, and the time (ms) between the two means."""
    if len(windows) >= 2:
        first, last = windows[0], windows[-1]
    else:
        third = (windows[0].stop - windows[0].start) // 3
        first = slice(windows[0].start, windows[0].start + third)
        last = slice(windows[0].stop - third, windows[0].stop)
    span = ((last.start + last.stop) - (first.start + first.stop)) / 2 * interval_ms
    return float(np.mean(current[last]) - np.mean(current[first])), span


# --------------------------------------------------------------------------- current clamp


def _filtered_potential(recording: Recording, lowpass_kHz: float) -> tuple[np.ndarray, float]:
    if not isinstance(recording, Recording) or recording.mode != CURRENT_CLAMP:
        raise ValueError(
            "action-potential features need a current-clamp recording (a potential in mV or V), "
            f"got {recording!r}"
        )
    _check_cutoff("lowpass_kHz", lowpass_kHz)
    potential = recording.to_unit("mV").signal
    interval = recording.sample_interval_ms
    nyquist_kHz = 0.5 / interval
    if lowpass_kHz >= nyquist_kHz:
        return potential, interval
    sos = signal.bessel(4, lowpass_kHz, fs=1.0 / interval, norm="mag", output="sos")
    if potential.size <= 3 * (2 * len(sos) + 1):  # too short to pad for the two passes
        return potential, interval
    return signal.sosfiltfilt(sos, potential), interval


def _current_clamp_rows(recording: Recording, rules: QCRules) -> list[dict[str, Any]]:
    potential, interval = _filtered_potential(recording, rules.ap_lowpass_kHz)
    features = ap_features(potential, interval, rules.threshold_mV).iloc[0]
    beats = int(features["n_beats"])
    complete = max(beats - 1, 0)
    seconds = recording.time_ms[-1] / 1e3
    rows = []
    threshold = f">= {rules.min_beats}"
    if complete >= rules.min_beats:
        why = f"{beats} beats in {seconds:.3g} s (CL {features['CL']:.0f} ms)"
    elif beats == 0:
        why = (
            f"quiescent: no action potential in {seconds:.3g} s (the potential never rises "
            f"through {rules.threshold_mV:g} mV; it stays between {np.min(potential):.0f} and "
            f"{np.max(potential):.0f} mV)"
        )
    else:
        why = (
            f"too few beats: {beats} upstroke(s) in {seconds:.3g} s, {rules.min_beats + 1} needed "
            f"({rules.min_beats} complete beats)"
        )
    rows.append(
        _row(
            "beats_present",
            float(complete),
            "complete beats",
            threshold,
            complete >= rules.min_beats,
            why,
        )
    )
    rows.append(_cycle_length_row(potential, interval, rules))
    rows.append(_alternans_row(potential, interval, rules))
    threshold = f"<= {rules.max_mdp_mV:g}"
    if complete >= 1:
        mdp, what = float(features["MDP"]), "maximum diastolic potential"
    else:
        mdp, what = float(np.median(potential)), "resting potential (median, no complete beat)"
    ok = mdp <= rules.max_mdp_mV
    why = f"{what} {mdp:.3g} mV" + (
        ""
        if ok
        else f" is above {rules.max_mdp_mV:g} mV: a depolarised cell, often a sign of "
        "seal leak (Clark et al. 2023)"
    )
    rows.append(_row("diastolic_potential", mdp, "mV", threshold, ok, why))
    threshold = f">= {rules.min_peak_mV:g}"
    if complete >= 1:
        peak = float(features["peak"])
        ok = peak >= rules.min_peak_mV
        why = f"mean AP peak {peak:.3g} mV" + (
            "" if ok else f" is below {rules.min_peak_mV:g} mV: the APs do not overshoot"
        )
        rows.append(_row("peak_potential", peak, "mV", threshold, ok, why))
    else:
        rows.append(_not_checked("peak_potential", "no complete beat", "mV", threshold))
    return rows


def _cycle_length_row(potential: np.ndarray, interval: float, rules: QCRules) -> dict[str, Any]:
    threshold = f"<= {rules.max_cl_cv:g}"
    intervals = np.diff(upstroke_times(potential, interval, rules.threshold_mV))
    if intervals.size < 2:
        return _not_checked("cycle_length_cv", "fewer than 3 beats", "", threshold)
    cv = float(np.std(intervals) / np.mean(intervals))
    ok = cv <= rules.max_cl_cv
    why = f"beat intervals vary by {cv:.1%} (CV)" + (
        "" if ok else f", more than {rules.max_cl_cv:.0%}: an irregular rhythm"
    )
    return _row("cycle_length_cv", cv, "", threshold, ok, why)


def _alternans_row(potential: np.ndarray, interval: float, rules: QCRules) -> dict[str, Any]:
    threshold = f"<= {rules.max_alternans:g}"
    apd90 = _beat_apd90(potential, interval, rules.threshold_mV)
    apd90 = apd90[np.isfinite(apd90)]
    if apd90.size < 4:
        return _not_checked("alternans", "fewer than 4 complete beats with an APD90", "", threshold)
    even, odd = float(np.mean(apd90[0::2])), float(np.mean(apd90[1::2]))
    value = abs(even - odd) / float(np.mean(apd90))
    ok = value <= rules.max_alternans
    why = f"APD90 of even and odd beats {even:.0f} and {odd:.0f} ms ({value:.1%} apart)" + (
        "" if ok else f": alternans (more than {rules.max_alternans:.0%})"
    )
    return _row("alternans", value, "", threshold, ok, why)


def _beat_apd90(potential: np.ndarray, interval: float, threshold_mV: float) -> np.ndarray:
    """APD90 of each complete beat, from :func:`ap_features` on the stretch holding just it.

    The stretch runs from the previous beat's crossing (where ap_features starts its upstroke
    search) to the next beat's crossing, so each beat is measured exactly as in the whole trace.
    """
    crossings = np.flatnonzero(upward_crossings(potential, threshold_mV)) + 1
    apd = [
        ap_features(
            potential[(crossings[k - 1] if k else 0) : crossings[k + 1] + 1], interval, threshold_mV
        )["APD90"].iloc[0]
        for k in range(crossings.size - 1)
    ]
    return np.asarray(apd, dtype=float)
