"""The misspecification flag's prior-excess and posterior-predictive statistics, and their
Bonferroni combination with the summary statistic.
"""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import pytest
from conftest import DATA

from sbi_twins import load_estimator
from sbi_twins.inference import MisspecificationWarning
from sbi_twins.inference import misspecification as mis
from sbi_twins.inference.misspecification import (
    EXCESS_FLOOR,
    ExcessReference,
    PredictiveReference,
    Reference,
    bonferroni,
    predictive_statistic,
)


@pytest.fixture(scope="module")
def estimator():
    return load_estimator(DATA / "format2_bundle")


@pytest.fixture(scope="module")
def twins(estimator):
    """Two cells' recordings, and the same cells' recordings with IKr removed."""
    theta, traces = estimator.simulate_cells(2, seed=33)
    without = estimator.simulate_recordings(theta.assign(**{"ikr.g_Kr": 0.0}), 33 + np.arange(2))
    return traces, without


def _with_predictive(estimator, calibration, excess=False):
    """A copy of ``estimator`` whose bundled reference has a predictive part (not simulated),
    and the prior-excess part only with ``excess`` (as a bundle written before it).
    """
    reference = estimator.misspecification_reference()
    reference = replace(
        reference,
        predictive=PredictiveReference(np.sort(calibration), 30, "made up"),
        excess=reference.excess if excess else None,
    )
    copy = estimator.tempered(estimator.temperature)
    copy._references = {}  # its own cache: the fixture's estimator keeps its reference
    copy.manifest["misspecification_reference"] = reference.to_dict()
    return copy


def test_the_statistic_is_larger_for_a_cell_without_ikr_than_for_its_twin(estimator, twins):
    for clean, without in zip(*twins, strict=True):
        fitted = estimator.posteriors(estimator.reduce(clean))[0]
        broken = estimator.posteriors(estimator.reduce(without))[0]
        assert predictive_statistic(broken) > 2 * predictive_statistic(fitted)


def test_the_statistic_is_seeded_by_the_recording(estimator, twins):
    traces, _ = twins
    posterior = estimator.fit(traces[0])
    assert predictive_statistic(posterior) == predictive_statistic(posterior)
    assert mis.recording_seed(posterior.observation) == mis.recording_seed(
        posterior.observation.copy()
    )
    assert mis.recording_seed(posterior.observation) != mis.recording_seed(
        estimator.reduce(traces[1])
    )


def test_the_predictive_reference_is_reproducible_by_seed(estimator):
    first = PredictiveReference.from_estimator(estimator, 20, seed=5, draws=10)
    again = PredictiveReference.from_estimator(estimator, 20, seed=5, draws=10)
    np.testing.assert_array_equal(first.calibration, again.calibration)
    assert first.source == "20 fresh cells (seed 5), 10 draws each" and first.draws == 10
    other = PredictiveReference.from_estimator(estimator, 20, seed=6, draws=10)
    assert not np.array_equal(first.calibration, other.calibration)


@pytest.mark.parametrize(
    ("p_values", "combined"),
    [((0.004, 0.9), 0.008), ((0.9, 0.004), 0.008), ((0.006, 0.006), 0.012), ((0.3, 0.8), 0.6)],
)
def test_bonferroni_flags_when_either_p_value_is_below_half_alpha(p_values, combined):
    assert bonferroni(*p_values) == pytest.approx(combined)
    assert (bonferroni(*p_values) < 0.01) == (min(p_values) < 0.01 / 2)
    assert bonferroni(0.7, 0.8) == 1.0 and bonferroni(0.02) == 0.02


