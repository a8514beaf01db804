"""Drugs as ion-channel block: files in ``drugs/``, and which model parameter each channel scales.

A drug file (TOML, concentrations in nM) gives per blocked channel an IC50, a Hill coefficient
and the source of both::

    name = "dofetilide"
    units = "nM"

    [channels.IKr]
    ic50_nM = 4.87
    hill = 0.93
    source = "Li et al. 2017 ..."

Block is simple pore block (conductance block): at concentration ``D`` a channel's maximal
conductance is multiplied by the fraction of current remaining ``1 / (1 + (D / IC50)^h)``.
Channel names are those of :data:`CHANNELS` (hERG is ``IKr``).

Which parameter a channel name scales is declared by the model, not by code: a model file marks
the parameter with a Myokit meta property ``channel: IKr`` (drugs/README.md). The bundled
Kernik 2019 file, whose sha256 trained estimators record, carries the same declaration in
``drugs/channels/kernik2019.toml`` instead (valid for that exact file only).
"""

from __future__ import annotations

import difflib
import math
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pandas as pd

from .. import _resources
from .._util import check_integer, check_number, is_number
from ..engine import CellModel

__all__ = [
    "CHANNELS",
    "ChannelBlock",
    "Drug",
    "available_drugs",
    "blocked_parameters",
    "channel_parameters",
    "fraction_remaining",
    "load_drug",
]

#: Channel (current) names a drug file or a model declaration may use.
CHANNELS: tuple[str, ...] = (
    "ICaL",
    "ICaT",
    "IK1",
    "IKACh",
    "IKATP",
    "IKr",
    "IKs",
    "IKur",
    "INa",
    "INaL",
    "If",
    "Ito",
)
#: The Myokit meta property that declares a parameter's channel in a model file.
CHANNEL_META_KEY = "channel"
#: Other names of channels, with the name to write instead.
_ALIASES = {"hERG": "IKr", "Kv11.1": "IKr", "Cav1.2": "ICaL", "Nav1.5": "INa", "Kir2.1": "IK1"}
_FIELDS = ("ic50_nM", "hill", "source")
_TOP_LEVEL = ("name", "units", "channels")


def fraction_remaining(dose_nM: np.ndarray | float, ic50_nM, hill) -> np.ndarray:
    """Fraction of current left by pore block, ``1 / (1 + (dose / IC50)^hill)`` (broadcast)."""
    ratio = np.asarray(dose_nM, dtype=float) / np.asarray(ic50_nM, dtype=float)
    return 1.0 / (1.0 + ratio ** np.asarray(hill, dtype=float))


@dataclass(frozen=True)
class ChannelBlock:
    """A drug's block of one channel: IC50 (nM), Hill coefficient and where they come from."""

    ic50_nM: float
    hill: float
    source: str


@dataclass(frozen=True)
class Drug:
    """A drug: its name and the channels it blocks (see the module docstring).

    Parameters
    ----------
    name : str
        The drug's name.
    channels : mapping of str to ChannelBlock
        Blocked channels (names from :data:`CHANNELS`); stored read-only.
    source_file : str
        The file the drug was read from ("" if built in code).
    """

    name: str
    channels: Mapping[str, ChannelBlock]
    source_file: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not self.channels:
            raise ValueError(f"drug {self.name!r} blocks no channel")
        for channel, block in self.channels.items():
            _check_channel_name(channel, f"drug {self.name!r}")
            for value, what in ((block.ic50_nM, "ic50_nM"), (block.hill, "hill")):
                if not (is_number(value) and math.isfinite(value) and value > 0):
                    raise ValueError(
                        f"drug {self.name!r}, {channel}: {what} must be a finite number > 0, "
                        f"got {value!r}"
                    )
        object.__setattr__(self, "channels", MappingProxyType(dict(self.channels)))

    def __repr__(self) -> str:
        return f"Drug({self.name!r}, blocks {', '.join(self.channels)})"

    def to_dict(self) -> dict:
        """A JSON-able record: the name and each channel's IC50, Hill coefficient and source."""
        return {"name": self.name, "channels": {c: asdict(b) for c, b in self.channels.items()}}

    def block(self, dose_nM: float) -> dict[str, float]:
        """Fraction of each blocked channel's current remaining at ``dose_nM`` (nM, >= 0)."""
        dose = check_number("dose_nM", dose_nM, minimum=0.0)
        return {
            channel: float(fraction_remaining(dose, b.ic50_nM, b.hill))
            for channel, b in self.channels.items()
        }

    def potencies(
        self,
        n: int,
        seed: int | np.random.Generator | None,
        *,
        ic50_log10_sd: float = 0.0,
        hill_log_sd: float = 0.0,
    ) -> pd.DataFrame:
        """IC50 and Hill coefficient of every blocked channel for ``n`` twins, with spread.

        Per twin and channel, ``log10(IC50)`` is normal around the file's value with standard
        deviation `ic50_log10_sd`, and the Hill coefficient is the file's value times a
        log-normal factor ``exp(N(0, hill_log_sd^2))`` (so it stays positive). With both zero
        every row is the file's values. Draw once per twin and use the same draw at every dose,
        so that each twin has one dose-response curve.

        Parameters
        ----------
        n : int
            Number of twins.
        seed : int, numpy.random.Generator or None
            Seed of the draws.
        ic50_log10_sd, hill_log_sd : float
            Spreads (>= 0), e.g. 0.2 for a factor of about 1.6 on the IC50.

        Returns
        -------
        pandas.DataFrame
            (n, 2 C): columns ``<channel>.ic50_nM`` and ``<channel>.hill``.
        """
        check_integer("n", n, minimum=1, what="twins")
        sd_ic50 = check_number("ic50_log10_sd", ic50_log10_sd, minimum=0.0)
        sd_hill = check_number("hill_log_sd", hill_log_sd, minimum=0.0)
        rng = np.random.default_rng(seed)
        columns = {}
        for channel, b in self.channels.items():
            columns[f"{channel}.ic50_nM"] = b.ic50_nM * 10.0 ** (sd_ic50 * rng.standard_normal(n))
            columns[f"{channel}.hill"] = b.hill * np.exp(sd_hill * rng.standard_normal(n))
        return pd.DataFrame(columns)


