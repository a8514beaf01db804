"""Trained estimators: bundles written by ``sbi-twins train``, loaded safely, fitting recordings."""

from __future__ import annotations

import copy
import functools
import math
import os
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .. import _resources
from .._util import MULTIPLE_RTOL, check_integer, check_number, check_positive
from ..data import Dataset, ObservationScheme
from ..data.dataset import manifest_differences
from ..engine import CellModel, SimulationWarning, load_model
from ..physiology import ViabilityRules, check_viability
from ..prior import Prior
from ..protocol import Protocol
from ..recording import simulate_recordings
from ..recording.alignment import onto_protocol
from ..recording.io import Recording
from .bundle import read_bundle, write_bundle
from .config import TrainingConfig
from .misspecification import (
    ImplausibleRecordingError,
    MisspecificationWarning,
    PredictiveReference,
    Reference,
    beyond_prior_text,
    implausibility,
)
from .networks import build_network
from .posterior import SUMMARY_COLUMNS, CellPosterior, summary_table
from .torch_prior import StandardPrior


class Estimator:
    """An amortised posterior estimator for one model, prior, protocol and observation scheme.

    Use :func:`load_estimator`. A recording is accepted only if it was made with
    :attr:`protocol` and sampled at :attr:`sample_interval_ms` on ``protocol.times(...)``.
    """

    def __init__(
        self,
        path: Path,
        state_dict: dict,
        manifest: dict[str, Any],
        model: CellModel | str | os.PathLike | None = None,
    ):
        self.path = path
        self.manifest = manifest
        self.prior: Prior = Prior.from_dict(manifest["prior"])  # checked against its hash
        self.names: tuple[str, ...] = tuple(manifest["parameter_names"])
        if self.names != self.prior.names:
            raise ValueError(f"{path}: the parameter names do not match the prior's")
        self.protocol = Protocol.from_dict(manifest["protocol"])
        obs = manifest["observation"]
        self.sample_interval_ms: float = obs["sample_interval_ms"]
        self.scheme = ObservationScheme.from_dict(obs, self.protocol)
        config = TrainingConfig.from_dict(manifest["training"])
        self._network = build_network(config, len(self.scheme), self.prior)
        self._network.load_state_dict(state_dict)
        self._network.set_temperature(manifest.get("calibration", {}).get("temperature", 1.0))
        self._network.eval()
        self._z_prior = StandardPrior(self.prior.log_normal)
        self._model_choice = model
        self._cell_model: CellModel | None = None
        self._references: dict[tuple[int | str, int], Reference] = {}

    @property
    def temperature(self) -> float:
        """Temperature of the flows' base distribution (1: as trained; see :meth:`tempered`)."""
        return self._network.temperature

    def tempered(self, temperature: float, note: str = "") -> Estimator:
        """A copy of the estimator with its flows tempered: every member's base distribution
        ``N(0, T^2 I)`` (:class:`~sbi_twins.inference.networks.TemperedNormal`).

        Sampling and :meth:`log_prob` stay one exact, consistent density. ``T`` is chosen on
        fresh simulations by :func:`sbi_twins.diagnostics.calibrate_temperature`; the
        temperature and ``note`` (how it was chosen) are kept in the manifest (:meth:`save`).
        """
        temperature = check_number("temperature", temperature, minimum=0.0, inclusive=False)
        manifest = copy.deepcopy(self.manifest)
        manifest["calibration"] = {"temperature": temperature, "note": note}
        state = {key: value.clone() for key, value in self._network.state_dict().items()}
        tempered = Estimator(self.path, state, manifest, self._model_choice)
        tempered._references = self._references  # the summary network is the same
        return tempered

    def save(self, file: str | os.PathLike) -> Path:
        """Write this estimator as a bundle file (weights and manifest), atomically."""
        file = Path(file)
        write_bundle(file, self._network.state_dict(), self.manifest)
        return file

    def __repr__(self) -> str:
        return (
            f"Estimator({self.manifest['model']['name']}, prior {len(self.names)} parameters, "
            f"protocol {self.protocol.name} at {self.sample_interval_ms} ms, "
            f"trained on {self.manifest['training_set']['cells']} cells)"
        )

    def reduce(self, traces: np.ndarray, sample_interval_ms: float | None = None) -> np.ndarray:
        """Reduce full-rate traces (T,) or (N, T) to observation vectors, checking them.

        A trace sampled at another interval (pass ``sample_interval_ms``) is resampled onto the
        protocol grid by linear interpolation, with a warning. It must have the length of a
        recording at that interval, a sample at every multiple of it within the protocol, or
        the interval is refused. When the interval does not divide the protocol's duration, the
        last sample falls short of the protocol's end by less than one interval, and the grid
        points past it hold the last sample (as :func:`~sbi_twins.recording.onto_protocol` does
        for recordings): clark2022 (11455.1 ms) recorded at 0.2 ms ends at 11455.0 ms, so
        exactly the final point of its 0.1 ms grid is held. Without ``sample_interval_ms``, a
        trace of the wrong length is refused.

        Raises
        ------
        ValueError
            A sample interval that is not a finite number > 0 or that does not match the
            trace's length, a trace of the wrong length, or non-finite samples.
        """
        if sample_interval_ms is not None:
            sample_interval_ms = check_positive("sample_interval_ms", sample_interval_ms)
        traces = np.asarray(traces, dtype=float)
        if traces.ndim not in (1, 2):
            raise ValueError(f"expected a trace (T,) or traces (N, T), got shape {traces.shape}")
        if sample_interval_ms is not None and not math.isclose(
            sample_interval_ms, self.sample_interval_ms
        ):
            traces = self._resample(traces, sample_interval_ms)
        return self.scheme.apply(traces)

    def _resample(self, traces: np.ndarray, sample_interval_ms: float) -> np.ndarray:
        duration, samples = self.protocol.duration_ms, traces.shape[-1]
        expected = math.floor(duration / sample_interval_ms * (1 + MULTIPLE_RTOL)) + 1
        if samples != expected:
            fits = f" (every {duration / (samples - 1):.3g} ms?)" if samples > 1 else ""
            raise ValueError(
                f"sample interval {sample_interval_ms:g} ms does not match the trace's length: "
                f"a recording of protocol {self.protocol.name!r} ({duration:g} ms) every "
                f"{sample_interval_ms:g} ms has {expected} samples, this trace {samples}{fits}; "
                "pass the interval it was recorded at (sample_interval_ms, `sbi-twins fit "
                "--sample-interval`)"
            )
        given = np.arange(samples) * sample_interval_ms
        grid = self.protocol.times(self.sample_interval_ms)
        held, tiny = grid[-1] - given[-1], 1e-6 * sample_interval_ms
        warnings.warn(
            f"resampling the trace from {sample_interval_ms:g} ms to the estimator's "
            f"{self.sample_interval_ms:g} ms by linear interpolation"
            + (f", holding its last sample over the final {held:.3g} ms" if held > tiny else ""),
            UserWarning,
            stacklevel=3,
        )
        rows = np.atleast_2d(traces)
        out = np.stack([np.interp(grid, given, row) for row in rows])  # holds the last value
        return out if traces.ndim == 2 else out[0]

    def fit(
        self,
        recording: Recording | np.ndarray,
        *,
        sample_interval_ms: float | None = None,
        cm_pF: float | None = None,
        check_command: bool = True,
        check_plausibility: bool = True,
    ) -> CellPosterior:
        """The posterior of one cell from its recording.

        Parameters
        ----------
        recording : Recording or numpy.ndarray
            A voltage-clamp :class:`~sbi_twins.recording.Recording` made with :attr:`protocol`
            (its command is checked against the protocol, its current converted to pA/pF and
            put on the protocol's grid: :func:`sbi_twins.recording.onto_protocol`), or a trace
            (T,) in pA/pF sampled on ``protocol.times(sample_interval_ms)``.
        sample_interval_ms : float, optional
            A trace's sample interval, if not :attr:`sample_interval_ms`.
        cm_pF : float, optional
            Membrane capacitance of a recording in pA (default: from its metadata).
        check_command : bool
            Refuse a recording whose command is not the protocol's.
        check_plausibility : bool
            Refuse a recording no training cell could give (flat, a unit mistake, a flipped
            sign: :func:`~sbi_twins.inference.misspecification.implausibility`). Either way a
            :class:`MisspecificationWarning` says when the summary statistic of
            :meth:`CellPosterior.misspecification` flags the recording as unlike the training
            cells (``predictive=False``: no simulation, so fitting stays fast; the
            posterior-predictive statistic is computed only when asked for).

        Returns
        -------
        CellPosterior
            Its ``preprocessing`` lists what was done to the recording.

        Raises
        ------
        ImplausibleRecordingError
            With ``check_plausibility``, a recording the estimator cannot fit, and why.
        """
        notes: list[str] = []
        if isinstance(recording, Recording):
            if sample_interval_ms is not None:
                raise ValueError("a Recording knows its sample interval; do not pass one")
            recording, notes = onto_protocol(
                recording,
                self.protocol,
                self.sample_interval_ms,
                cm_pF=cm_pF,
                check_command=check_command,
            )
        x = self.reduce(recording, sample_interval_ms)
        if x.ndim != 1:
            raise ValueError(
                "fit takes one trace (T,); for several cells use summaries(traces) or "
                "posteriors(reduce(traces))"
            )
        posterior = CellPosterior(self, x, preprocessing=notes)
        self._check_plausibility(posterior, refuse=check_plausibility)
        if not np.isfinite(x).all():  # reached only without the plausibility check
            raise ValueError(
                "this recording cannot be fitted even without the plausibility check: "
                f"{int((~np.isfinite(x)).sum())} of its {x.size} observation windows average "
                "beyond float32's range (about 3.4e38); give the current in pA/pF"
            )
        return posterior

    def _check_plausibility(self, posterior: CellPosterior, refuse: bool) -> None:
        reference = self.misspecification_reference()
        problem = implausibility(reference, posterior.observation) if refuse else None
        if problem is not None:
            raise ImplausibleRecordingError(
                f"this recording is not one the estimator can fit: {problem} (to fit it "
                "anyway: check_plausibility=False, or `sbi-twins fit --no-plausibility-check`)"
            )
        verdict = posterior.misspecification(predictive=False)  # cheap: no simulation
        if verdict.flag:
            warnings.warn(
                f"this recording is unlike every cell the estimator was trained on "
                f"(misspecification p = {verdict.p_value:.2g} < {verdict.alpha:g}): read its "
                f"posterior with care.{beyond_prior_text(verdict.beyond_prior)} Common causes: "
                "a cell outside the prior or missing a current, a protocol shifted in time or "
                "sampled at another interval than stated, or other recording artefacts",
                MisspecificationWarning,
                stacklevel=2,
            )

    def check_dataset(self, dataset: Dataset) -> None:
        """Refuse a dataset made with another model file, prior, protocol, observation scheme or
        recording model than this estimator's training set (the message lists what differs).
        """
        keys = ("model", "prior", "protocol", "observation", "recording")
        differences = manifest_differences(
            {k: self.manifest[k] for k in keys}, {k: dataset.manifest[k] for k in keys}
        )
        if differences:
            raise ValueError(
                f"dataset {dataset.directory} was not made like this estimator's training set "
                "(estimator vs dataset):\n  " + "\n  ".join(differences)
            )

    def cell_model(self) -> CellModel:
        """The cell model the estimator was trained on.

        It is the ``model`` given to :func:`load_estimator`, or else the bundled model of the
        recorded name; either must be the very file the estimator was trained on (same
        sha256), because the posterior would otherwise describe another model.
        """
        if self._cell_model is not None:  # loading reads the file and the kernel cache
            return self._cell_model
        recorded = self.manifest["model"]
        fix = (
            f"pass load_estimator({str(self.path)!r}, model='path/to/{recorded['name']}.mmt') "
            "with the file it was trained on, or retrain the estimator"
        )
        choice = self._model_choice
        if choice is None:
            try:
                model = load_model(recorded["name"])
            except FileNotFoundError:
                raise ValueError(
                    f"this estimator was trained on model file '{recorded['name']}.mmt' "
                    f"(sha256 {recorded['file_sha256'][:12]}...), which is not bundled; {fix}"
                ) from None
        else:
            model = choice if isinstance(choice, CellModel) else load_model(choice)
        if model.file_hash != recorded["file_sha256"]:
            raise ValueError(
                f"the model file {model.path} is not the one this estimator was trained on "
                f"(sha256 {model.file_hash[:12]}..., trained with {recorded['file_sha256'][:12]}"
                f"...); {fix}"
            )
        self._cell_model = model
        return model

    def simulate_cells(
        self, n: int, seed: int = 0, *, max_draws: int = 100_000
    ) -> tuple[pd.DataFrame, np.ndarray]:
        """Cells made exactly like the estimator's training cells, and their recordings.

        Prior draws (taken 8 at a time from ``numpy.random.default_rng(seed)``) that pass
        the training set's viability rules, recorded through its recording model under
        :attr:`protocol`; the ``k``-th viable draw's recording noise is seeded with
        ``seed + k``. As in a dataset, a draw whose recording cannot be simulated is dropped.

        Parameters
        ----------
        n : int
            Number of cells.
        seed : int
            Seed of the draws and of the noise.
        max_draws : int
            Give up (ValueError) after this many prior draws without ``n`` viable cells.

        Returns
        -------
        theta : pandas.DataFrame
            (n, D + F): the cells' parameters (varying, then fixed), as :meth:`Prior.sample`.
        traces : numpy.ndarray
            (n, T): their recorded currents (pA/pF) on
            ``protocol.times(sample_interval_ms)``.
        """
        check_integer("n", n, minimum=1, what="cells")
        check_integer("seed", seed)
        model = self.cell_model()
        rules = self.manifest["training_set"]["viability"]
        rng = np.random.default_rng(seed)
        cells, traces, drawn, viable = [], [], 0, 0
        while sum(map(len, cells)) < n:
            candidates = []  # viable draws, enough for the cells still missing
            while sum(map(len, candidates)) < n - sum(map(len, cells)):
                if drawn >= max_draws:
                    raise ValueError(
                        f"{drawn} prior draws gave fewer than the {n} viable cells asked for; "
                        "check the prior and the viability rules"
                    )
                theta = self.prior.sample(8, seed=rng)
                drawn += 8
                if rules is not None:
                    verdict = check_viability(model, theta, ViabilityRules.from_dict(rules))
                    theta = theta[verdict["viable"].to_numpy()]
                candidates.append(theta)
            theta = pd.concat(candidates, ignore_index=True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", SimulationWarning)  # failures are dropped
                recorded = self.simulate_recordings(theta, seed + viable + np.arange(len(theta)))
            viable += len(theta)
            ok = np.isfinite(recorded).all(axis=1)  # as in datasets: "simulation_failed"
            cells.append(theta[ok])
            traces.append(recorded[ok])
        return pd.concat(cells, ignore_index=True).iloc[:n], np.concatenate(traces)[:n]

    def simulate_recordings(self, theta: pd.DataFrame, seeds: np.ndarray) -> np.ndarray:
        """What the amplifier records from parameter sets, as for the training cells.

        Parameters
        ----------
        theta : pandas.DataFrame
            One row per cell: at least :attr:`names` (the prior's fixed values are added).
        seeds : array of int, shape (N,)
            Per-cell seeds of the recording noise.

        Returns
        -------
        numpy.ndarray
            (N, T) recorded current (pA/pF) on ``protocol.times(sample_interval_ms)``, through
            the training set's recording model (:func:`sbi_twins.recording.simulate_recordings`).
        """
        return simulate_recordings(
            self.cell_model(),
            self.protocol,
            self.prior.with_fixed(theta),
            seeds=np.asarray(seeds),
            sample_interval_ms=self.sample_interval_ms,
            dt_ms=self.manifest["recording"]["dt_ms"],
        )

    def summaries(
        self,
        traces: np.ndarray,
        n: int = 1_000,
        seed: int = 0,
        *,
        sample_interval_ms: float | None = None,
        batch_size: int = 10,
    ) -> pd.DataFrame:
        """Posterior summaries of many cells at once (batched sampling), traces (N, T).

        ``batch_size`` cells share one call of the flow. Ten is the fastest on a CPU: larger
        batches spill the caches (BENCHMARKS.md, "Speed of fitting").

        Returns
        -------
        DataFrame
            Indexed by (cell, parameter); columns as :meth:`CellPosterior.summary`, from ``n``
            draws per cell.
        """
        check_integer("n", n, minimum=2, what="draws per cell")
        xs = self.reduce(np.atleast_2d(traces), sample_interval_ms)
        tables = []
        for start in range(0, len(xs), batch_size):
            z = self.sample_z(xs[start : start + batch_size], n, seed + start)  # (n, B, D)
            theta = self.prior.from_unbounded(z.reshape(-1, z.shape[-1])).reshape(z.shape)
            tables.append(summary_table(theta, self.prior_variance.to_numpy()))
        stacked = np.concatenate(tables)  # (N, D, 5)
        index = pd.MultiIndex.from_product(
            [range(len(xs)), self.names], names=["cell", "parameter"]
        )
        return pd.DataFrame(
            stacked.reshape(-1, len(SUMMARY_COLUMNS)), index=index, columns=SUMMARY_COLUMNS
        )

    def misspecification_reference(
        self,
        n_cells: int | None = None,
        seed: int = 1_000_003,
        *,
        predictive_cells: int | None = None,
    ) -> Reference:
        """In-distribution summaries that calibrate :meth:`CellPosterior.misspecification`.

        By default the reference kept in the bundle (validation cells of the training set,
        written by ``sbi-twins train``); with ``n_cells``, or for a bundle without one, that
        many fresh cells made like the training cells (400 by default; simulated on first
        use, then kept with the estimator).

        With ``predictive_cells``, that reference plus a posterior-predictive one
        (:class:`~sbi_twins.inference.misspecification.PredictiveReference`): the predictive
        statistic of that many further fresh cells (seed ``seed + 1``), each costing a
        posterior and :data:`~sbi_twins.inference.misspecification.PREDICTIVE_DRAWS`
        simulations (about 5 s per cell on the clark2022 protocol), so it is computed only
        on request; keep it in the manifest (``reference.to_dict()``). Without, the predictive
        reference is the bundle's, if it has one.
        """
        stored = self.manifest.get("misspecification_reference")
        if n_cells is None and stored is not None:
            key: tuple = ("bundle", 0)
            if key not in self._references:
                self._references[key] = Reference.from_dict(stored)
        else:
            key = (n_cells or 400, seed)
            if key not in self._references:
                self._references[key] = Reference.from_estimator(self, *key)
        reference = self._references[key]
        if predictive_cells is None:
            return reference
        predictive_key = (*key, "predictive", predictive_cells, seed + 1)
        if predictive_key not in self._references:
            made = PredictiveReference.from_estimator(self, predictive_cells, seed + 1)
            self._references[predictive_key] = replace(reference, predictive=made)
        return self._references[predictive_key]

    @functools.cached_property
    def prior_variance(self) -> pd.Series:
        """Variance of each parameter under the prior (exact), the reference of posterior
        contraction.
        """
        return self.prior.variance()

    def posteriors(self, observations: np.ndarray) -> list[CellPosterior]:
        """Posteriors for observation vectors (N, L) that are already reduced by
        :attr:`scheme` (e.g. rows of a dataset's ``observations``).
        """
        xs = np.atleast_2d(np.asarray(observations, dtype=float))
        if xs.shape[1] != len(self.scheme) or not np.isfinite(xs).all():
            raise ValueError(
                f"expected finite observation vectors of length {len(self.scheme)}, "
                f"got shape {xs.shape}"
            )
        return [CellPosterior(self, x) for x in xs]

    def sample_z(self, x: np.ndarray, n: int, seed: int | None) -> np.ndarray:
        """``n`` samples of the unbounded parameters for observations ``x`` (B, L) -> (n, B, D)."""
        with torch.random.fork_rng(), torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*triangular_solve.*")  # inside nflows
            if seed is not None:
                torch.manual_seed(seed)
            z = self._network.sample(n, torch.as_tensor(x, dtype=torch.float32))
        return z.numpy().astype(float)

    def log_prob(self, theta: np.ndarray, observations: np.ndarray) -> np.ndarray:
        """Posterior log density of parameter sets, for one or many cells.

        Parameters
        ----------
        theta : numpy.ndarray
            (S, B, D) parameter values in :attr:`names` order: S sets for each of B cells.
            Every set must lie inside the prior's bounds.
        observations : numpy.ndarray
            (B, L) the cells' observation vectors. The summary network runs once per cell.

        Returns
        -------
        numpy.ndarray
            (S, B): the flow's density of ``z = prior.to_unbounded(theta)`` carried to parameter
            space by the change of variables, ``log p(theta) = log q(z) + log |dz/dtheta|``,
            with the Jacobian from the prior (``log prior(theta) - log prior_z(z)``).
        """
        shape = theta.shape[:2]
        flat = theta.reshape(-1, theta.shape[-1])
        z = self.prior.to_unbounded(flat)
        jacobian = self.prior.log_prob(flat)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*triangular_solve.*")  # inside nflows
            zt = torch.as_tensor(z, dtype=torch.float32)
            jacobian = jacobian - self._z_prior.log_prob(zt).numpy()
            condition = torch.as_tensor(observations, dtype=torch.float32)
            log_q = self._network.log_prob(zt.reshape(*shape, -1), condition).numpy()
        return log_q + jacobian.reshape(shape)


def load_estimator(
    name_or_path: str | os.PathLike, *, model: CellModel | str | os.PathLike | None = None
) -> Estimator:
    """Load an estimator bundle: a directory written by ``sbi-twins train`` (or its
    ``estimator.pt``), or the name of a bundled one (``estimators/<name>.pt``).

    Parameters
    ----------
    name_or_path : str or path
        The bundle.
    model : CellModel, str or path, optional
        The model file the estimator was trained on, when it is not a bundled one (e.g. your
        own ``.mmt``); checked against the sha256 the bundle records.

    Raises
    ------
    ValueError
        A file whose pickle would run code (only weights are read), a damaged file, or a file
        of another bundle format (made by another sbi-twins version).
    """
    path = Path(name_or_path)
    if path.is_dir():
        file = path / "estimator.pt"
        if not file.exists():
            raise FileNotFoundError(f"{path} is not an estimator (no estimator.pt in it)")
    else:
        file = _resources.resolve(name_or_path, "estimators", ".pt")
    state_dict, manifest = read_bundle(file)
    return Estimator(file.parent, state_dict, manifest, model)