def test_a_verdict_combines_the_summary_and_predictive_statistics(estimator, twins):
    traces, without = twins
    typical = _with_predictive(estimator, np.linspace(0.5, 3.0, 199))
    verdict = typical.fit(traces[0]).misspecification()
    assert verdict.predictive_p_value > 0.05 and verdict.predictive_statistic < 3.0
    assert verdict.p_value == bonferroni(verdict.summary_p_value, verdict.predictive_p_value)
    assert not verdict.flag and "Bonferroni" in verdict.note
    # the same recording without IKr: beyond every reference cell, p = 1 / 200, flagged
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MisspecificationWarning)  # fit's summary-only warning
        posterior = typical.fit(without[0], check_plausibility=False)
    broken = posterior.misspecification()
    assert broken.predictive_p_value == pytest.approx(1 / 200) and broken.flag
    assert broken.p_value == bonferroni(broken.summary_p_value, 1 / 200) <= 2 / 200
    cheap = posterior.misspecification(predictive=False)
    assert cheap.predictive_p_value is None and "not asked for" in cheap.note
    assert cheap.p_value == cheap.summary_p_value == broken.summary_p_value
    # with the prior-excess part too, all three
    verdict = _with_predictive(estimator, np.linspace(0.5, 3.0, 199), excess=True).fit(traces[0])
    verdict = verdict.misspecification()
    assert verdict.p_value == bonferroni(
        verdict.summary_p_value, verdict.excess_p_value, verdict.predictive_p_value
    )
    assert "summary, prior-excess and predictive statistics, Bonferroni" in verdict.note


def test_a_bundle_without_a_predictive_reference_uses_the_cheap_statistics(estimator, twins):
    stored = estimator.misspecification_reference().to_dict()
    assert "predictive" not in stored  # as in bundles written before the predictive statistic
    assert Reference.from_dict(stored).predictive is None
    verdict = estimator.fit(twins[0][0]).misspecification()
    assert verdict.p_value == bonferroni(verdict.summary_p_value, verdict.excess_p_value)
    old = _with_predictive(estimator, [1.0] * 20)  # then without its predictive part: the
    del old.manifest["misspecification_reference"]["predictive"]  # summary statistic alone
    verdict = old.fit(twins[0][0]).misspecification()
    assert verdict.predictive_p_value is None and verdict.predictive_statistic is None
    assert verdict.p_value == verdict.summary_p_value
    assert verdict.flag == (verdict.p_value < verdict.alpha)
    assert "no predictive reference" in verdict.note


def test_the_predictive_reference_round_trips_through_the_manifest(estimator):
    made = _with_predictive(estimator, [2.0, 1.0, 3.0] * 7).misspecification_reference()
    again = Reference.from_dict(made.to_dict())
    np.testing.assert_array_equal(again.predictive.calibration, np.sort([2.0, 1.0, 3.0] * 7))
    assert again.predictive.draws == 30 and again.predictive.source == "made up"
    assert again.predictive.p_value(2.5) == made.predictive.p_value(2.5) == 8 / 22


