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
from .observation import ObservationScheme
from .prior import Prior
from .protocol import Protocol, Segment
from .train import BUNDLE_FORMAT, TrainingConfig, build_density_estimator, prior_from_dict

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
        z_stub = torch.zeros(2, len(self.names))
        x_stub = torch.zeros(2, len(self.scheme))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sbi warns about the stub's zero variance
            self._flow = build_density_estimator(config, z_stub, x_stub)
        self._flow.load_state_dict(state_dict)
        self._flow.eval()
        self._z_prior = self.prior.unbounded_distribution()

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
            z = self._flow.sample((n,), condition=torch.as_tensor(x, dtype=torch.float32))
        return z.numpy().astype(float)

    def log_prob_batch(self, theta: np.ndarray, observations: np.ndarray) -> np.ndarray:
        """Posterior log density of ``theta[i]`` given ``observations[i]``, (B, D) and (B, L)."""
        z = self.prior.to_unbounded(theta)
        log_prior = self.prior.log_prob(theta)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*triangular_solve.*")  # inside nflows
            zt = torch.as_tensor(z, dtype=torch.float32)
            condition = torch.as_tensor(observations, dtype=torch.float32)
            log_q = self._flow.log_prob(zt[None], condition=condition)[0].numpy()
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
        import arviz as az

        samples = self.sample(n, seed)
        prior_variance = self.estimator.prior_variance
        rows = {}
        for name in self.names:
            values = samples[name].to_numpy()
            low, high = az.hdi(values, hdi_prob=HDI_PROB)
            rows[name] = {
                "mean": values.mean(),
                "sd": values.std(ddof=1),
                "hdi_low": low,
                "hdi_high": high,
                "contraction": 1.0 - values.var(ddof=1) / prior_variance[name],
            }
        return pd.DataFrame.from_dict(rows, orient="index")

    def to_inference_data(self, n: int = 10_000, seed: int = 0):
        """Posterior draws as an arviz ``InferenceData`` (one chain)."""
        import arviz as az

        samples = self.sample(n, seed)
        return az.from_dict(posterior={k: samples[k].to_numpy()[None, :] for k in self.names})


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
