"""Drug files, block, potency spread, and the channel declarations of models."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sbi_twins import Drug, load_drug, load_model
from sbi_twins.twins.drugs import (
    CHANNELS,
    ChannelBlock,
    available_drugs,
    blocked_parameters,
    channel_parameters,
    fraction_remaining,
)

REPO = Path(__file__).resolve().parent.parent
CIPA_TRAINING = ("bepridil", "chlorpromazine", "cisapride", "diltiazem", "dofetilide",
                 "mexiletine", "ondansetron", "quinidine", "ranolazine", "sotalol",
                 "terfenadine", "verapamil")


def test_every_bundled_drug_loads_with_a_source_for_every_channel():
    names = available_drugs()
    assert "e-4031" in names and set(CIPA_TRAINING) <= set(names) and len(names) == 29
    for name in names:
        drug = load_drug(name)
        assert drug.channels and drug.source_file.endswith(f"{name}.toml")
        for channel, block in drug.channels.items():
            assert channel in CHANNELS and block.ic50_nM > 0 and block.hill > 0
            assert len(block.source) > 20, (name, channel)


def test_bundled_values_are_the_published_ones():
    # Li et al. 2017 (FDA/CiPA Li2017_IC50.csv): dofetilide hERG 4.87 nM, h 0.93; no IKs value
    dofetilide = load_drug("dofetilide")
    assert dofetilide.channels["IKr"] == ChannelBlock(4.87, 0.93, dofetilide.channels["IKr"].source)
    assert "IKs" not in dofetilide.channels
    # a validation drug: INa left out (its fit sat at the 7.943e9 nM bound)
    assert set(load_drug("pimozide").channels) == {"IKr", "ICaL", "INaL"}
    assert set(load_drug("E-4031").channels) == {"IKr"}


def test_block_is_the_hill_equation():
    drug = Drug("test", {"IKr": ChannelBlock(100.0, 2.0, "test"), "ICaL": ChannelBlock(50, 1, "t")})
    assert drug.block(0) == {"IKr": 1.0, "ICaL": 1.0}
    block = drug.block(200.0)
    assert block["IKr"] == pytest.approx(1 / (1 + 4)) and block["ICaL"] == pytest.approx(0.2)
    assert load_drug("e-4031").block(294.0)["IKr"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="dose_nM"):
        drug.block(-1.0)
    with pytest.raises(ValueError, match="dose_nM"):
        drug.block(math.nan)


def test_bundled_names_are_found_whatever_their_case_and_unknown_ones_are_listed():
    assert load_drug("E-4031") == load_drug("e-4031")
    assert load_drug("Dofetilide").name == "dofetilide"
    with pytest.raises(FileNotFoundError, match="unknown drug 'dofetilid'.*dofetilide"):
        load_drug("dofetilid")
    with pytest.raises(FileNotFoundError, match="not found"):
        load_drug("no/such/drug.toml")


GOOD = """name = "testdrug"
units = "nM"

[channels.IKr]
ic50_nM = 10
hill = 1
source = "made up for a test"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "testdrug.toml"
    path.write_text(text)
    return path


def test_a_valid_file_loads(tmp_path):
    drug = load_drug(write(tmp_path, GOOD))
    assert drug.name == "testdrug" and drug.channels["IKr"].ic50_nM == 10.0


@pytest.mark.parametrize(
    "old, new, message",
    [
        ('units = "nM"', 'unit = "nM"', r"line 2: unknown key 'unit' \(did you mean 'units'\?\)"),
        ('units = "nM"', 'units = "uM"', r"line 2: units must be \"nM\""),
        ("[channels.IKr]", "[channels.hERG]", r"line 4: unknown channel 'hERG'; write it as 'IKr'"),
        ("[channels.IKr]", "[channels.IKR]", r"unknown channel 'IKR' \(did you mean 'IKr'\?\)"),
        ("ic50_nM = 10", "ic50 = 10", r"line 4 \(\[channels.IKr\]\): unknown field 'ic50' \(did"),
        ('source = "made up for a test"', "", r"missing field\(s\) \['source'\]"),
        ('source = "made up for a test"', 'source = " "', "'source' must say where"),
        ("ic50_nM = 10", "ic50_nM = nan", "ic50_nM must be a finite number > 0, got nan"),
        ("ic50_nM = 10", "ic50_nM = inf", "ic50_nM must be a finite number > 0, got inf"),
        ("ic50_nM = 10", "ic50_nM = 0", "ic50_nM must be a finite number > 0, got 0"),
        ("hill = 1", "hill = -1", "hill must be a finite number > 0, got -1"),
        ("hill = 1", 'hill = "1"', "hill must be a finite number > 0, got '1'"),
        ('name = "testdrug"', "", "missing 'name"),
        ("ic50_nM = 10", "ic50_nM = = 10", "invalid TOML"),
    ],
)
def test_invalid_files_are_refused_with_file_line_and_hint(tmp_path, old, new, message):
    path = write(tmp_path, GOOD.replace(old, new))
    with pytest.raises(ValueError, match=message) as info:
        load_drug(path)
    assert str(path) in str(info.value)


