"""Recordings no training cell could give are refused by `fit`; unusual ones are flagged."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import DATA

from sbi_twins import load_estimator
from sbi_twins.cli import main
from sbi_twins.inference import ImplausibleRecordingError, MisspecificationWarning
from sbi_twins.inference.misspecification import Reference, implausibility


@pytest.fixture(scope="module")
def estimator():
    return load_estimator(DATA / "format2_bundle")


@pytest.fixture(scope="module")
def traces(estimator):
    return estimator.simulate_cells(4, seed=33)[1]


def test_reference_round_trips_through_its_dictionary(estimator):
    reference = estimator.misspecification_reference(n_cells=40, seed=3)
    again = Reference.from_dict(reference.to_dict())
    summaries = np.random.default_rng(0).normal(size=(5, reference.mean.size))
    np.testing.assert_array_equal(again.statistic(summaries), reference.statistic(summaries))
    assert again.rms_range == reference.rms_range and again.source == "40 fresh cells (seed 3)"
    np.testing.assert_array_equal(again.typical, reference.typical)
    assert [again.p_value(s) for s in (0.5, 1.0, 3.0)] == [
        reference.p_value(s) for s in (0.5, 1.0, 3.0)
    ]
    positions = np.random.default_rng(1).uniform(-0.5, 1.5, size=(5, reference.mean.size))
    np.testing.assert_array_equal(
        again.excess.statistic(positions), reference.excess.statistic(positions)
    )
    np.testing.assert_array_equal(again.excess.bounded, ~estimator.prior.log_normal)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda x: np.zeros_like(x), "flat"),
        (lambda x: np.full_like(x, 3.0), "flat"),
        (lambda x: x * 100, "in pA rather than pA/pF"),
        (lambda x: x / 100, "in nA, or A/F"),
        (lambda x: -x, "sign convention flipped"),
    ],
)
def test_gross_input_mistakes_are_named(estimator, traces, change, message):
    reference = estimator.misspecification_reference()
    for trace in traces:
        observation = estimator.reduce(trace)
        assert implausibility(reference, observation) is None
        assert message in implausibility(reference, change(observation))


def test_fit_refuses_an_implausible_recording_and_says_how_to_go_on(estimator, traces):
    with pytest.raises(ImplausibleRecordingError, match="pA rather than pA/pF.*check_plausibility"):
        estimator.fit(traces[0] * 100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MisspecificationWarning)
        posterior = estimator.fit(traces[0] * 100, check_plausibility=False)
    assert posterior.misspecification().flag  # fitted on request, and still flagged
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an ordinary recording: no refusal and no warning
        estimator.fit(traces[0])


def test_fit_warns_when_the_recording_is_unlike_the_training_cells(estimator, traces):
    # half the current of every segment of the protocol after the first step: a cell
    # that changes between steps, which no training cell does
    odd = traces[1].copy()
    odd[odd.size // 3 :] *= 4
    with pytest.warns(MisspecificationWarning, match="unlike every cell"):
        posterior = estimator.fit(odd)
    assert posterior.misspecification().flag


def test_the_command_line_refuses_in_one_line_and_fits_on_request(
    estimator, traces, tmp_path, capsys
):
    trace = tmp_path / "trace.npy"
    np.save(trace, -traces[2])
    args = ["fit", str(trace), "--estimator", str(estimator.path), "--samples", "200"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("sbi-twins fit: error: this recording is not one the estimator")
    assert "Negate it" in error and "--no-plausibility-check" in error and "\n" not in error
    assert main([*args, "--out", str(tmp_path / "b"), "--no-plausibility-check"]) == 0
    err = capsys.readouterr().err
    assert "sbi-twins fit: warning: this recording is unlike every cell" in err
    assert (tmp_path / "b" / "summary.csv").exists()
