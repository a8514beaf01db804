"""Tests for sbi_twins.physiology.features: AP features on synthetic traces with known answers
and on the Kernik 2019 reference traces.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sbi_twins.physiology.features import FEATURE_COLUMNS, ap_features, upstroke_times

DATA = Path(__file__).parent / "data"
REF_FILES = sorted(DATA.glob("kernik2019_ref_*.npz"))
DT = 0.5


def _logistic_upstroke(
    t: np.ndarray, u: float, v_low: float, v_peak: float, tau: float
) -> np.ndarray:
    """Sigmoid from ``v_low`` to exactly ``v_peak`` at ``u + 10 tau``; max dV/dt at ``u``."""
    x = np.clip((t - u) / tau, -10.0, 10.0)
    sig = 1.0 / (1.0 + np.exp(-x))
    return v_low + (v_peak - v_low) * sig / (1.0 / (1.0 + np.exp(-10.0)))


def synthetic_trace(
    t: np.ndarray,
    upstrokes: list[float],
    peaks: list[float],
    mdps: list[float],
    *,
    v_start: float = -80.0,
    v_foot: float = -60.0,
    tau: float = 0.5,
) -> np.ndarray:
    """Beats with a sigmoid upstroke at each time in ``upstrokes`` and piecewise-linear rest.

    Beat k: sigmoid from ``v_foot`` to ``peaks[k]`` (reached at u + 5 ms), linear to
    ``peaks[k] - 20`` at u + 200 ms, linear to ``mdps[k]`` at u + 400 ms (the minimum), then
    linear diastolic depolarisation to ``v_foot`` at the next upstroke - 5 ms.
    """
    knots_t, knots_v = [0.0], [v_start]
    for k, u in enumerate(upstrokes):
        knots_t += [u - 5.0, u + 5.0, u + 200.0, u + 400.0]
        knots_v += [v_foot, peaks[k], peaks[k] - 20.0, mdps[k]]
    v = np.interp(t, knots_t, knots_v)
    for k, u in enumerate(upstrokes):
        window = (t >= u - 5.0) & (t <= u + 5.0)
        v[window] = _logistic_upstroke(t[window], u, v_foot, peaks[k], tau)
    return v


def expected_apd(peak: float, mdp: float, x: float) -> float:
    """APDx of a synthetic beat: the level lies on the linear piece u+200 -> u+400 ms."""
    level = peak - x * (peak - mdp)
    return 200.0 + 200.0 * ((peak - 20.0) - level) / ((peak - 20.0) - mdp)


# -- synthetic traces with known features -----------------------------------------------------


def test_known_features_of_piecewise_aps():
    t = np.arange(0, 3800 + DT / 2, DT)
    ups = [500.0, 1500.0, 2500.0, 3500.0]
    peaks = [30.0, 20.0, 40.0, 35.0]
    mdps = [-80.0, -70.0, -90.0, -75.0]
    v = synthetic_trace(t, ups, peaks, mdps)
    f = ap_features(v, DT).iloc[0]

    assert list(ap_features(v, DT).columns) == list(FEATURE_COLUMNS)
    assert f.n_beats == 4
    assert f.first_upstroke_ms == pytest.approx(500.0, abs=1e-9)
    assert f.CL == pytest.approx(1000.0, abs=1e-9)
    # Peak, MDP and APD: complete beats only (the 4th is cut off 300 ms after its upstroke).
    assert f.peak == pytest.approx(np.mean(peaks[:3]), abs=1e-9)
    assert f.MDP == pytest.approx(np.mean(mdps[:3]), abs=1e-9)
    for x, col in ((0.9, "APD90"), (0.5, "APD50")):
        want = np.mean([expected_apd(p, m, x) for p, m in zip(peaks[:3], mdps[:3], strict=True)])
        assert f[col] == pytest.approx(want, abs=1e-6), col


@pytest.mark.parametrize("shift", [0.05, 0.1, 0.2, 0.25, 0.3, 0.4, 0.45])
def test_upstroke_time_has_subsample_precision(shift):
    """The sub-sample refinement: without it the error would reach a quarter of a sample."""
    t = np.arange(0, 2000, DT)
    ups = [500.0 + shift, 1400.0 + shift]
    v = synthetic_trace(t, ups, [30.0, 30.0], [-80.0, -80.0])
    np.testing.assert_allclose(upstroke_times(v, DT), ups, atol=0.02)


def test_upstroke_time_is_at_max_slope_not_at_threshold():
    """A slow foot then a fast rise: the upstroke is where the rise is fastest."""
    t = np.arange(0, 1000, 0.1)
    v = np.interp(t, [0, 400, 450, 452, 700], [-80, -30, -10, 40, -80])  # fastest: 450-452 ms
    (u,) = upstroke_times(v, 0.1)
    assert 450.0 <= u <= 452.0


def test_one_beat_then_arrest_gives_no_apd():
    """Like ref_07: one AP that never repolarises (arrest at -28.7 mV) must not yield an APD."""
    t = np.arange(0, 10_000 + DT / 2, DT)
    v = np.interp(t, [0, 120, 125, 130, 400, 2000, 10_000], [-75, -60, 30, 31, -10, -28.7, -28.7])
    f = ap_features(v, DT).iloc[0]
    assert f.n_beats == 1
    assert 120.0 < f.first_upstroke_ms < 130.0
    for col in ("CL", "APD90", "APD50", "MDP", "peak"):
        assert np.isnan(f[col]), col


def test_final_unrepolarised_beat_is_excluded():
    """Two regular beats, then a third that arrests depolarised: APD from the complete beats."""
    t = np.arange(0, 5000, DT)
    v = synthetic_trace(t, [500.0, 1500.0], [30.0, 30.0], [-80.0, -80.0])
    # Replace the repolarisation of beat 2 by an arrest at -25 mV.
    v = np.where(t >= 1505.0, np.interp(t, [1505.0, 1700.0], [30.0, -25.0]), v)
    f = ap_features(v, DT).iloc[0]
    assert f.n_beats == 2
    assert f.CL == pytest.approx(1000.0, abs=1e-9)
    assert f.APD90 == pytest.approx(expected_apd(30.0, -80.0, 0.9), abs=1e-6)
    assert f.MDP == pytest.approx(-80.0)


def test_trace_starting_above_threshold_is_not_a_beat():
    t = np.arange(0, 2000, DT)
    v = np.interp(t, [0, 300, 500, 2000], [20, 20, -80, -75])  # an AP already under way at t = 0
    f = ap_features(v, DT).iloc[0]
    assert f.n_beats == 0
    assert f.drop("n_beats").isna().all()
    assert upstroke_times(v, DT).size == 0


def test_quiescent_and_nonfinite_rows_in_a_batch():
    t = np.arange(0, 3000, DT)
    beating = synthetic_trace(t, [500.0, 1500.0, 2500.0], [30.0] * 3, [-80.0] * 3)
    quiescent = np.full_like(t, -79.0)
    with_nan = beating.copy()
    with_nan[1234] = np.nan
    with_inf = beating.copy()
    with_inf[10] = np.inf
    table = ap_features(np.stack([beating, quiescent, with_nan, with_inf, beating]), DT)

    assert table.shape == (5, len(FEATURE_COLUMNS))
    pd.testing.assert_series_equal(table.iloc[0], table.iloc[4], check_names=False)
    single = ap_features(beating, DT).iloc[0]
    pd.testing.assert_series_equal(table.iloc[0], single, check_names=False)
    assert table.loc[1, "n_beats"] == 0 and table.loc[1].drop("n_beats").isna().all()
    assert table.loc[2].isna().all() and table.loc[3].isna().all()
    assert upstroke_times(with_nan, DT).size == 0


def test_all_nan_input_and_empty_batch():
    assert ap_features(np.full((3, 100), np.nan), DT).isna().all().all()
    assert ap_features(np.empty((0, 100)), DT).shape == (0, len(FEATURE_COLUMNS))


def test_small_oscillation_around_threshold_is_reported_as_such():
    """An arrested cell oscillating around -20 mV counts beats, but with a tiny amplitude, so a
    viability filter on peak and MDP can reject it.
    """
    t = np.arange(0, 5000, DT)
    v = -20.0 + 3.0 * np.sin(2 * np.pi * t / 500.0 + 0.3)
    f = ap_features(v, DT).iloc[0]
    assert f.n_beats == 10
    assert f.CL == pytest.approx(500.0, abs=0.01)
    assert f.peak == pytest.approx(-17.0, abs=0.01)
    assert f.MDP == pytest.approx(-23.0, abs=0.01)


def test_threshold_argument():
    t = np.arange(0, 3000, DT)
    v = synthetic_trace(t, [500.0, 1500.0, 2500.0], [30.0] * 3, [-80.0] * 3)
    assert ap_features(v, DT, threshold_mV=35.0).n_beats.iloc[0] == 0
    assert ap_features(v, DT, threshold_mV=0.0).n_beats.iloc[0] == 3


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: ap_features(np.zeros((2, 2, 10)), DT), "shape"),
        (lambda: ap_features(np.zeros(10), 0.0), "sample_interval_ms"),
        (lambda: ap_features(np.zeros(10), -0.5), "sample_interval_ms"),
        (lambda: ap_features(np.zeros(10), float("nan")), "sample_interval_ms"),
        (lambda: ap_features(np.zeros(10), DT, threshold_mV=float("nan")), "threshold_mV"),
        (lambda: upstroke_times(np.zeros((2, 10)), DT), "shape"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# -- the reference traces ------------------------------------------------------------------------


@pytest.mark.parametrize("path", REF_FILES, ids=lambda p: p.stem)
def test_reference_features_match_summary(path):
    """Our features of the 0.5 ms reference traces agree with the features the reference
    generator computed from the solver's dense output (summary.json).
    """
    ref = np.load(path)
    summary = dict(zip(ref["ref_feature_names"].tolist(), ref["ref_ap_features"], strict=True))
    f = ap_features(ref["ap_V"], float(ref["ap_dt_ms"])).iloc[0]
    ups = upstroke_times(ref["ap_V"], float(ref["ap_dt_ms"]))

    # summary.json counts complete beats (see the sbi_twins.physiology.features docstring).
    assert f.n_beats == summary["n_beats"] + 1 == ups.size
    if summary["n_beats"] == 0:
        assert f.drop(["n_beats", "first_upstroke_ms"]).isna().all()
        return
    assert f.APD90 == pytest.approx(summary["APD90"], abs=0.1)
    assert f.APD50 == pytest.approx(summary["APD50"], abs=0.1)
    assert f.MDP == pytest.approx(summary["MDP"], abs=0.01)
    assert f.peak == pytest.approx(summary["peak"], abs=0.05)
    # Their CL: mean interval between the complete beats only.
    assert np.mean(np.diff(ups[:-1])) == pytest.approx(summary["CL"], abs=0.1)
    assert f.CL == pytest.approx(np.mean(np.diff(ups)), abs=1e-9)