def test_a_file_without_channels_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"no \[channels.<name>\] tables"):
        load_drug(write(tmp_path, 'name = "x"\nunits = "nM"\n'))


def test_potency_spread_is_seeded_and_centred_on_the_file_values():
    drug = load_drug("dofetilide")
    fixed = drug.potencies(3, seed=0)
    assert (fixed["IKr.ic50_nM"] == 4.87).all() and (fixed["ICaL.hill"] == 1.16).all()
    spread = drug.potencies(20_000, seed=1, ic50_log10_sd=0.2, hill_log_sd=0.1)
    pd.testing.assert_frame_equal(
        spread, drug.potencies(20_000, seed=1, ic50_log10_sd=0.2, hill_log_sd=0.1)
    )
    log_ic50 = np.log10(spread["IKr.ic50_nM"])
    assert log_ic50.std() == pytest.approx(0.2, rel=0.03)
    assert log_ic50.median() == pytest.approx(np.log10(4.87), abs=0.01)
    assert (spread.filter(like=".hill") > 0).all().all()
    assert np.log(spread["IKr.hill"] / 0.93).std() == pytest.approx(0.1, rel=0.03)
    with pytest.raises(ValueError, match="ic50_log10_sd"):
        drug.potencies(3, seed=0, ic50_log10_sd=-0.1)


def test_fraction_remaining_broadcasts():
    f = fraction_remaining(np.array([0.0, 10.0, 30.0]), np.array([10.0, 10.0, 10.0]), 1.0)
    np.testing.assert_allclose(f, [1.0, 0.5, 0.25])


# -- channel declarations ----------------------------------------------------------------------


def test_kernik_declares_its_channels_through_the_stand_in_file(kernik):
    channels = channel_parameters(kernik)
    assert channels["IKr"] == ("ikr.g_Kr",) and channels["ICaL"] == ("ical.p_CaL",)
    assert set(channels) == {"IKr", "IKs", "ICaL", "INa", "IK1", "If", "Ito", "ICaT"}
    assert all(p in kernik.parameter_names for names in channels.values() for p in names)


def annotated_hh(tmp_path: Path, annotations: dict[str, str], name: str = "hh_test") -> Path:
    """A copy of hh1952.mmt with ``channel:`` meta lines under the given variables' headers."""
    text = (REPO / "simulators" / "hh1952.mmt").read_text()
    for header, channel in annotations.items():
        assert header in text, header
        text = text.replace(header, f"{header}\n    channel: {channel}", 1)
    path = tmp_path / f"{name}.mmt"
    path.write_text(text)
    return path


def test_a_model_file_declares_channels_with_meta_properties(tmp_path):
    path = annotated_hh(tmp_path, {"g_Na = 120\n    in [mS/cm^2]": "INa",
                                   "g_K = 36\n    in [mS/cm^2]": "IKr"})
    model = load_model(path)
    assert channel_parameters(model) == {"INa": ("ina.g_Na",), "IKr": ("ik.g_K",)}
    scaled = blocked_parameters(model, pd.DataFrame({"ik.g_K": [30.0, 40.0]}),
                                {"IKr": np.array([0.5, 0.25]), "INa": 0.1})
    np.testing.assert_allclose(scaled["ik.g_K"], [15.0, 10.0])
    np.testing.assert_allclose(scaled["ina.g_Na"], [12.0, 12.0])  # from the model's default
    with pytest.raises(ValueError, match="declares no parameter for channel 'ICaL'"):
        blocked_parameters(model, scaled, {"ICaL": 0.5})


def test_bad_declarations_are_refused(tmp_path, hh):
    current = "i_Na = g_Na * m^3 * h * (V - E_Na)\n    in [uA/cm^2]"
    derived = load_model(annotated_hh(tmp_path, {current: "INa"}, "hh_derived"))
    with pytest.raises(ValueError, match="must annotate a parameter"):
        channel_parameters(derived)
    typo = load_model(annotated_hh(tmp_path, {"g_Na = 120\n    in [mS/cm^2]": "Ina"}, "hh_typo"))
    with pytest.raises(ValueError, match=r"unknown channel 'Ina' \(did you mean 'INa'\?\)"):
        channel_parameters(typo)
    with pytest.raises(ValueError, match="declares no ion channels.*drugs/README.md"):
        channel_parameters(hh)


def test_the_stand_in_declaration_applies_only_to_the_file_it_was_made_for(tmp_path):
    copy = tmp_path / "kernik2019.mmt"
    copy.write_text((REPO / "simulators" / "kernik2019.mmt").read_text() + "\n# edited\n")
    with pytest.raises(ValueError, match="another version of kernik2019.mmt"):
        channel_parameters(load_model(copy))