def available_drugs() -> list[str]:
    """Names of the bundled drugs (files in ``drugs/``)."""
    return _resources.available("drugs", ".toml")


def load_drug(name_or_path: str | os.PathLike) -> Drug:
    """Load a drug by bundled name (e.g. ``"dofetilide"``, ``"E-4031"``) or a ``.toml`` path.

    Bundled names are matched without regard to case.

    Raises
    ------
    FileNotFoundError
        Unknown bundled name (the bundled drugs are listed) or missing file.
    ValueError
        Invalid file, with the file and, where it can be found, the line: TOML syntax, unknown
        keys or fields (close names suggested), units other than nM, unknown channel names, an
        IC50 or Hill coefficient that is not a finite number > 0 (NaN, inf, 0, negative), or a
        missing source.
    """
    try:
        path = _resources.resolve(name_or_path, "drugs", ".toml")
    except FileNotFoundError as error:
        lowered = os.fspath(name_or_path).lower()
        bundled = None if isinstance(name_or_path, os.PathLike) else lowered
        if bundled not in available_drugs():
            raise error from None
        path = _resources.resolve(bundled, "drugs", ".toml")
    text = path.read_text()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: invalid TOML: {e}") from None
    return _parse_drug(data, text, path)


def _parse_drug(data: dict, text: str, path: Path) -> Drug:
    unknown = sorted(set(data) - set(_TOP_LEVEL))
    if unknown:
        key = unknown[0]
        raise ValueError(
            f"{_where(path, text, key)}: unknown key {key!r}{_did_you_mean(key, _TOP_LEVEL)}; "
            f"a drug file has {', '.join(map(repr, _TOP_LEVEL))}"
        )
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{_where(path, text, 'name')}: missing 'name = \"<drug name>\"'")
    units = data.get("units")
    if units != "nM":
        raise ValueError(
            f"{_where(path, text, 'units')}: units must be \"nM\" (concentrations and IC50 in "
            f"nanomolar), got {units!r}; convert the IC50s (1 uM = 1000 nM)"
        )
    channels = data.get("channels")
    if not isinstance(channels, dict) or not channels:
        raise ValueError(f"{path}: no [channels.<name>] tables (e.g. [channels.IKr])")
    blocks = {}
    for channel, entry in channels.items():
        where = _where(path, text, channel, table=True)
        _check_channel_name(channel, where)
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: channel {channel!r} must be a table of {_FIELDS}")
        blocks[channel] = _parse_block(entry, f"{where} ([channels.{channel}])")
    return Drug(name.strip(), blocks, str(path))


def _parse_block(entry: dict, where: str) -> ChannelBlock:
    unknown = sorted(set(entry) - set(_FIELDS))
    if unknown:
        key = unknown[0]
        raise ValueError(f"{where}: unknown field {key!r}{_did_you_mean(key, _FIELDS)}")
    missing = [f for f in _FIELDS if f not in entry]
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing}; every channel needs {_FIELDS}")
    values = {}
    for key in ("ic50_nM", "hill"):
        value = entry[key]
        if not (is_number(value) and math.isfinite(value) and value > 0):
            raise ValueError(f"{where}: {key} must be a finite number > 0, got {value!r}")
        values[key] = float(value)
    source = entry["source"]
    if not isinstance(source, str) or not source.strip():
        raise ValueError(f"{where}: 'source' must say where the values come from")
    return ChannelBlock(values["ic50_nM"], values["hill"], source.strip())


def _check_channel_name(channel: str, where: str) -> None:
    if channel in CHANNELS:
        return
    if channel in _ALIASES:
        hint = f"; write it as {_ALIASES[channel]!r}"
    else:
        hint = _did_you_mean(channel, CHANNELS)
    raise ValueError(
        f"{where}: unknown channel {channel!r}{hint}. Channels: {', '.join(CHANNELS)}"
    )


def _did_you_mean(name: str, choices: Iterable[str]) -> str:
    lowered = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.6)
    return f" (did you mean {lowered[close[0]]!r}?)" if close else ""


