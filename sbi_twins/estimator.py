"""Trained estimators (bundles written by ``sbi-twins train``) and per-cell posteriors."""

from __future__ import annotations

import functools
import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from . import _resources
from .model import CellModel, load_model
from .observation import ObservationScheme
from .prior import Prior
from .protocol import Protocol, Segment
from .simulate import Dataset, manifest_differences
from .train import BUNDLE_FORMAT, TrainingConfig, build_network, prior_from_dict

#: Probability mass of the highest-density intervals in :meth:`CellPosterior.summary`.
HDI_PROB = 0.94


class Estimator:
    """An amortised posterior estimator for one model, prior, protocol and observation scheme.

    Use :func:`load_estimator`. A recording is accepted only if it was made with
    :attr:`protocol` and sampled at :attr:`sample_interval_ms` on ``protocol.times(...)``.
    """

    def __init__(self, path: Path, state_dict: dict, manifest: dict[str, Any]):
        self.path = path
        self.manifest = manifest
        self.prior: Prior = prior_from_dict(manifest["prior"])
        self.names: tuple[str, ...] = tuple(manifest["parameter_names"])
        self.protocol = _protocol_from_dict(manifest["protocol"])
        obs = manifest["observation"]
        self.sample_interval_ms: float = obs["sample_interval_ms"]
        self.scheme = ObservationScheme.from_dict(obs, self.protocol)
        config = TrainingConfig.from_dict(manifest["training"])
        self._network = build_network(config, len(self.scheme), self.prior)
        self._network.load_state_dict(state_dict)
        self._network.eval()
        self._z_prior = self.prior.unbounded_distribution()
        self._cell_model: CellModel | None = None

    def __repr__(self) -> str:
        return (
            f"Estimator({self.manifest['model']['name']}, prior {len(self.names)} parameters, "
            f"protocol {self.protocol.name} at {self.sample_interval_ms} ms, "
            f"trained on {self.manifest['training_set']['cells']} cells)"
        )

    def observe(self, traces: np.ndarray, sample_interval_ms: float | None = None) -> np.ndarray:
        """Reduce full-rate traces (T,) or (N, T) to observation vectors, checking them.

        A trace sampled at another interval is resampled onto the protocol grid by linear
        interpolation, with a warning (pass ``sample_interval_ms``); without it, a trace of
        the wrong length is refused.
        """
        traces = np.asarray(traces, dtype=float)
        if traces.ndim not in (1, 2):
            raise ValueError(f"expected a trace (T,) or traces (N, T), got shape {traces.shape}")
        if sample_interval_ms is not None and not math.isclose(
            sample_interval_ms, self.sample_interval_ms
        ):
            traces = self._resample(traces, sample_interval_ms)
        return self.scheme.apply(traces)

    def _resample(self, traces: np.ndarray, sample_interval_ms: float) -> np.ndarray:
        given = np.arange(traces.shape[-1]) * sample_interval_ms
        if given[-1] < self.protocol.duration_ms - 1e-6:
            raise ValueError(
                f"the trace covers {given[-1]:g} ms, the protocol {self.protocol.name} "
                f"{self.protocol.duration_ms:g} ms"
            )
        warnings.warn(
            f"resampling the trace from {sample_interval_ms} ms to the estimator's "
            f"{self.sample_interval_ms} ms by linear interpolation",
            UserWarning,
            stacklevel=3,
        )
        grid = self.protocol.times(self.sample_interval_ms)
        rows = np.atleast_2d(traces)
        out = np.stack([np.interp(grid, given, row) for row in rows])
        return out if traces.ndim == 2 else out[0]

    def fit(self, trace: np.ndarray, *, sample_interval_ms: float | None = None) -> CellPosterior:
        """The posterior of one cell from its recorded trace (pA/pF), sampled on
        ``protocol.times(sample_interval_ms)``."""
        x = self.observe(trace, sample_interval_ms)
        if x.ndim != 1:
            raise ValueError("fit takes one trace; use fit_many for several cells")
        return CellPosterior(self, x)

    def fit_many(
        self, traces: np.ndarray, *, sample_interval_ms: float | None = None
    ) -> list[CellPosterior]:
        """Posteriors of several cells, traces (N, T)."""
        xs = self.observe(np.atleast_2d(traces), sample_interval_ms)
        return [CellPosterior(self, x) for x in xs]

    def check_dataset(self, dataset: Dataset) -> None:
        """Refuse a dataset made with another model file, prior, protocol, observation scheme or
        recording model than this estimator's training set (the message lists what differs)."""
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
        """The cell model the estimator was trained on (refused if its file has changed since,
        because the posterior would then describe another model)."""
        if self._cell_model is not None:  # loading reads the file and the kernel cache
            return self._cell_model
        recorded = self.manifest["model"]
        model = load_model(recorded["name"])
        if model.file_hash != recorded["file_sha256"]:
            raise ValueError(
                f"the model file {model.path} has changed since this estimator was trained "
                f"(sha256 {model.file_hash[:12]}..., trained with {recorded['file_sha256'][:12]}"
                "...); simulate with the original file or retrain the estimator"
            )
        self._cell_model = model
        return model

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

        ``batch_size`` cells share one call of the flow. Ten is the fastest on CPU here: larger
        batches spill the caches (90 cells x 1000 draws: 8.9 s in batches of 10, 18 s in one).

        Returns
        -------
        DataFrame
            Indexed by (cell, parameter); columns as :meth:`CellPosterior.summary`, from ``n``
            draws per cell.
        """
        if not isinstance(n, (int, np.integer)) or n < 2:
            raise ValueError(f"n must be an integer >= 2 (draws per cell), got {n!r}")
        xs = self.observe(np.atleast_2d(traces), sample_interval_ms)
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

    @functools.cached_property
    def prior_variance(self) -> pd.Series:
        """Variance of each parameter under the prior (from 50,000 draws), the reference of
        posterior contraction."""
        draws = self.prior.sample(50_000, seed=1)
        return draws.var(ddof=1)[list(self.names)]

    def posteriors(self, observations: np.ndarray) -> list[CellPosterior]:
        """Posteriors for observation vectors (N, L) that are already reduced by
        :attr:`scheme` (e.g. rows of a dataset's ``observations``)."""
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

    def log_prob_batch(self, theta: np.ndarray, observations: np.ndarray) -> np.ndarray:
        """Posterior log density of ``theta[i]`` given ``observations[i]``, (B, D) and (B, L)."""
        z = self.prior.to_unbounded(theta)
        log_prior = self.prior.log_prob(theta)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*triangular_solve.*")  # inside nflows
            zt = torch.as_tensor(z, dtype=torch.float32)
            condition = torch.as_tensor(observations, dtype=torch.float32)
            log_q = self._network.log_prob(zt, condition).numpy()
            log_prior_z = self._z_prior.log_prob(zt).numpy()
        return log_q + log_prior - log_prior_z


class CellPosterior:
    """The posterior of one cell's parameters (cell and recording) given its recording."""

    def __init__(self, estimator: Estimator, observation: np.ndarray):
        self.estimator = estimator
        self.observation = observation
        self.names = estimator.names

    def sample(self, n: int = 10_000, seed: int | None = None) -> pd.DataFrame:
        """``n`` posterior draws in model units, one column per parameter."""
        if not isinstance(n, (int, np.integer)) or n <= 0:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        z = self.estimator.sample_z(self.observation[None], n, seed)[:, 0]
        return pd.DataFrame(self.estimator.prior.from_unbounded(z), columns=list(self.names))

    def log_prob(self, theta: pd.DataFrame | np.ndarray) -> np.ndarray:
        """Posterior log density of parameter sets (model units; -inf outside the prior).

        The flow's density of ``z`` is carried to parameter space by the change of variables
        ``log p(theta) = log q(z) + log |dz/dtheta|``, where the prior supplies the Jacobian
        (``log prior(theta) - log prior_z(z)``).
        """
        prior = self.estimator.prior
        theta = prior._as_array(theta)
        inside = np.isfinite(prior.log_prob(theta))
        out = np.full(theta.shape[0], -np.inf)
        if inside.any():
            repeated = np.repeat(self.observation[None], inside.sum(), axis=0)
            out[inside] = self.estimator.log_prob_batch(theta[inside], repeated)
        return out

    def summary(self, n: int = 10_000, seed: int = 0) -> pd.DataFrame:
        """Per parameter: posterior mean, sd, 94% HDI, and contraction ``1 - var_post /
        var_prior`` (1: pinned down by the recording; 0: as uncertain as the prior)."""
        return self._summarise(self.sample(n, seed))

    def _summarise(self, samples: pd.DataFrame) -> pd.DataFrame:
        theta = samples[list(self.names)].to_numpy()[:, None, :]
        table = summary_table(theta, self.estimator.prior_variance.to_numpy())[0]
        return pd.DataFrame(table, index=list(self.names), columns=SUMMARY_COLUMNS)

    def to_inference_data(self, n: int = 10_000, seed: int = 0):
        """Posterior draws as an arviz ``InferenceData`` (one chain)."""
        return self._inference_data(self.sample(n, seed))

    def _inference_data(self, samples: pd.DataFrame):
        import arviz as az

        return az.from_dict(posterior={k: samples[k].to_numpy()[None, :] for k in self.names})

    def save(
        self, directory: str | os.PathLike, n: int = 10_000, seed: int = 0
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Write ``samples.csv``, ``summary.csv`` and ``posterior.nc`` (arviz InferenceData),
        all from the same ``n`` draws, to ``directory``; return the draws and the summary."""
        samples = self.sample(n, seed)
        summary = self._summarise(samples)
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        samples.to_csv(out / "samples.csv", index=False)
        summary.to_csv(out / "summary.csv", index_label="parameter")
        self._inference_data(samples).to_netcdf(str(out / "posterior.nc"))
        return samples, summary


def hdi(samples: np.ndarray, prob: float = HDI_PROB) -> tuple[np.ndarray, np.ndarray]:
    """Highest-density interval along axis 0, vectorised over the other axes.

    The narrowest interval between two draws that holds ``floor(prob * n)`` further draws:
    the definition of ``arviz.hdi`` for unimodal samples (identical results, tested), computed
    for all cells and parameters in one pass instead of one call per array.
    """
    x = np.sort(samples, axis=0)
    n = x.shape[0]
    inc = int(np.floor(prob * n))
    lowest = np.argmin(x[inc:] - x[: n - inc], axis=0)[None]
    return np.take_along_axis(x, lowest, 0)[0], np.take_along_axis(x, lowest + inc, 0)[0]


#: Columns of posterior summaries, in order.
SUMMARY_COLUMNS = ["mean", "sd", "hdi_low", "hdi_high", "contraction"]


def summary_table(theta: np.ndarray, prior_variance: np.ndarray) -> np.ndarray:
    """Summaries of draws ``theta`` (n, B, D) of B cells: (B, D, 5) in :data:`SUMMARY_COLUMNS`
    order; contraction is ``1 - var_post / var_prior``."""
    variance = theta.var(axis=0, ddof=1)
    low, high = hdi(theta)
    return np.stack(
        [theta.mean(axis=0), np.sqrt(variance), low, high, 1.0 - variance / prior_variance],
        axis=-1,
    )


def _protocol_from_dict(data: dict[str, Any]) -> Protocol:
    segments = tuple(Segment(**s) for s in data["segments"])
    protocol = Protocol(
        data["name"],
        data["holding_mV"],
        segments,
        description=data.get("description", ""),
        reference=data.get("reference", ""),
    )
    if protocol.content_hash() != data["hash"]:
        raise ValueError("the estimator's protocol record does not match its hash")
    return protocol


def load_estimator(name_or_path: str | os.PathLike) -> Estimator:
    """Load an estimator bundle: a directory written by ``sbi-twins train`` (or its
    ``estimator.pt``), or the name of a bundled one (``estimators/<name>.pt``).

    Raises
    ------
    ValueError
        A file of another bundle format (made by another sbi-twins version).
    """
    path = Path(name_or_path)
    if path.is_dir():
        file = path / "estimator.pt"
        if not file.exists():
            raise FileNotFoundError(f"{path} is not an estimator (no estimator.pt in it)")
    else:
        file = _resources.resolve(name_or_path, "estimators", ".pt")
    data = torch.load(file, map_location="cpu", weights_only=False)
    manifest = data.get("manifest", {}) if isinstance(data, dict) else {}
    if manifest.get("format") != BUNDLE_FORMAT:
        from . import __version__

        raise ValueError(
            f"{file} is an estimator of format {manifest.get('format')!r} (sbi-twins "
            f"{manifest.get('versions', {}).get('sbi_twins', '?')}); this sbi-twins "
            f"{__version__} reads format {BUNDLE_FORMAT}. Retrain it with `sbi-twins train`."
        )
    return Estimator(file.parent, data["state_dict"], manifest)
