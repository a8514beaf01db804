"""Tests for sbi_twins.physiology.viability: the rule set, the verdicts on known cells, and that
stopping decided cells early gives the verdict of the whole window.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sbi_twins import load_prior
from sbi_twins.physiology.features import ap_features
from sbi_twins.physiology.viability import (
    REASONS,
    ViabilityRules,
    acceptance_summary,
    check_viability,
)

DATA = Path(__file__).parent / "data"
DEFAULT = ViabilityRules()
# Strict AP criteria, so that the random draws below also exercise the other rejection reasons.
STRICT_AP = replace(DEFAULT, min_peak_mV=20.0, max_mdp_mV=-70.0, max_cl_cv=0.002)


def prior_draws(model, n: int, seed: int) -> pd.DataFrame:
    """``n`` ±40 % draws, model parameters only (the prior may also hold recording ones)."""
    theta = load_prior("kernik2019_pm40").sample(n, seed=seed)
    return theta[[c for c in theta.columns if c in model.parameter_names]]


def reference_params(name: str, model) -> dict[str, np.ndarray]:
    """Parameters of a reference file (tests/data/README.md) keyed by model names."""
    ref = np.load(DATA / f"kernik2019_ref_{name}.npz")
    table = pd.read_csv(DATA / "kernik2019_parameters.csv")
    to_model = dict(zip(table["name"], table["model_name"], strict=True))
    pairs = zip(ref["param_names"], ref["params"], strict=True)
    params = {to_model[str(n)]: np.array([v]) for n, v in pairs}
    assert set(params) <= set(model.parameter_names)
    return params


def full_window_verdicts(V: np.ndarray, rules: ViabilityRules) -> pd.DataFrame:
    """The rule of the module docstring applied to whole traces (t = 0 to the window end),
    written independently of the module: crossings found here, peak and MDP from
    ``ap_features`` on the window cut just after beat ``min_beats + 1``.
    """
    dt, thr, k = rules.sample_interval_ms, rules.threshold_mV, rules.min_beats
    rows = []
    for v in V:
        if not np.isfinite(v).all():
            rows.append(("simulation_failed", math.nan, math.nan, math.nan))
            continue
        w = v[round(rules.settle_ms / dt) :]
        c = np.flatnonzero((w[:-1] < thr) & (w[1:] >= thr)) + 1
        t = (c - 1 + (thr - w[c - 1]) / (w[c] - w[c - 1])) * dt
        if c.size < k + 1 or (np.diff(np.r_[0.0, t[: k + 1]]) >= rules.max_interval_ms).any():
            rows.append(("too_few_beats", math.nan, math.nan, math.nan))
            continue
        f = ap_features(w[: c[k] + 1], dt).iloc[0]
        assert f.n_beats == k + 1
        intervals = np.diff(t[: k + 1])
        if not f.peak > rules.min_peak_mV:
            reason = "low_peak"
        elif not f.MDP < rules.max_mdp_mV:
            reason = "high_mdp"
        elif intervals.std() / intervals.mean() > rules.max_cl_cv:
            reason = "irregular"
        else:
            reason = "ok"
        rows.append((reason, f.peak, f.MDP, intervals.mean()))
    return pd.DataFrame(rows, columns=["reason", "peak", "MDP", "CL"])


# -- known cells -------------------------------------------------------------------------------


def test_baseline_cell_is_viable_and_stops_at_its_last_beat(kernik):
    row = check_viability(kernik, None).iloc[0]
    assert row.viable and row.reason == "ok"
    assert row.n_beats == DEFAULT.min_beats + 1
    assert 950 < row.CL < 1020  # ~61 beats/min (SPEC §10)
    assert 30 < row.peak < 40 and -78 < row.MDP < -73
    assert row.CL_cv < 0.01
    # Four beats of ~1 s after the 2 s settle: decided long before the 12 s window end.
    assert row.simulated_ms <= DEFAULT.settle_ms + 4 * 1100


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("01_random", "ok"),  # drawn and accepted for the reference set (SPEC §12)
        ("02_random", "ok"),
        ("07_nonbeating", "too_few_beats"),  # fires once, then arrests at -28.7 mV
    ],
)
def test_reference_cells(kernik, name, reason):
    row = check_viability(kernik, reference_params(name, kernik)).iloc[0]
    assert row.reason == reason
    if reason == "too_few_beats":
        assert row.n_beats == 0
        # No beat for max_interval_ms after settling is final: not simulated any further.
        assert row.simulated_ms == DEFAULT.settle_ms + DEFAULT.max_interval_ms


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"min_peak_mV": 60.0}, "low_peak"),
        ({"max_mdp_mV": -80.0}, "high_mdp"),
        ({"max_cl_cv": 0.0}, "irregular"),
        ({"max_interval_ms": 900.0}, "too_few_beats"),
        ({"min_peak_mV": 60.0, "max_mdp_mV": -80.0}, "low_peak"),  # the first failing rule
    ],
)
def test_each_rule_rejects_the_baseline_cell_when_tightened(kernik, change, reason):
    row = check_viability(kernik, None, replace(DEFAULT, **change)).iloc[0]
    assert not row.viable and row.reason == reason


def test_failed_simulation_is_a_reason_not_a_warning(kernik):
    params = {"extra.Ko": [5.4, -1.0]}  # a negative concentration: NaN right-hand side
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        df = check_viability(kernik, params)
    assert df.reason.tolist() == ["ok", "simulation_failed"]
    assert df.viable.tolist() == [True, False]
    assert df.loc[1, ["peak", "MDP", "CL", "CL_cv"]].isna().all()
    assert df.loc[1, "simulated_ms"] <= DEFAULT.settle_ms  # dropped at once


# -- early exit --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def draws(kernik) -> pd.DataFrame:
    return prior_draws(kernik, 24, seed=7)


@pytest.fixture(scope="module")
def whole_traces(kernik, draws) -> np.ndarray:
    """Each draw simulated in one run through the whole window, with the filter's numerics."""
    r = DEFAULT
    return kernik.simulate_ap(
        draws,
        r.settle_ms + r.window_ms,
        r.sample_interval_ms,
        atol_mV=r.atol_mV,
        rtol=r.rtol,
        dt_max_ms=r.dt_max_ms,
    )