def _where(path: Path, text: str, key: str, *, table: bool = False) -> str:
    """``"<path>, line <n>"`` for a top-level key or a ``[channels.<key>]`` table, or the path
    alone if the line cannot be found (e.g. an inline table).
    """
    name = re.escape(key)
    if table:
        pattern = rf'^[ \t]*\[[ \t]*channels[ \t]*\.[ \t]*(?:"{name}"|{name})[ \t]*\]'
    else:
        pattern = rf'^[ \t]*(?:"{name}"|{name})[ \t]*='
    match = re.search(pattern, text, flags=re.M)
    if match is None:
        return str(path)
    return f"{path}, line {text.count(chr(10), 0, match.start()) + 1}"


# -- which parameter a channel scales -----------------------------------------------------------


def channel_parameters(model: CellModel) -> dict[str, tuple[str, ...]]:
    """The parameters each ion channel of a model scales, as the model declares them.

    A model file declares a channel with the Myokit meta property ``channel: <name>`` under a
    literal parameter (a conductance, permeability or scale), e.g.::

        g_Kr = 0.218025
            in [mS/uF]
            channel: IKr

    Several parameters may declare the same channel (all are scaled). A bundled model whose file
    declares none is looked up in ``drugs/channels/<model name>.toml``, which applies only to
    the file with the sha256 it states.

    Returns
    -------
    dict of str to tuple of str
        Channel name -> parameter names (``component.variable``), channels in file order.

    Raises
    ------
    ValueError
        The model declares no channel, declares one on a variable that is not a parameter or
        with an unknown name, or its stand-in declaration was made for another version of the
        file.
    """
    declared: dict[str, list[str]] = {}
    for variable in model._myokit_model.variables(deep=True):
        if CHANNEL_META_KEY not in variable.meta:
            continue
        name, channel = variable.qname(), variable.meta[CHANNEL_META_KEY].strip()
        where = f"model file {model.path}, variable {name}"
        _check_channel_name(channel, where)
        if name not in model.parameter_names:
            raise ValueError(
                f"{where}: '{CHANNEL_META_KEY}: {channel}' must annotate a parameter (a "
                "variable set to a literal number), not a derived variable"
            )
        declared.setdefault(channel, []).append(name)
    if declared:
        return {channel: tuple(names) for channel, names in declared.items()}
    stand_in = _resources.bundled_dir("drugs") / "channels" / f"{model.name}.toml"
    if stand_in.is_file():
        return _stand_in_channels(model, stand_in)
    raise ValueError(
        f"model '{model.name}' ({model.path}) declares no ion channels, so drugs cannot act "
        f"on it; add '{CHANNEL_META_KEY}: IKr' (etc.) under the conductance parameters of the "
        "model file (drugs/README.md)"
    )


def _stand_in_channels(model: CellModel, path: Path) -> dict[str, tuple[str, ...]]:
    data = tomllib.loads(path.read_text())
    if data.get("model_sha256") != model.file_hash:
        raise ValueError(
            f"{path} declares the channels of another version of {model.name}.mmt (sha256 "
            f"{str(data.get('model_sha256'))[:12]}..., this file {model.file_hash[:12]}...); "
            f"annotate the model file itself with '{CHANNEL_META_KEY}: <name>' (drugs/README.md)"
        )
    channels = {}
    for channel, names in data.get("channels", {}).items():
        _check_channel_name(channel, str(path))
        names = (names,) if isinstance(names, str) else tuple(names)
        missing = [n for n in names if n not in model.parameter_names]
        if missing:
            raise ValueError(f"{path}: {channel}: model '{model.name}' has no parameter {missing}")
        channels[channel] = names
    return channels


def blocked_parameters(
    model: CellModel,
    params: pd.DataFrame,
    fractions: Mapping[str, np.ndarray | float],
    channels: Mapping[str, tuple[str, ...]] | None = None,
) -> pd.DataFrame:
    """``params`` with each channel's parameters multiplied by its fraction of current remaining.

    Parameters
    ----------
    model : CellModel
        Supplies the default of a parameter that ``params`` does not list.
    params : pandas.DataFrame
        One row per cell.
    fractions : mapping of str to float or array of shape (N,)
        Channel name -> fraction remaining (e.g. :meth:`Drug.block`).
    channels : mapping, optional
        Channel -> parameters (default: :func:`channel_parameters` of `model`).

    Returns
    -------
    pandas.DataFrame
        A copy of `params` with the scaled parameters (added where they were missing).

    Raises
    ------
    ValueError
        A channel the model does not declare (the declared ones are listed).
    """
    channels = channel_parameters(model) if channels is None else channels
    out = params.copy()
    defaults = dict(zip(model.parameter_names, model.default_parameters, strict=True))
    for channel, fraction in fractions.items():
        if channel not in channels:
            raise ValueError(
                f"model '{model.name}' declares no parameter for channel {channel!r}; it "
                f"declares {', '.join(channels) or 'none'}"
            )
        for name in channels[channel]:
            base = out[name].to_numpy(float) if name in out else defaults[name]
            out[name] = base * np.asarray(fraction, dtype=float)
    return out
