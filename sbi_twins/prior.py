"""Priors over named model parameters, read from TOML files (``priors/*.toml``).

A prior file names a model and lists the parameters that vary; every other parameter of the model
keeps the value in the model file. Each varying parameter is ``baseline x multiplier``, where the
baseline comes from the model file (or an explicit ``baseline``) and the multiplier follows one of

``uniform``
    U(low, high).
``log_uniform``
    log-uniform on [low, high] (0 < low < high).
``log_normal``
    log(multiplier) ~ N(0, sigma): median 1, unbounded.
``fixed``
    not varied; ``value`` (absolute) replaces the model file's value.

For inference the varying parameters are also offered on an unbounded space ``z`` (one coordinate
per parameter): ``z = logit`` of the position within the bounds for (log-)uniform multipliers,
``z = log(multiplier) / sigma`` for log-normal ones. Under the prior, ``z`` is standard logistic or
standard normal, and every ``z`` maps back inside the bounds, so a normalising flow trained on ``z``
can never propose parameters outside them.

Recording (nuisance) parameters of the amplifier model (:mod:`sbi_twins.recording`) go in
``[[recording]]`` entries with the same fields. Their names are ``recording.<name>`` (listed in
:data:`sbi_twins.recording.IDEAL`), and their distributions are on the value itself (in the unit
in the name), not on a multiplier: ``uniform`` may then include negative values. Recording
parameters not listed keep their ideal-clamp values.

A prior's draws (:meth:`Prior.sample`) hold every parameter a simulation needs: the varying ones
and the fixed ones. They go whole into the cell simulations (``CellModel.simulate_vc`` and
``simulate_ap``, which ignore the ``recording.*`` columns: an ideal clamp) and into
:func:`sbi_twins.recording.simulate_recordings` (which uses them).

A file may start from another prior with ``extends = "<bundled name or .toml path>"`` (a relative
path is relative to the file): it inherits that prior's model, description and entries, and each
of its own entries replaces the inherited entry of the same name (or adds one). This is how a
prior for one rig differs from a general one in a line or two.

Example file::

    model = "kernik2019"
    description = "..."

    [[parameter]]
    name = "ina.g_Na"
    distribution = "uniform"
    low = 0.6
    high = 1.4

    [[recording]]
    name = "rs_MOhm"
    distribution = "uniform"
    low = 5
    high = 40
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import special

from . import _resources
from ._util import check_integer
from .recording.parameters import IDEAL, PREFIX, RANGES

DISTRIBUTIONS = ("uniform", "log_uniform", "log_normal", "fixed")
_FIELDS = {
    "uniform": {"low", "high"},
    "log_uniform": {"low", "high"},
    "log_normal": {"sigma"},
    "fixed": set(),
}
_OPTIONAL = {"name", "distribution", "baseline", "value"}
#: Top-level keys of a prior file.
_SECTIONS = {"model", "description", "extends", "parameter", "recording"}


@dataclass(frozen=True)
class ParameterPrior:
    """The prior of one named parameter (see the module docstring for the distributions)."""

    name: str
    distribution: str
    baseline: float
    low: float = math.nan
    high: float = math.nan
    sigma: float = math.nan
    value: float = math.nan


class Prior:
    """Independent priors on named parameters of one model.

    Parameters
    ----------
    model : str
        Name of the model file the parameters belong to.
    parameters : list of ParameterPrior
        One entry per listed parameter (varying or fixed).
    description, source : str
        Free text and the file the prior was read from.
    """

    def __init__(
        self, model: str, parameters: list[ParameterPrior], description: str = "", source: str = ""
    ):
        self.model = model
        self.description = description
        self.source = source
        self.parameters = tuple(parameters)
        varying = [p for p in parameters if p.distribution != "fixed"]
        self.names: tuple[str, ...] = tuple(p.name for p in varying)
        self.baselines = np.array([p.baseline for p in varying])
        self.fixed: dict[str, float] = {
            p.name: p.value for p in parameters if p.distribution == "fixed"
        }
        self._kind = np.array([DISTRIBUTIONS.index(p.distribution) for p in varying])
        self._low = np.array([p.low for p in varying])
        self._high = np.array([p.high for p in varying])
        self._sigma = np.array([p.sigma for p in varying])
        self._uniform = self._kind == 0
        self._log_uniform = self._kind == 1
        self._log_normal = self._kind == 2

    def __repr__(self) -> str:
        return f"Prior({self.model!r}, {len(self.names)} varying, {len(self.fixed)} fixed)"

    @property
    def model_names(self) -> tuple[str, ...]:
        """Varying model parameters (the cell's biology)."""
        return tuple(n for n in self.names if not n.startswith(PREFIX))

    @property
    def recording_names(self) -> tuple[str, ...]:
        """Varying recording (nuisance) parameters, ``recording.<name>``."""
        return tuple(n for n in self.names if n.startswith(PREFIX))

    def without_recording(self) -> Prior:
        """The prior without its recording parameters: an ideal clamp."""
        kept = [p for p in self.parameters if not p.name.startswith(PREFIX)]
        return Prior(self.model, kept, self.description + " (ideal clamp)", self.source)

    def sample(self, n: int, seed: int | np.random.Generator | None = None) -> pd.DataFrame:
        """Draw ``n`` parameter sets, ready to simulate.

        Parameters
        ----------
        n : int
            Number of draws.
        seed : int, numpy.random.Generator or None
            Seed of the draws (None: fresh entropy).

        Returns
        -------
        pandas.DataFrame
            (n, D + F), values in model units: the varying parameters (:attr:`names`), then a
            constant column for every fixed one (:attr:`fixed`).
        """
        check_integer("n", n, minimum=1, what="draws")
        rng = np.random.default_rng(seed)
        u = rng.random((n, len(self.names)))
        z = np.where(self._log_normal, rng.standard_normal(u.shape), np.log(u) - np.log1p(-u))
        return self.with_fixed(pd.DataFrame(self.from_unbounded(z), columns=list(self.names)))

    def with_fixed(self, theta: pd.DataFrame) -> pd.DataFrame:
        """``theta`` plus a constant column for every fixed parameter: what a simulation needs
        (fixed model parameters may differ from the model file, fixed recording parameters
        from the ideal clamp).
        """
        return theta.assign(**{name: value for name, value in self.fixed.items()})

    # -- moments (closed forms) ------------------------------------------------------------------
    def mean(self) -> pd.Series:
        """Mean of each varying parameter under the prior (exact), indexed by :attr:`names`."""
        return pd.Series(self.baselines * self._multiplier_moments()[0], index=list(self.names))

    def variance(self) -> pd.Series:
        """Variance of each varying parameter under the prior (exact), indexed by :attr:`names`:
        the reference of posterior contraction.
        """
        first, second = self._multiplier_moments()
        return pd.Series(self.baselines**2 * (second - first**2), index=list(self.names))

    def quantile(self, q: float) -> pd.Series:
        """The ``q`` quantile of each varying parameter under the prior (exact).

        :meth:`from_unbounded` is monotone in each coordinate (increasing, or decreasing for a
        negative baseline), so it carries a quantile of ``z`` (standard logistic or standard
        normal) to the parameter.
        """
        if not 0 < q < 1:
            raise ValueError(f"q must be in (0, 1), got {q!r}")
        q_z = np.where(self.baselines < 0, 1.0 - q, q)
        z = np.where(self._log_normal, special.ndtri(q_z), special.logit(q_z))
        return pd.Series(self.from_unbounded(z[None])[0], index=list(self.names))

    def _multiplier_moments(self) -> tuple[np.ndarray, np.ndarray]:
        """``E[m]`` and ``E[m^2]`` of each multiplier: U(a, b); exp(U(log a, log b)), whose
        k-th moment is ``(b^k - a^k) / (k log(b / a))``; and exp(N(0, sigma^2)), whose k-th
        moment is ``exp(k^2 sigma^2 / 2)``.
        """
        a, b, sigma = self._low, self._high, self._sigma
        with np.errstate(divide="ignore", invalid="ignore"):  # np.where evaluates all branches
            log_width = np.log(b) - np.log(a)
            moments = [
                np.where(
                    self._uniform,
                    (b ** (k + 1) - a ** (k + 1)) / ((k + 1) * (b - a)),
                    np.where(
                        self._log_uniform,
                        (b**k - a**k) / (k * log_width),
                        np.exp(0.5 * k**2 * sigma**2),
                    ),
                )
                for k in (1, 2)
            ]
        return moments[0], moments[1]

    # -- multipliers <-> z ---------------------------------------------------------------------
    def _position(self, m: np.ndarray) -> np.ndarray:
        """Position of the multipliers within their bounds (0..1) or log(m)/sigma (log-normal)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            log_m = np.log(m)
            return np.where(
                self._uniform,
                (m - self._low) / (self._high - self._low),
                np.where(
                    self._log_uniform,
                    (log_m - np.log(self._low)) / (np.log(self._high) - np.log(self._low)),
                    log_m / self._sigma,
                ),
            )

    def to_unbounded(self, theta: np.ndarray | pd.DataFrame) -> np.ndarray:
        """Map parameter values, shape (N, D) in :attr:`names` order, to the unbounded ``z``."""
        u = self._position(self._as_array(theta) / self.baselines)
        with np.errstate(divide="ignore", invalid="ignore"):  # np.where evaluates both branches
            return np.where(self._log_normal, u, np.log(u) - np.log1p(-u))

    def from_unbounded(self, z: np.ndarray) -> np.ndarray:
        """Map ``z`` (N, D) back to parameter values; (log-)uniform ones always within bounds."""
        z = np.asarray(z, dtype=float)
        u = 0.5 * (1.0 + np.tanh(0.5 * z))  # the logistic sigmoid, without overflow warnings
        with np.errstate(divide="ignore", invalid="ignore"):  # np.where evaluates all branches
            m = self._from_position(u, z)
        return m * self.baselines

    def _from_position(self, u: np.ndarray, z: np.ndarray) -> np.ndarray:
        return np.where(
            self._uniform,
            self._low + u * (self._high - self._low),
            np.where(
                self._log_uniform,
                np.exp(np.log(self._low) + u * (np.log(self._high) - np.log(self._low))),
                np.exp(z * self._sigma),
            ),
        )

    # -- distribution ----------------------------------------------------------------------------
    def log_prob(self, theta: np.ndarray | pd.DataFrame) -> np.ndarray:
        """Log density of parameter sets (N, D) in model units; -inf outside the bounds."""
        theta = self._as_array(theta)
        m = theta / self.baselines
        with np.errstate(divide="ignore", invalid="ignore"):
            log_m = np.log(m)
            width = self._high - self._low
            log_width = np.log(self._high) - np.log(self._low)
            density = np.where(
                self._uniform,
                -np.log(width),
                np.where(
                    self._log_uniform,
                    -log_m - np.log(log_width),
                    -0.5 * (log_m / self._sigma) ** 2
                    - np.log(self._sigma * np.sqrt(2 * np.pi))
                    - log_m,
                ),
            )
            # bounds compared in model units, as from_unbounded produces them (exactly b*low
            # at the lower end; theta/b might round to just below low)
            lo = np.minimum(self.baselines * self._low, self.baselines * self._high)
            hi = np.maximum(self.baselines * self._low, self.baselines * self._high)
            inside = self._log_normal | ((theta >= lo) & (theta <= hi))
            # uniform recording values may be negative; every other density needs m > 0
            density = np.where(inside & ((m > 0) | self._uniform), density, -np.inf)
        return (density - np.log(np.abs(self.baselines))).sum(axis=1)

    @property
    def log_normal(self) -> np.ndarray:
        """True for log-normal parameters (their ``z`` is standard normal), False for
        (log-)uniform ones (``z`` is the logit of the position within the bounds).
        """
        return self._log_normal.copy()

    # -- helpers -------------------------------------------------------------------------------
    def _as_array(self, theta: np.ndarray | pd.DataFrame) -> np.ndarray:
        if isinstance(theta, pd.DataFrame):
            missing = [n for n in self.names if n not in theta.columns]
            if missing:
                raise ValueError(f"parameter values lack columns {missing}")
            theta = theta[list(self.names)].to_numpy()
        arr = np.atleast_2d(np.asarray(theta, dtype=float))
        if arr.shape[-1] != len(self.names):
            raise ValueError(
                f"expected {len(self.names)} parameter columns ({', '.join(self.names[:3])}, ...), "
                f"got shape {np.shape(theta)}"
            )
        return arr

    def to_dict(self) -> dict:
        """Plain JSON-able definition (for manifests)."""
        return {
            "model": self.model,
            "description": self.description,
            "parameters": [
                {k: v for k, v in asdict(p).items() if not (isinstance(v, float) and math.isnan(v))}
                for p in self.parameters
            ],
        }

    @classmethod
    def from_dict(cls, data: dict) -> Prior:
        """The prior of a :meth:`to_dict` record (as stored in manifests).

        A record that also holds a ``hash`` (manifests store one) must match it, so a record
        edited by hand is refused instead of silently describing another prior.
        """
        try:
            entries = [ParameterPrior(**p) for p in data["parameters"]]
            prior = cls(data["model"], entries, data.get("description", ""))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"not a prior record ({type(e).__name__}: {e})") from None
        if "hash" in data and prior.content_hash() != data["hash"]:
            raise ValueError(f"the record of the prior for {prior.model!r} does not match its hash")
        return prior

    def content_hash(self) -> str:
        """sha256 of the canonical definition (independent of file formatting and location)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


def load_prior(name_or_path: str | os.PathLike) -> Prior:
    """Load a prior by bundled name (e.g. ``"kernik2019_pm40"``) or from a ``.toml`` path.

    Baselines come from the model file the prior names, which is loaded (parsed, not compiled).

    Raises
    ------
    FileNotFoundError
        Unknown bundled name (the available ones are listed) or missing file.
    ValueError
        Invalid file: syntax, unknown distribution or field, inverted or non-positive bounds,
        duplicate parameters, or a parameter the model does not have (close names suggested).
    """
    from .engine import load_model

    path = _resources.resolve(name_or_path, "priors", ".toml")
    data = _read_prior_file(path, ())
    if "model" not in data:
        raise ValueError(f"{path}: missing 'model = \"<model name or .mmt path>\"'")
    entries = data.get("parameter", [])
    if not entries:
        raise ValueError(f"{path}: no [[parameter]] entries")
    model = load_model(data["model"])
    defaults = dict(zip(model.parameter_names, model.default_parameters, strict=True))
    recording_defaults = {PREFIX + name: value for name, value in IDEAL.items()}
    parameters, seen = [], set()
    sections = [("parameter", e, defaults) for e in entries]
    sections += [("recording", e, recording_defaults) for e in data.get("recording", [])]
    for k, (section, entry, known) in enumerate(sections, start=1):
        if section == "recording" and isinstance(entry.get("name"), str):
            entry = {**entry, "name": PREFIX + entry["name"].removeprefix(PREFIX)}
        parameters.append(_parse_entry(entry, k, path, known, section))
        if parameters[-1].name in seen:
            raise ValueError(f"{path}: parameter '{parameters[-1].name}' is listed twice")
        seen.add(parameters[-1].name)
    return Prior(str(data["model"]), parameters, str(data.get("description", "")), str(path))


def _read_prior_file(path: Path, chain: tuple[Path, ...]) -> dict:
    """The TOML of a prior file, with the entries of the prior it ``extends`` (recursively)
    merged in: an entry of this file replaces the base's entry of the same name.
    """
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: invalid TOML: {e}") from None
    unknown_sections = sorted(set(data) - _SECTIONS)
    if unknown_sections:
        raise ValueError(
            f"{path}: unknown key(s) {unknown_sections}; a prior file has 'model', 'description', "
            "'extends', [[parameter]] and [[recording]] entries"
        )
    if "extends" not in data:
        return data
    if path in chain:
        raise ValueError(f"{path}: 'extends' loops back to itself ({' -> '.join(map(str, chain))})")
    target = data.pop("extends")
    if not isinstance(target, str):
        raise ValueError(f"{path}: 'extends' must be a bundled prior name or a .toml path")
    if target.endswith(".toml") and not Path(target).is_absolute():
        target = path.parent / target  # a relative path is relative to this file
    base_path = _resources.resolve(target, "priors", ".toml")
    base = _read_prior_file(base_path, (*chain, path))
    if "model" in data and data["model"] != base.get("model"):
        raise ValueError(
            f"{path}: model {data['model']!r} differs from {base.get('model')!r} of the prior it "
            f"extends ({base_path})"
        )
    for section in ("parameter", "recording"):
        own = data.get(section, [])
        replaced = {e.get("name") for e in own}
        kept = [e for e in base.get(section, []) if e.get("name") not in replaced]
        data[section] = kept + own
    return {**base, **data}


def _parse_entry(
    entry: dict, k: int, path: Path, defaults: dict[str, float], section: str
) -> ParameterPrior:
    where = f"{path}: [[{section}]] {k}"
    name = entry.get("name")
    if not isinstance(name, str):
        raise ValueError(f"{where}: missing 'name'")
    where += f" ('{name}')"
    if name not in defaults:
        close = difflib.get_close_matches(name, list(defaults), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        owner = "the recording model" if section == "recording" else "the model"
        raise ValueError(f"{where}: {owner} has no parameter '{name}'{hint}")
    distribution = entry.get("distribution")
    if distribution not in DISTRIBUTIONS:
        raise ValueError(
            f"{where}: distribution must be one of {', '.join(DISTRIBUTIONS)}, got {distribution!r}"
        )
    allowed = _FIELDS[distribution] | _OPTIONAL
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown} for '{distribution}'")
    missing = sorted(_FIELDS[distribution] - set(entry))
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing} for '{distribution}'")
    values = {}
    for field in (_FIELDS[distribution] | {"baseline", "value"}) & set(entry):
        value = entry[field]
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not numeric or not math.isfinite(value):
            raise ValueError(f"{where}: '{field}' must be a finite number, got {value!r}")
        values[field] = float(value)
    _check_bounds(distribution, values, where)
    if section == "recording":
        return _recording_entry(name, distribution, values, where)
    baseline = values.pop("baseline", float(defaults[name]))
    if distribution != "fixed" and baseline == 0:
        raise ValueError(f"{where}: baseline is 0, so a multiplier cannot vary it; give 'baseline'")
    if distribution == "uniform" and values["low"] < 0:
        raise ValueError(f"{where}: a multiplier range must not include negative values")
    if distribution == "fixed":
        values["value"] = values.get("value", baseline)
    return ParameterPrior(name, distribution, baseline, **values)