def test_fit_warns_from_the_summary_statistic_without_simulating(estimator, twins, monkeypatch):
    typical = _with_predictive(estimator, np.linspace(0.5, 3.0, 199))

    def no_simulation(*args, **kwargs):
        raise AssertionError("fit ran a predictive check")

    monkeypatch.setattr(mis, "predictive_check", no_simulation)
    odd = twins[0][1].copy()
    odd[odd.size // 3 :] *= 4  # as in test_plausibility: no training cell changes between steps
    with pytest.warns(MisspecificationWarning, match="unlike every cell"):
        typical.fit(odd)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        typical.fit(twins[0][0])


UP = np.ones(3)  # positive baselines


def _excess_reference(n: int = 99) -> ExcessReference:
    """Three parameters (the last log-normal); in-distribution positions inside (0, 1) but
    for the second parameter's regression error, which strays up to 0.2 below.
    """
    rng = np.random.default_rng(0)
    summaries = np.column_stack(
        [rng.normal(size=2 * n), rng.uniform(size=2 * n), rng.uniform(-0.2, 1, 2 * n),
         rng.normal(size=2 * n)]
    )  # one feature column, then the positions
    return ExcessReference.from_cells(summaries[:n], summaries[n:], [True, True, False])


def test_prior_excess_counts_positions_outside_the_prior_in_their_own_units():
    reference = _excess_reference()
    # the first parameter never left (0, 1): its unit is the floor; the second's is its RMS
    assert reference.scale[0] == EXCESS_FLOOR and 0.02 < reference.scale[1] < 0.07
    inside = np.array([[9.0, 0.5, 0.99, -40.0]])  # a log-normal position has no range to leave
    assert reference.statistic(inside)[0] == 0.0 and reference.beyond(inside, "abc", UP) == {}
    assert reference.p_value(0.0) > 0.5
    below = np.array([[0.0, -0.03, 0.5, 0.0]])  # 10 floors below: beyond every reference cell
    assert reference.statistic(below)[0] == pytest.approx(100.0)
    assert reference.p_value(100.0) == 1 / 100
    assert reference.beyond(below, "abc", UP) == {"a": "below"}
    # the second parameter's 0.03 below is usual for it (14 % of the cells); 0.2 above is not
    usual, odd = np.array([[0, 0.5, -0.03, 0]]), np.array([[0, 0.5, 1.2, 0]])
    assert reference.p_value(reference.statistic(usual)[0]) > 0.05
    assert reference.beyond(odd, "abc", UP) == {"b": "above"} and reference.excess(odd)[0, 1] > 0
    # a multiplier above its range, of a negative baseline, is a value below the prior's range
    assert reference.beyond(odd, "abc", np.array([1.0, -4.2, 1.0])) == {"b": "below"}


def test_the_prior_excess_reference_round_trips_through_the_manifest(estimator):
    made = replace(estimator.misspecification_reference(), excess=_excess_reference())
    again = Reference.from_dict(made.to_dict()).excess
    np.testing.assert_array_equal(again.scale, made.excess.scale)
    np.testing.assert_array_equal(again.bounded, [True, True, False])
    np.testing.assert_array_equal(again.calibration, made.excess.calibration)


def test_a_reference_from_before_the_prior_excess_statistic_still_gives_verdicts(estimator, twins):
    old = _with_predictive(estimator, [1.0] * 20)
    assert "excess" not in old.manifest["misspecification_reference"]
    verdict = old.fit(twins[0][0]).misspecification(predictive=False)
    assert verdict.excess_p_value is None and verdict.excess_statistic is None
    assert verdict.beyond_prior == {} and "predates it" in verdict.note


@pytest.fixture(scope="module")
def default():
    return load_estimator("default")


def test_the_default_flags_most_cells_without_ikr_and_names_ikr(default):
    """The bundled default's reference (4000 fresh cells) has the prior-excess part. Of 8
    cells, none is flagged, and at least half of the same cells without IKr are (70 % in
    BENCHMARKS.md), each naming an IKr parameter first: ``ikr.g_Kr`` pushed below its range.
    """
    theta, traces = default.simulate_cells(8, seed=41)
    without = default.simulate_recordings(theta.assign(**{"ikr.g_Kr": 0.0}), 41 + np.arange(8))
    verdicts = [default.fit(trace).misspecification(predictive=False) for trace in traces]
    assert not any(v.flag for v in verdicts) and min(v.excess_p_value for v in verdicts) > 0.05
    assert all(v.beyond_prior == {} for v in verdicts)  # named only when flagged
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MisspecificationWarning)
        broken = [default.fit(trace).misspecification(predictive=False) for trace in without]
    flagged = [v for v in broken if v.flag]
    assert len(flagged) >= 4 and len(caught) == len(flagged)
    assert all(next(iter(v.beyond_prior)).startswith("ikr.") for v in flagged)
    assert sum("pushes ikr.g_Kr below" in str(w.message) for w in caught) >= 3
    for v in broken:
        assert v.p_value == bonferroni(v.summary_p_value, v.excess_p_value)
        assert "summary and prior-excess statistics, Bonferroni-combined" in v.note
