"""Tests for sbi_twins.data.windows: window layout, averaging, serialisation and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sbi_twins import Protocol, Segment, load_prior, load_protocol
from sbi_twins.data.windows import STORAGE_DTYPE, ObservationScheme, ObservationSettings

DATA = Path(__file__).parent / "data"
REF_FILES = sorted(DATA.glob("kernik2019_ref_0*.npz"))

PEAK_REL_TOL = 0.02  # INa peaks kept within 2 %
INA_MIN_MV = -60.0  # INa peaks are looked for where the command is at least this


@pytest.fixture(scope="module")
def clark() -> Protocol:
    return load_protocol("clark2022")


@pytest.fixture(scope="module")
def clark_scheme(clark) -> ObservationScheme:
    return ObservationScheme.for_protocol(clark, 0.1)


@pytest.fixture(scope="module")
def odd_protocol() -> Protocol:
    """Edges off the 0.5 ms grid, a 0.2 ms pulse that holds no sample, a ramp and a sine."""
    return Protocol(
        "odd",
        -80.0,
        (
            Segment.step(10.25, -80.0),
            Segment.step(0.2, 0.0),  # [10.25, 10.45): between samples 10.0 and 10.5
            Segment.step(20.05, -80.0),
            Segment.sine(40.0, -40.0, 20.0, 25.0),
            Segment.ramp(19.5, -40.0, 10.0),
        ),
    )


def segment_of_samples(protocol: Protocol, times: np.ndarray) -> np.ndarray:
    """Index of the segment each sample belongs to (right-continuous; the end joins the last)."""
    idx = np.searchsorted(protocol.edges_ms[:-1], times + 1e-9, side="right") - 1
    return np.minimum(idx, len(protocol.segments) - 1)


# --- INa peaks ---------------------------------------------------------------------------------


def test_reference_files_present():
    assert len(REF_FILES) == 5


@pytest.mark.parametrize("path", REF_FILES, ids=lambda p: p.stem)
def test_reference_ina_peaks_kept(path):
    ref = np.load(path)
    proto = load_protocol("kernik_steps")  # the reference traces' protocol, every 0.1 ms
    times = proto.times(0.1)
    np.testing.assert_allclose(times, ref["vc_t_ms"], rtol=0, atol=1e-9)
    current = ref["vc_i_ion"]
    scheme = ObservationScheme.for_protocol(proto, 0.1)
    obs = scheme.apply(current)

    sample_seg = segment_of_samples(proto, times)
    window_seg = sample_seg[scheme.starts]
    checked = 0
    for k, seg in enumerate(proto.segments):
        if seg.v_start_mV < -40.0:  # INa fires on the steps to -40 mV and above
            continue
        full, kept = current[sample_seg == k].min(), obs[window_seg == k].min()
        if full < -10.0:  # a peak worth the name
            checked += 1
            assert abs(kept - full) <= PEAK_REL_TOL * abs(full), (seg, full, kept)
    assert checked >= 4
    assert abs(obs.min() - current.min()) <= PEAK_REL_TOL * abs(current.min())


def test_simulated_ina_peaks_and_storage_dtype(kernik, clark, clark_scheme):
    params = load_prior("kernik2019_pm40").sample(3, seed=0)
    params = params[[c for c in params.columns if c in kernik.parameter_names]]  # ideal clamp
    current = kernik.simulate_vc(clark, params, 0.1)
    obs = clark_scheme.apply(current)
    assert obs.dtype == np.float32 and obs.shape == (3, len(clark_scheme))

    ina_windows = clark.voltage(clark_scheme.times_ms) >= INA_MIN_MV
    ina_samples = np.repeat(ina_windows, clark_scheme.stops - clark_scheme.starts)
    full = current[:, ina_samples].min(axis=1)
    kept = obs[:, ina_windows].min(axis=1)
    np.testing.assert_array_less(np.abs(kept - full), PEAK_REL_TOL * np.abs(full))

    # The STORAGE_DTYPE comment: float32 keeps the INa peak to ~1e-7 and every value to well
    # under 1e-4 pA/pF; float16 would keep the peak within 2^-11 (< 1e-3) too, but its rounding
    # errors reach a sizeable fraction of the 0.1 pA/pF noise RMS of a good recording.
    counts = clark_scheme.stops - clark_scheme.starts
    exact = np.add.reduceat(current, clark_scheme.starts, axis=1) / counts
    rows = np.arange(exact.shape[0])
    peak = np.where(ina_windows, exact, np.inf).argmin(axis=1)
    assert STORAGE_DTYPE == np.float32
    for dtype, peak_bound, max_bound in ((STORAGE_DTYPE, 1e-6, 1e-4), (np.float16, 2.0**-11, 1.0)):
        err = np.abs(exact.astype(dtype).astype(float) - exact)
        assert (err[rows, peak] / np.abs(exact[rows, peak])).max() <= peak_bound, dtype
        assert err.max() < max_bound, dtype
        if dtype == np.float16:
            assert err.max() > 0.01


# --- layout ------------------------------------------------------------------------------------


def test_clark2022_length(clark_scheme):
    assert 1000 <= len(clark_scheme) <= 2000
    assert clark_scheme.n_samples == 114552
    assert clark_scheme.times_ms.shape == (len(clark_scheme),)
    assert clark_scheme.starts.dtype == np.int64 and clark_scheme.stops.dtype == np.int64


@pytest.mark.parametrize("case", ["clark2022", "odd"])
def test_windows_tile_and_respect_edges(case, clark, odd_protocol):
    proto, si = (clark, 0.1) if case == "clark2022" else (odd_protocol, 0.5)
    scheme = ObservationScheme.for_protocol(proto, si)
    times = proto.times(si)
    starts, stops = scheme.starts, scheme.stops
    assert starts[0] == 0 and stops[-1] == times.size
    assert np.all(stops > starts)
    np.testing.assert_array_equal(starts[1:], stops[:-1])  # sorted, no gap, no overlap
    seg = segment_of_samples(proto, times)
    np.testing.assert_array_equal(seg[starts], seg[stops - 1])  # no window crosses an edge
    # Hence no window holds a jump: within windows the command only moves along ramps/sines.
    v = proto.voltage(times)
    inside = np.ones(times.size - 1, bool)
    inside[stops[:-1] - 1] = False  # pairs (i, i + 1) that straddle a window boundary
    assert np.abs(np.diff(v))[inside].max() < 4.0 * si  # steepest: the sine, 3.1 mV/ms
    assert np.all(np.diff(scheme.times_ms) > 0)


def test_dense_after_jumps_and_sub_sample_pulse(odd_protocol):
    scheme = ObservationScheme.for_protocol(odd_protocol, 0.5, dense_ms=2.0)
    widths = dict(
        zip(scheme.starts.tolist(), (scheme.stops - scheme.starts).tolist(), strict=True)
    )
    # The 0.2 ms pulse holds no sample; the step after it (from sample 21 = 10.5 ms) must still
    # start densely, as after a jump.
    assert [widths[i] for i in range(21, 25)] == [1, 1, 1, 1]
    # The first step continues the holding potential: it starts at ramp_window_ms (2.5 ms).
    assert widths[0] == 5


def test_long_plateau_windows_capped(clark):
    scheme = ObservationScheme.for_protocol(clark, 0.1, max_window_ms=10.0, ramp_window_ms=1.0)
    widths_ms = (scheme.stops - scheme.starts) * 0.1
    # Caps hold up to the merged remainder (< half a window) at the end of a segment.
    assert widths_ms.max() < 1.5 * 10.0 + 1e-9
    assert widths_ms.min() == pytest.approx(0.1)


# --- apply -------------------------------------------------------------------------------------


def test_mean_semantics_match_slow_loop(clark_scheme):
    x = np.random.default_rng(0).normal(size=(2, clark_scheme.n_samples)) * 50
    obs = clark_scheme.apply(x)
    slow = np.array(
        [
            [row[a:b].mean() for a, b in zip(clark_scheme.starts, clark_scheme.stops, strict=True)]
            for row in x
        ]
    )
    np.testing.assert_allclose(obs, slow, rtol=1e-6, atol=1e-5)


def test_1d_2d_and_float32_agree(clark_scheme):
    x = np.random.default_rng(1).normal(size=(3, clark_scheme.n_samples))
    batch = clark_scheme.apply(x)
    assert batch.shape == (3, len(clark_scheme)) and batch.dtype == np.float32
    for n in range(3):
        one = clark_scheme.apply(x[n])
        assert one.shape == (len(clark_scheme),) and one.dtype == np.float32
        np.testing.assert_array_equal(one, batch[n])
    x32 = x.astype(np.float32)
    np.testing.assert_allclose(clark_scheme.apply(x32), batch, rtol=0, atol=1e-6)


@pytest.mark.parametrize("value", [2.5, -3.7, 0.0])
def test_constant_trace_maps_to_constant(clark_scheme, value):
    obs = clark_scheme.apply(np.full(clark_scheme.n_samples, value))
    np.testing.assert_array_equal(obs, np.float32(value))


# --- serialisation -----------------------------------------------------------------------------


@pytest.mark.parametrize("settings", [{}, {"growth": 1.5, "max_window_ms": 100, "dense_ms": 0}])
def test_dict_round_trip(clark, settings):
    scheme = ObservationScheme.for_protocol(clark, 0.1, **settings)
    d = json.loads(json.dumps(scheme.to_dict()))
    assert d["length"] == len(scheme) and d["sample_interval_ms"] == 0.1
    assert d["protocol_hash"] == clark.content_hash()
    back = ObservationScheme.from_dict(d, clark)
    np.testing.assert_array_equal(back.starts, scheme.starts)
    np.testing.assert_array_equal(back.stops, scheme.stops)
    assert back.settings == scheme.settings
    assert back.content_hash() == scheme.content_hash()
    assert len(scheme.content_hash()) == 16


def test_content_hash_depends_on_settings_and_interval(clark):
    hashes = {
        ObservationScheme.for_protocol(clark, 0.1).content_hash(),
        ObservationScheme.for_protocol(clark, 0.1, growth=1.3).content_hash(),
        ObservationScheme.for_protocol(clark, 0.05).content_hash(),
    }
    assert len(hashes) == 3
    # Settings given as ints hash like the same floats.
    assert (
        ObservationScheme.for_protocol(clark, 0.1, max_window_ms=40).content_hash()
        == ObservationScheme.for_protocol(clark, 0.1).content_hash()
    )


def test_from_dict_refuses_other_protocol(clark_scheme):
    with pytest.raises(ValueError, match=r"protocol mismatch.*'clark2022'.*'kernik_steps'"):
        ObservationScheme.from_dict(clark_scheme.to_dict(), load_protocol("kernik_steps"))


def test_from_dict_detects_changed_layout(clark, clark_scheme):
    d = clark_scheme.to_dict()
    d["length"] += 1
    d["windows_hash"] = "0" * 16
    with pytest.raises(ValueError, match=r"length: stored \d+, rebuilt \d+.*windows_hash"):
        ObservationScheme.from_dict(d, clark)


def test_from_dict_bad_dicts(clark, clark_scheme):
    d = clark_scheme.to_dict()
    del d["settings"]
    with pytest.raises(ValueError, match="lacks settings"):
        ObservationScheme.from_dict(d, clark)
    d = clark_scheme.to_dict()
    d["settings"]["grwoth"] = 1.2
    with pytest.raises(ValueError, match="unknown observation setting.*grwoth"):
        ObservationScheme.from_dict(d, clark)


# --- bad input ---------------------------------------------------------------------------------


def test_wrong_length_message(clark_scheme):
    with pytest.raises(
        ValueError,
        match=r"100001 samples, but .*'clark2022'.*expects 114552.*"
        r"resample .*protocol\.times\(0\.1\)",
    ):
        clark_scheme.apply(np.zeros((2, 100001)))
    with pytest.raises(ValueError, match="one short: the grid includes the end point"):
        clark_scheme.apply(np.zeros(114551))
    with pytest.raises(ValueError, match=r"shape \(T,\) or \(N, T\)"):
        clark_scheme.apply(np.zeros((1, 1, 114552)))


def test_nonfinite_message_and_propagation(clark_scheme):
    x = np.random.default_rng(2).normal(size=(3, clark_scheme.n_samples)).astype(np.float32)
    x[1, [5, 70000]] = np.nan
    x[2, 9] = np.inf
    with pytest.raises(
        ValueError,
        match=r"3 non-finite sample\(s\) .* in 2 of 3 rows, first in "
        r"row 1 at t = 0.5 ms; .*allow_nonfinite=True",
    ):
        clark_scheme.apply(x)
    with pytest.raises(
        ValueError,
        match=r"the trace contains 1 non-finite sample\(s\) .* "
        r"first at t = 0.9 ms",
    ):
        clark_scheme.apply(x[2])
    obs = clark_scheme.apply(x, allow_nonfinite=True)
    assert np.isnan(obs[1:]).all()
    np.testing.assert_array_equal(obs[0], clark_scheme.apply(x[0]))
    assert np.isnan(clark_scheme.apply(x[1], allow_nonfinite=True)).all()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"growth": 0.9}, "growth must be a finite number >= 1"),
        ({"max_window_ms": 0}, "max_window_ms must be a finite number > 0"),
        ({"ramp_window_ms": -1.0}, "ramp_window_ms must be a finite number > 0"),
        ({"dense_ms": -0.5}, "dense_ms must be a finite number >= 0"),
        ({"growth": float("nan")}, "growth must be a finite number >= 1"),
        ({"dense_ms": "1"}, "dense_ms must be a finite number"),
        ({"dense_ms": True}, "dense_ms must be a finite number"),
        ({"dens_ms": 1.0}, "unknown observation setting.*dens_ms.*valid: dense_ms"),
    ],
)
def test_bad_settings(clark, settings, message):
    with pytest.raises(ValueError, match=message):
        ObservationScheme.for_protocol(clark, 0.1, **settings)


def test_bad_sample_interval(clark):
    with pytest.raises(ValueError, match="must be a whole multiple"):
        ObservationScheme.for_protocol(clark, 0.3)


def test_settings_defaults():
    assert ObservationSettings() == ObservationSettings(1.0, 1.2, 40.0, 2.5)