def _check_bounds(distribution: str, values: dict, where: str) -> None:
    """Bounds in order, positive for log-uniform, sigma positive."""
    if "low" in values and not values["low"] < values["high"]:
        low, high = values["low"], values["high"]
        raise ValueError(f"{where}: bounds inverted or empty (low {low} >= high {high})")
    if distribution == "log_uniform" and values["low"] <= 0:
        raise ValueError(f"{where}: log_uniform needs 0 < low, got {values['low']}")
    if distribution == "log_normal" and values["sigma"] <= 0:
        raise ValueError(f"{where}: sigma must be > 0, got {values['sigma']}")


def _recording_entry(name: str, distribution: str, values: dict, where: str) -> ParameterPrior:
    """A recording parameter: the distribution is on the value (baseline 1), within its range."""
    if "baseline" in values:
        raise ValueError(f"{where}: recording parameters take no 'baseline'")
    lowest, highest, closed = RANGES[name.removeprefix(PREFIX)]
    ends = [values[f] for f in ("low", "high", "value") if f in values]
    for end in ends:
        inside = lowest <= end <= highest if closed else lowest < end < highest
        if not inside:
            raise ValueError(
                f"{where}: {end} is outside the valid range of '{name}' "
                f"({lowest} to {highest}{', inclusive' if closed else ''})"
            )
    if distribution == "fixed" and "value" not in values:
        values["value"] = IDEAL[name.removeprefix(PREFIX)]
    return ParameterPrior(name, distribution, 1.0, **values)
