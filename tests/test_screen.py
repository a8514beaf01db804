"""Twin populations and drug screens: the protocol against a direct simulation, known verdicts,
incidence statistics, and the errors a user can make.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from sbi_twins import Drug, ScreenResult, cells_needed, detect_eads, load_drug, load_prior, screen
from sbi_twins.twins.drugs import ChannelBlock
from sbi_twins.twins.population import make_twins, pool_twins, trace_features, twin_features
from sbi_twins.twins.screen import wilson_interval

DT = 0.5
SHORT = {"settle_ms": 3_000.0, "duration_ms": 6_000.0, "window_ms": 4_000.0}
IKR_BLOCKER = Drug("IKr blocker", {"IKr": ChannelBlock(100.0, 1.0, "made up for the tests")})


@pytest.fixture(scope="module")
def twins():
    """Two viable ±40 % cells (rows 3 and 11 of kernik2019_pm40's 40 draws with seed 7), with
    their recording.* columns, as posterior draws have them.
    """
    return load_prior("kernik2019_pm40").sample(40, seed=7).iloc[[3, 11]]


@pytest.fixture(scope="module")
def short_screen(kernik, twins):
    return screen(kernik, twins, "E-4031", [0, 300], **SHORT)


def test_the_outcome_table_has_one_row_per_twin_and_dose(short_screen):
    out = short_screen.outcomes
    assert len(out) == 4 and list(out["dose_nM"]) == [0.0, 0.0, 300.0, 300.0]
    assert list(out["twin"]) == [0, 1, 0, 1] and (out["cell"] == 0).all()
    np.testing.assert_allclose(out["IKr_remaining"], [1, 1, 294 / 594, 294 / 594])
    for column in ("outcome", "ead", "repolarisation_failure", "n_ead_events", "n_beats",
                   "CL", "APD20", "APD50", "APD90", "MDP", "peak", "amplitude", "dVdt_max"):
        assert column in out
    assert short_screen.doses_nM == (0.0, 300.0)
    assert short_screen.settings["channels"] == {"IKr": ("ikr.g_Kr",)}


def test_a_screen_is_the_settle_then_block_protocol_simulated_directly(kernik, twins,
                                                                       short_screen):
    cell = twins.iloc[[1]]
    names = [c for c in cell.columns if c in kernik.parameter_names]
    _, state = kernik.simulate_ap(cell[names], duration_ms=SHORT["settle_ms"],
                                  sample_interval_ms=SHORT["settle_ms"], return_final_state=True)
    blocked = cell[names].assign(**{"ikr.g_Kr": cell["ikr.g_Kr"] * 294 / 594})
    V = kernik.simulate_ap(blocked, duration_ms=SHORT["duration_ms"], sample_interval_ms=DT,
                           initial_state=state)
    start = SHORT["duration_ms"] - SHORT["window_ms"]
    verdict = detect_eads(V, DT, start_ms=start).iloc[0]
    features = trace_features(V[:, int(start / DT):], DT).iloc[0]
    row = short_screen.outcomes.iloc[3]
    assert row["outcome"] == verdict["outcome"] and row["n_beats"] == verdict["n_beats"]
    assert row["APD90"] == features["APD90"] and row["CL"] == features["CL"]


def test_the_batch_size_does_not_change_the_result(kernik, twins, short_screen):
    again = screen(kernik, twins, "E-4031", [0, 300], batch_size=1, progress=True, **SHORT)
    pd.testing.assert_frame_equal(again.outcomes, short_screen.outcomes)


def test_ikr_block_of_the_default_cell_gives_the_expected_verdicts(kernik):
    default = pd.DataFrame({"ikr.g_Kr": [kernik.default_parameters[
        kernik.parameter_names.index("ikr.g_Kr")]]})
    result = screen(kernik, default, IKR_BLOCKER, [0, 100, 300, 900])  # IKr x 1, .5, .25, .1
    out = result.outcomes
    assert list(out["outcome"]) == ["normal", "normal", "repolarisation_failure",
                                    "repolarisation_failure"]
    assert list(out["ead"]) == [False, False, True, True]  # sustained plateau oscillations
    assert out.loc[1, "APD90"] > out.loc[0, "APD90"] + 50  # half the IKr: a longer AP
    assert out.loc[2:, ["APD90", "CL"]].isna().all().all()  # oscillations are no APs
    incidence = result.incidence()
    assert list(incidence["p_ead"]) == [0.0, 0.0, 1.0, 1.0]
    assert incidence.loc[0, "ci_high"] == pytest.approx(wilson_interval(0, 1)[1])


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "doses, message",
    [
        ([0, -10], "finite and >= 0, got -10"),
        ([0, math.nan], "a dose is NaN"),
        ([0, math.inf], "finite and >= 0"),
        ([], "doses_nM is empty"),
        ([10, 10.0], "doses are repeated"),
        (["10"], "doses must be numbers, got '10'"),
    ],
)
def test_bad_doses_are_refused(kernik, twins, doses, message):
    with pytest.raises(ValueError, match=message):
        screen(kernik, twins, "E-4031", doses, **SHORT)


def test_micromolar_doses_are_converted_and_a_likely_unit_mistake_warns(kernik, twins):
    result = screen(kernik, twins.iloc[:1], "E-4031", [0.3], unit="uM", **SHORT)
    assert list(result.outcomes["dose_nM"]) == [300.0]
    with pytest.raises(ValueError, match="unit must be one of"):
        screen(kernik, twins, "E-4031", [0.3], unit="mM", **SHORT)
    with pytest.warns(UserWarning, match="were the doses in uM"):
        screen(kernik, twins.iloc[:1], "E-4031", [0, 0.03, 0.1], **SHORT)


def test_an_unknown_drug_lists_the_bundled_ones(kernik, twins):
    with pytest.raises(FileNotFoundError, match="unknown drug 'e4031'.*e-4031"):
        screen(kernik, twins, "e4031", [0, 10], **SHORT)


def test_a_channel_the_model_does_not_declare_is_refused_unless_ignored(kernik, twins):
    with pytest.raises(ValueError, match=r"blocks INaL, which model 'kernik2019' does not "
                                         r"declare.*ignore_channels=\('INaL',\)"):
        screen(kernik, twins, "dofetilide", [0, 10], **SHORT)
    result = screen(kernik, twins.iloc[:1], "dofetilide", [10], ignore_channels=["INaL"], **SHORT)
    assert result.settings["ignored_channels"] == ["INaL"]
    assert "INaL_remaining" not in result.outcomes and "Ito_remaining" in result.outcomes
    with pytest.raises(ValueError, match=r"ignore_channels names \['IKs'\], which dofetilide"):
        screen(kernik, twins, "dofetilide", [10], ignore_channels=["INaL", "IKs"], **SHORT)
    with pytest.raises(ValueError, match="every channel of E-4031 is ignored"):
        screen(kernik, twins, "E-4031", [10], ignore_channels=["IKr"], **SHORT)


def test_twins_of_another_model_or_no_twins_are_refused(kernik, twins):
    other = pd.DataFrame({"ik.g_K": [36.0], "ina.g_Na": [120.0]})  # hh1952's parameters
    with pytest.raises(ValueError, match=r"do not fit model 'kernik2019'.*'ik.g_K'"):
        screen(kernik, other, "E-4031", [0, 10], **SHORT)
    with pytest.raises(ValueError, match="twin table is empty"):
        screen(kernik, twins.iloc[:0], "E-4031", [0, 10], **SHORT)
    with pytest.raises(ValueError, match="must be a pandas.DataFrame"):
        screen(kernik, twins.to_numpy(), "E-4031", [0, 10], **SHORT)
    with pytest.raises(ValueError, match="window_ms .* must not exceed duration_ms"):
        screen(kernik, twins, "E-4031", [0, 10], settle_ms=1000, duration_ms=2000,
               window_ms=3000)


# -- twin tables -------------------------------------------------------------------------------


def test_twin_tables_get_cell_and_twin_columns_and_keep_recording_columns(kernik, twins):
    table = make_twins(kernik, twins)
    assert list(table.columns[:2]) == ["cell", "twin"] and list(table["twin"]) == [0, 1]
    assert "recording.rs_MOhm" in table and (table.index == [0, 1]).all()
    pooled = pool_twins(kernik, {"A": twins, "B": twins})
    assert list(pooled["cell"]) == ["A", "A", "B", "B"] and list(pooled["twin"]) == [0, 1, 0, 1]
    with pytest.raises(ValueError, match="listed more than once"):
        make_twins(kernik, pd.concat([table, table]))
    with pytest.raises(ValueError, match="do not pass cell="):
        make_twins(kernik, table, cell="A")


def test_trace_features_of_a_constructed_ap():
    t = np.arange(0.0, 3000.0 + DT / 2, DT)
    phase = t % 1000
    # upstroke -80 -> +20 mV in 10 ms (10 mV/ms), linear fall to -80 mV over 400 ms
    V = np.interp(phase, [0, 10, 410, 1000], [-80, 20, -80, -80])
    f = trace_features(V, DT).iloc[0]
    assert f["n_beats"] == 3 and f["CL"] == pytest.approx(1000.0, abs=0.5)
    assert f["peak"] == 20 and f["MDP"] == -80 and f["amplitude"] == 100
    assert f["dVdt_max"] == pytest.approx(10.0)
    # APDs from the upstroke time (within the first half ms of the linear upstroke): 20, 50 and
    # 90 % of the 100 mV fall at 0.25 mV/ms after the peak at 10 ms
    assert f["APD20"] == pytest.approx(10 + 80, abs=0.5)
    assert f["APD50"] == pytest.approx(10 + 200, abs=0.5)
    assert f["APD90"] == pytest.approx(10 + 360, abs=0.5)


def test_twin_features_are_those_of_the_settled_window(kernik, twins):
    features = twin_features(kernik, twins, settle_ms=3_000, window_ms=4_000)
    assert list(features.columns[:2]) == ["cell", "twin"] and len(features) == 2
    assert (features["APD20"] < features["APD50"]).all()
    assert (features["APD50"] < features["APD90"]).all() and (features["n_beats"] >= 3).all()


# -- incidence ---------------------------------------------------------------------------------


def synthetic_result(ead_by_cell: dict[str, list[bool]], failure: bool = False) -> ScreenResult:
    """A ScreenResult of one dose whose ``ead`` column is given per cell."""
    rows = [
        {"cell": cell, "twin": k, "dose_nM": 10.0, "ead": ead, "repolarisation_failure": failure,
         "outcome": "ead" if ead else "normal"}
        for cell, flags in ead_by_cell.items() for k, ead in enumerate(flags)
    ]
    return ScreenResult(pd.DataFrame(rows), load_drug("E-4031"), (10.0,))


def test_per_cell_incidence_is_the_fraction_of_twins_with_a_wilson_interval():
    result = synthetic_result({"a": [True] * 3 + [False] * 7, "b": [False] * 20})
    table = result.incidence()
    assert list(table["p_ead"]) == [0.3, 0.0] and list(table["n"]) == [10, 20]
    low, high = wilson_interval(3, 10)
    assert table.loc[0, "ci_low"] == low and table.loc[0, "ci_high"] == high


def test_pooled_incidence_averages_cells_with_a_seeded_cluster_bootstrap():
    result = synthetic_result({"a": [True] * 8 + [False] * 2, "b": [False] * 10,
                               "c": [True] * 5 + [False] * 5})
    pooled = result.incidence(by_cell=False, seed=3)
    assert pooled.loc[0, "n_cells"] == 3 and pooled.loc[0, "p_ead"] == pytest.approx(13 / 30)
    assert pooled.loc[0, "ci_low"] < 13 / 30 < pooled.loc[0, "ci_high"]
    pd.testing.assert_frame_equal(pooled, result.incidence(by_cell=False, seed=3))
    # the interval reflects the number of cells: the same per-cell fractions, more twins each,
    # barely narrow it; more cells do
    many_twins = synthetic_result({"a": [True] * 80 + [False] * 20, "b": [False] * 100,
                                   "c": [True] * 50 + [False] * 50})
    wide = pooled.loc[0, "ci_high"] - pooled.loc[0, "ci_low"]
    also_wide = many_twins.incidence(by_cell=False, seed=3)
    assert also_wide.loc[0, "ci_high"] - also_wide.loc[0, "ci_low"] > 0.7 * wide
    many_cells = synthetic_result({f"{c}{k}": flags for k in range(10) for c, flags in
                                   {"a": [True] * 8 + [False] * 2, "b": [False] * 10,
                                    "c": [True] * 5 + [False] * 5}.items()})
    narrow = many_cells.incidence(by_cell=False, seed=3)
    assert narrow.loc[0, "ci_high"] - narrow.loc[0, "ci_low"] < 0.6 * wide


def test_one_cell_gives_no_population_interval_and_failed_simulations_are_not_counted():
    result = synthetic_result({"a": [True, False, False, False]})
    result.outcomes.loc[3, "outcome"] = "simulation_failed"
    pooled = result.incidence(by_cell=False)
    assert pooled.loc[0, "n_cells"] == 1 and math.isnan(pooled.loc[0, "ci_low"])
    per_cell = result.incidence()
    assert per_cell.loc[0, "n"] == 3 and per_cell.loc[0, "n_failed_sim"] == 1


def test_abnormal_counts_eads_or_failures():
    result = synthetic_result({"a": [True, False]}, failure=True)
    assert result.incidence(event="abnormal").loc[0, "p_abnormal"] == 1.0
    assert result.incidence(event="repolarisation_failure").loc[0, "n_repolarisation_failure"] == 2
    with pytest.raises(ValueError, match="event must be one of"):
        result.incidence(event="eads")


def test_wilson_interval_matches_published_values():
    # Newcombe 1998 (Stat Med 17:857), Table I: 0/10 -> 0 to 0.2775; 81/263 -> 0.2553 to 0.3662
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    with pytest.raises(ValueError, match="must not exceed n"):
        wilson_interval(3, 2)


@pytest.mark.parametrize("p, h", [(0.3, 0.1), (0.5, 0.05), (0.02, 0.02), (0.0, 0.1)])
def test_cells_needed_is_the_smallest_count_whose_interval_is_narrow_enough(p, h):
    n = cells_needed(p, h)
    z = 1.959963984540054

    def half(m):
        return z / (1 + z * z / m) * math.sqrt(p * (1 - p) / m + z * z / (4 * m * m))

    assert half(n) <= h and (n == 1 or half(n - 1) > h)


def test_cells_needed_refuses_nonsense():
    assert cells_needed(0.3, 0.1) == 78
    with pytest.raises(ValueError, match="p must be a probability"):
        cells_needed(1.5, 0.1)
    with pytest.raises(ValueError, match="half_width"):
        cells_needed(0.3, 0)
    with pytest.raises(ValueError, match="confidence"):
        cells_needed(0.3, 0.1, confidence=95)


def test_a_pooled_screen_is_plotted(kernik, twins, tmp_path):
    from sbi_twins.report import plot_screen

    pooled = pool_twins(kernik, {"A": twins.iloc[:1], "B": twins.iloc[1:]})
    result = screen(kernik, pooled, IKR_BLOCKER, [0, 300], **SHORT)
    assert list(result.incidence()["cell"]) == ["A", "A", "B", "B"]
    assert list(result.incidence(by_cell=False)["n_cells"]) == [2, 2]
    plot_screen(result, tmp_path / "screen.png", event="abnormal")
    assert (tmp_path / "screen.png").stat().st_size > 10_000