@pytest.mark.parametrize("rules", [DEFAULT, STRICT_AP], ids=["default", "strict_ap"])
def test_early_exit_gives_the_verdicts_of_the_whole_window(kernik, draws, whole_traces, rules):
    ours = check_viability(kernik, draws, rules)
    expected = full_window_verdicts(whole_traces, rules)
    assert ours.reason.tolist() == expected.reason.tolist()
    # The pieces restart the adaptive step at each join, so features agree within tolerance only.
    decided = (expected.reason != "too_few_beats").to_numpy()
    np.testing.assert_allclose(ours.peak[decided], expected.peak[decided], atol=0.2)
    np.testing.assert_allclose(ours.MDP[decided], expected.MDP[decided], atol=0.2)
    np.testing.assert_allclose(ours.CL[decided], expected.CL[decided], rtol=0.01)
    # Early exit saves time: no cell runs past its decisive beat or pause (+ one piece).
    assert ours.simulated_ms.mean() < 0.6 * (rules.settle_ms + rules.window_ms)
    # The draws exercise the rules: several reasons occur.
    assert {"ok", "too_few_beats"} <= set(ours.reason)
    assert len(set(ours.reason)) >= (2 if rules == DEFAULT else 4)


def test_piece_length_and_repetition_do_not_change_verdicts(kernik, draws):
    first = check_viability(kernik, draws)
    pd.testing.assert_frame_equal(check_viability(kernik, draws), first)  # deterministic
    short = check_viability(kernik, draws, chunk_ms=125.0)
    assert short.reason.tolist() == first.reason.tolist()
    assert (short.simulated_ms <= first.simulated_ms).all()


def test_acceptance_rate_on_prior_draws_is_plausible(kernik):
    """SPEC §11: 36.5 % of 200 draws beat regularly (on a 50-60 s window)."""
    summary = acceptance_summary(check_viability(kernik, prior_draws(kernik, 40, seed=11)))
    print(summary)
    assert 0.15 <= summary["acceptance_rate"] <= 0.60
    assert summary["reasons"]["simulation_failed"] == 0


