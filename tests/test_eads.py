"""EAD and repolarisation-failure detection: constructed traces with known answers, IKr-blocked
Kernik 2019 cells, and the same cells integrated by myokit's CVODE.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from sbi_twins import load_prior
from sbi_twins.physiology import EADCriterion, detect_eads

DT = 0.5
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ap_train(shape_ms, shape_mV, *, cycle_ms=1000.0, duration_ms=10_000.0, rest_mV=-75.0):
    """Spontaneous-like beats: one piecewise-linear AP per cycle (corners at ``shape_ms`` after
    the beat start, values ``shape_mV``), diastole at ``rest_mV`` rising by 5 mV to the next
    beat (a pacemaker depolarisation below -50 mV, which is no EAD).
    """
    t = np.arange(0.0, duration_ms + DT / 2, DT)
    phase = t % cycle_ms
    ap = np.interp(phase, shape_ms, shape_mV)
    diastole = rest_mV + 5.0 * (phase - shape_ms[-1]) / (cycle_ms - shape_ms[-1])
    return np.where(phase <= shape_ms[-1], ap, diastole)


NORMAL = ([0, 2, 100, 200, 400], [-75, 30, 10, -20, -75])


def test_a_normal_ap_train_is_normal():
    verdict = detect_eads(ap_train(*NORMAL), DT).iloc[0]
    assert verdict["outcome"] == "normal"
    assert not verdict["ead"] and not verdict["repolarisation_failure"]
    assert verdict["n_beats"] == 10 and verdict["n_ead_events"] == 0


def test_a_5_mV_secondary_rise_during_repolarisation_is_an_ead_in_every_beat():
    V = ap_train([0, 2, 100, 200, 240, 400], [-75, 30, 10, -20, -15, -75])
    verdict = detect_eads(V, DT).iloc[0]
    assert verdict["outcome"] == "ead" and verdict["ead"]
    assert verdict["n_ead_events"] == 10 and verdict["n_beats"] == 10


def test_a_1_mV_ripple_is_below_the_criterion_but_counts_with_a_lower_threshold():
    V = ap_train([0, 2, 100, 200, 240, 400], [-75, 30, 10, -20, -19, -75])
    assert detect_eads(V, DT).loc[0, "outcome"] == "normal"
    assert detect_eads(V, DT, EADCriterion(min_rise_mV=0.5)).loc[0, "n_ead_events"] == 10


def test_a_rise_before_30_percent_repolarisation_is_the_plateau_dome_not_an_ead():
    # spike to +30, notch to +20, dome to +28 (~20 ms later): the Kernik spike-and-dome shape
    V = ap_train([0, 2, 10, 60, 200, 400], [-75, 30, 20, 28, -20, -75])
    assert detect_eads(V, DT).loc[0, "outcome"] == "normal"
    assert detect_eads(V, DT, EADCriterion(search_from=0.05)).loc[0, "outcome"] == "ead"


def test_an_ead_that_overshoots_the_beat_threshold_is_not_a_new_beat():
    V = ap_train([0, 2, 100, 200, 260, 300, 450], [-75, 30, 10, -30, -5, -10, -75])
    verdict = detect_eads(V, DT).iloc[0]
    assert verdict["outcome"] == "ead"
    assert verdict["n_beats"] == 10 and verdict["n_ead_events"] == 10


def test_a_trace_that_never_repolarises_is_a_repolarisation_failure():
    t = np.arange(0.0, 10_000.0 + DT / 2, DT)
    V = np.interp(t, [0, 500, 502, 600, 1000], [-75, -75, 30, 0, -10])  # then stays at -10
    verdict = detect_eads(V, DT).iloc[0]
    assert verdict["outcome"] == "repolarisation_failure" and verdict["repolarisation_failure"]
    assert not verdict["ead"] and verdict["n_beats"] == 1


def test_oscillations_of_a_failing_cell_are_eads_of_its_one_beat():
    t = np.arange(0.0, 10_000.0 + DT / 2, DT)
    V = np.where(t < 1000, np.interp(t, [0, 500, 502, 1000], [-75, -75, 30, -30]),
                 -20.0 - 15.0 * np.cos(2 * np.pi * (t - 1000) / 450))
    verdict = detect_eads(V, DT).iloc[0]
    assert verdict["outcome"] == "repolarisation_failure" and verdict["ead"]
    assert verdict["n_beats"] == 1 and verdict["n_ead_events"] == 20


def test_flat_traces_have_no_beats_or_have_failed_to_repolarise():
    V = np.vstack([np.full(4001, -75.0), np.full(4001, -20.0)])
    verdicts = detect_eads(V, DT)
    assert list(verdicts["outcome"]) == ["no_beats", "repolarisation_failure"]
    assert list(verdicts["n_beats"]) == [0, 0]


def test_an_ap_cut_off_by_the_trace_end_is_not_a_failure():
    V = ap_train(*NORMAL, duration_ms=2_300.0)  # the last AP has run 300 of its 400 ms
    assert detect_eads(V, DT).loc[0, "outcome"] == "normal"


def test_a_failed_simulation_is_reported_with_missing_counts():
    V = ap_train(*NORMAL)
    V[100] = np.nan
    verdict = detect_eads(V, DT).iloc[0]
    assert verdict["outcome"] == "simulation_failed" and not verdict["ead"]
    assert verdict["n_beats"] is pd.NA and verdict["n_ead_events"] is pd.NA


def test_start_ms_judges_only_the_later_part():
    V = ap_train(*NORMAL)
    first = slice(0, int(1000 / DT))
    V[first] = ap_train([0, 2, 100, 200, 240, 400], [-75, 30, 10, -20, -15, -75])[first]
    assert detect_eads(V, DT).loc[0, "outcome"] == "ead"
    later = detect_eads(V, DT, start_ms=1000.0).iloc[0]
    assert later["outcome"] == "normal" and later["n_beats"] == 9


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="shape"):
        detect_eads(np.zeros((2, 2, 2)), DT)
    with pytest.raises(ValueError, match="after the trace end"):
        detect_eads(np.zeros(101), DT, start_ms=60.0)
    with pytest.raises(ValueError, match="must be below threshold_mV"):
        EADCriterion(repolarised_mV=-10.0)
    with pytest.raises(ValueError, match="search_from"):
        EADCriterion(search_from=1.0)
    with pytest.raises(ValueError, match="min_rise_mV"):
        EADCriterion(min_rise_mV=0)


# -- simulated cells: IKr block of the default cell and of two ±40 % cells --------------------

IKR_FACTORS = (1.0, 0.5, 0.25, 0.1)
#: Rows of ``prior.sample(40, seed=7)`` of kernik2019_pm40: two viable cells, one that fails at
#: half its IKr and one that beats normally even at a tenth of it.
PRIOR_ROWS = (3, 11)
#: Outcome of each cell (default, row 3, row 11) at each IKr factor, 20 s from the initial state.
EXPECTED = {
    "default": ["normal", "normal", "repolarisation_failure", "repolarisation_failure"],
    "prior row 3": ["normal", "repolarisation_failure", "repolarisation_failure",
                    "repolarisation_failure"],
    "prior row 11": ["normal", "normal", "normal", "normal"],
}


@pytest.fixture(scope="module")
def blocked_cells(kernik):
    """Parameter sets (dict name -> (12,) array): each cell at each IKr factor."""
    defaults = dict(zip(kernik.parameter_names, kernik.default_parameters, strict=True))
    draws = load_prior("kernik2019_pm40").sample(40, seed=7).iloc[list(PRIOR_ROWS)]
    names = [n for n in draws.columns if n in defaults]
    cells = [defaults] + [{**defaults, **draws.iloc[k][names].to_dict()} for k in range(2)]
    rows = [{**cell, "ikr.g_Kr": cell["ikr.g_Kr"] * f} for cell in cells for f in IKR_FACTORS]
    return {name: np.array([row[name] for row in rows]) for name in kernik.parameter_names}


@pytest.fixture(scope="module")
def blocked_traces(kernik, blocked_cells):
    return kernik.simulate_ap(blocked_cells, duration_ms=20_000, sample_interval_ms=DT)


def test_ikr_block_gives_the_expected_verdicts(blocked_traces):
    verdicts = detect_eads(blocked_traces, DT)
    outcomes = np.array(verdicts["outcome"]).reshape(3, len(IKR_FACTORS))
    assert {cell: list(row) for cell, row in zip(EXPECTED, outcomes, strict=True)} == EXPECTED
    failing = verdicts["outcome"] == "repolarisation_failure"
    # the failing cells oscillate around -20 mV: EADs of their first AP
    assert verdicts.loc[failing, "ead"].all() and (verdicts.loc[failing, "n_beats"] <= 2).all()


@pytest.mark.parametrize("min_rise", [0.5, 5.0])
def test_the_simulated_verdicts_do_not_depend_on_the_rise_threshold(blocked_traces, min_rise):
    default = detect_eads(blocked_traces, DT)
    other = detect_eads(blocked_traces, DT, EADCriterion(min_rise_mV=min_rise))
    assert list(other["outcome"]) == list(default["outcome"])
    assert list(other["ead"]) == list(default["ead"])


@pytest.mark.myokit_cvode
def test_cvode_gives_the_same_verdicts(blocked_cells, blocked_traces):
    """The same 12 cells integrated by myokit's CVODE (tolerances 1e-8 abs, 1e-6 rel)."""
    import myokit

    model = myokit.load_model(os.path.join(REPO, "simulators", "kernik2019.mmt"))
    try:
        sim = myokit.Simulation(model)
    except myokit.CompilationError as e:  # no compiler or SUNDIALS on this machine
        if os.environ.get("CI"):
            raise
        pytest.skip(f"myokit cannot compile a CVODE simulation: {e}")
    sim.set_tolerance(1e-8, 1e-6)
    sim.set_max_step_size(1.0)
    times = np.arange(blocked_traces.shape[1]) * DT
    cvode = np.empty_like(blocked_traces)
    for k in range(blocked_traces.shape[0]):
        sim.reset()
        for name, values in blocked_cells.items():
            sim.set_constant(name, float(values[k]))
        cvode[k] = sim.run(times[-1] + DT / 2, log=["membrane.V"], log_times=times)["membrane.V"]
    ours, theirs = detect_eads(blocked_traces, DT), detect_eads(cvode, DT)
    assert list(ours["outcome"]) == list(theirs["outcome"])
    assert list(ours["ead"]) == list(theirs["ead"])
    normal = ours["outcome"] == "normal"
    assert list(ours.loc[normal, "n_beats"]) == list(theirs.loc[normal, "n_beats"])