# -- inputs and outputs ------------------------------------------------------------------------


def test_matrix_input_and_dataframe_index(kernik):
    g_na = kernik.default_parameters[kernik.parameter_names.index("ina.g_Na")] * np.array([1, 1.1])
    theta = kernik.parameter_matrix({"ina.g_Na": g_na})
    from_matrix = check_viability(kernik, theta)
    frame = pd.DataFrame({"ina.g_Na": g_na})
    frame.index = ["a", "b"]
    from_frame = check_viability(kernik, frame)
    assert list(from_frame.index) == ["a", "b"]
    np.testing.assert_array_equal(from_frame.to_numpy(), from_matrix.to_numpy())
    assert list(from_matrix.columns) == [
        "viable",
        "reason",
        "n_beats",
        "peak",
        "MDP",
        "CL",
        "CL_cv",
        "simulated_ms",
    ]


@pytest.mark.parametrize(
    ("params", "match"),
    [
        (np.ones((2, 3)), r"shape \(N, 131\)"),
        (np.full((1, 131), np.nan), "non-finite"),
        ({"ina.g_Nax": [1.0]}, "did you mean 'ina.g_Na'"),
    ],
)
def test_bad_params(kernik, params, match):
    with pytest.raises(ValueError, match=match):
        check_viability(kernik, params)


@pytest.mark.parametrize(
    ("chunk_ms", "match"), [(0.0, "chunk_ms must be"), (250.5, "multiple of sample_interval_ms")]
)
def test_bad_chunk(kernik, chunk_ms, match):
    with pytest.raises(ValueError, match=match):
        check_viability(kernik, None, chunk_ms=chunk_ms)


def test_acceptance_summary_counts_every_reason():
    df = pd.DataFrame(
        {
            "viable": [True, False, False, True],
            "reason": ["ok", "too_few_beats", "too_few_beats", "ok"],
            "simulated_ms": [1.0, 2.0, 3.0, 4.0],
        }
    )
    s = acceptance_summary(df)
    assert s["n_cells"] == 4 and s["n_viable"] == 2 and s["acceptance_rate"] == 0.5
    assert list(s["reasons"]) == list(REASONS)
    assert s["reasons"]["too_few_beats"] == 2 and s["reasons"]["irregular"] == 0
    assert s["mean_simulated_ms"] == 2.5
    with pytest.raises(ValueError, match="pass the table returned by check_viability"):
        acceptance_summary(df.drop(columns="reason"))


# -- rules -------------------------------------------------------------------------------------


def test_rules_round_trip_through_json():
    rules = ViabilityRules(settle_ms=5000, min_beats=np.int64(4), max_mdp_mV=-55.5)
    data = json.loads(json.dumps(rules.to_dict()))
    assert ViabilityRules.from_dict(data) == rules
    assert ViabilityRules.from_dict({}) == DEFAULT
    assert ViabilityRules.from_dict({"min_beats": 5}).min_beats == 5


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"window_ms": -1.0}, "window_ms must be a finite number > 0"),
        ({"settle_ms": -1.0}, "settle_ms must be a finite number >= 0"),
        ({"min_beats": 0}, "min_beats must be an integer >= 1"),
        ({"min_beats": 2.5}, "min_beats must be an integer >= 1"),
        ({"min_beats": True}, "min_beats must be an integer >= 1"),
        ({"max_mdp_mV": math.nan}, "max_mdp_mV must be a finite number"),
        ({"min_peak_mV": "0"}, "min_peak_mV must be a finite number"),
        ({"settle_ms": 1000.5}, r"settle_ms \(1000.5\) must be a whole multiple of sample_int"),
    ],
)
def test_bad_rules(change, match):
    with pytest.raises(ValueError, match=match):
        ViabilityRules(**change)
    with pytest.raises(ValueError, match=match):
        ViabilityRules.from_dict(change)


def test_unknown_rule_key_lists_valid_keys():
    with pytest.raises(
        ValueError, match="unknown viability rule.*'min_beat'.*valid keys.*min_beats"
    ):
        ViabilityRules.from_dict({"min_beat": 3})
