"""The posterior of one cell: draws, density, summaries and labelled (arviz) data."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .._util import atomic_write, check_integer
from .misspecification import ALPHA, Misspecification, misspecification
from .predictive import PredictiveCheck, predictive_check

if TYPE_CHECKING:  # annotations only: the estimator makes its posteriors
    from .estimator import Estimator

#: Probability mass of the highest-density intervals in :meth:`CellPosterior.summary`.
HDI_PROB = 0.94

#: Columns of posterior summaries, in order.
SUMMARY_COLUMNS = ["mean", "sd", "hdi_low", "hdi_high", "contraction"]


class CellPosterior:
    """The posterior of one cell's parameters (cell and recording) given its recording.

    Made by :meth:`Estimator.fit`. Every method that draws takes ``seed`` (an int; None draws
    fresh randomness), so equal seeds give equal draws.

    Attributes
    ----------
    estimator : Estimator
        The estimator that made it.
    observation : numpy.ndarray
        The recording reduced by the estimator's observation scheme, (L,).
    names : tuple of str
        The parameters the posterior is over (the prior's varying ones).
    preprocessing : tuple of str
        What was done to the recording before fitting (unit conversion, resampling...).
    """

    def __init__(
        self, estimator: Estimator, observation: np.ndarray, preprocessing: Sequence[str] = ()
    ):
        self.estimator = estimator
        self.observation = observation
        self.names = estimator.names
        self.preprocessing = tuple(preprocessing)

    def __repr__(self) -> str:
        return f"CellPosterior({len(self.names)} parameters, from {self.estimator!r})"

    def sample(self, n: int = 10_000, seed: int | None = None) -> pd.DataFrame:
        """``n`` posterior draws, ready to simulate.

        Returns
        -------
        pandas.DataFrame
            (n, D + F), model units: one column per parameter of :attr:`names`, then a constant
            column for each of the prior's fixed parameters.
        """
        check_integer("n", n, minimum=1, what="draws")
        z = self.estimator.sample_z(self.observation[None], n, seed)[:, 0]
        prior = self.estimator.prior
        return prior.with_fixed(pd.DataFrame(prior.from_unbounded(z), columns=list(self.names)))

    def log_prob(self, theta: pd.DataFrame | np.ndarray) -> np.ndarray:
        """Posterior log density of parameter sets (model units; -inf outside the prior).

        See :meth:`Estimator.log_prob`; the summary network runs once, whatever the number
        of parameter sets.
        """
        prior = self.estimator.prior
        theta = prior._as_array(theta)
        inside = np.isfinite(prior.log_prob(theta))
        out = np.full(theta.shape[0], -np.inf)
        if inside.any():
            sets = theta[inside][:, None, :]  # one cell: its summary is computed once
            out[inside] = self.estimator.log_prob(sets, self.observation[None])[:, 0]
        return out

    def predictive(self, n: int = 200, seed: int = 0) -> PredictiveCheck:
        """Posterior-predictive check: ``n`` draws re-simulated through the estimator's
        recording model and observation scheme (:mod:`sbi_twins.inference.predictive`).
        """
        check_integer("n", n, minimum=2, what="draws")
        return predictive_check(self, n, seed)

    def misspecification(self, alpha: float = ALPHA, predictive: bool = True) -> Misspecification:
        """Is this recording unlike the estimator's training cells? A flag and a p-value,
        uniform for in-distribution recordings (:mod:`sbi_twins.inference.misspecification`).

        The summary and prior-excess statistics cost no simulation. With ``predictive`` (and
        an estimator whose reference has one), the posterior-predictive statistic joins them:
        a few seconds of simulation (``PREDICTIVE_DRAWS`` draws, the same every call).
        """
        return misspecification(self, alpha, predictive)

    def summary(self, n: int = 10_000, seed: int | None = None) -> pd.DataFrame:
        """Per parameter: posterior mean, sd, 94% HDI, and contraction ``1 - var_post /
        var_prior`` (1: pinned down by the recording; 0: as uncertain as the prior).
        """
        return self._summarise(self.sample(_summary_draws(n), seed))

    def _summarise(self, samples: pd.DataFrame) -> pd.DataFrame:
        theta = samples[list(self.names)].to_numpy()[:, None, :]
        table = summary_table(theta, self.estimator.prior_variance.to_numpy())[0]
        return pd.DataFrame(table, index=list(self.names), columns=SUMMARY_COLUMNS)

    def to_inference_data(self, n: int = 10_000, seed: int | None = None):
        """The posterior as labelled data: an arviz ``InferenceData``.

        Groups: ``posterior`` (``n`` draws, one chain, a variable per parameter), ``prior``
        (``n`` draws of the estimator's prior, seeded from ``seed``), and ``observed_data``
        (the observation vector, variable ``current`` in pA/pF, with coordinate ``time_ms``:
        the centre of each observation window). Its attributes name the estimator, its
        training set's model, prior and protocol, and the versions.
        """
        return self._inference_data(self.sample(n, seed), seed)

    def _inference_data(self, samples: pd.DataFrame, seed: int | None):
        import arviz as az

        prior_draws = self.estimator.prior.sample(len(samples), seed=_prior_seed(seed))
        scheme = self.estimator.scheme
        manifest = self.estimator.manifest
        data = az.from_dict(
            posterior={k: samples[k].to_numpy()[None, :] for k in self.names},
            prior={k: prior_draws[k].to_numpy()[None, :] for k in self.names},
            observed_data={"current": self.observation},
            coords={"time_ms": np.asarray(scheme.times_ms)},
            dims={"current": ["time_ms"]},
        )
        attrs = {
            "estimator": str(self.estimator.path),
            "model": manifest["model"]["name"],
            "model_sha256": manifest["model"]["file_sha256"],
            "prior_sha256": manifest["prior"]["hash"],
            "protocol": self.estimator.protocol.name,
            "sample_interval_ms": self.estimator.sample_interval_ms,
            "current_unit": "pA/pF",
            "sbi_twins_version": manifest["versions"]["sbi_twins"],
        }
        for group in data.groups():  # from_dict gives its attrs to some groups only
            data[group].attrs.update(attrs)
        return data

    def save(
        self, directory: str | os.PathLike, n: int = 10_000, seed: int | None = None
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Write ``samples.csv``, ``summary.csv`` and ``posterior.nc`` (arviz InferenceData),
        all from the same ``n`` draws, to ``directory``; return the draws and the summary.
        """
        samples = self.sample(_summary_draws(n), seed)
        summary = self._summarise(samples)
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "samples.csv", lambda tmp: samples.to_csv(tmp, index=False))
        atomic_write(out / "summary.csv", lambda tmp: summary.to_csv(tmp, index_label="parameter"))
        data = self._inference_data(samples, seed)
        atomic_write(out / "posterior.nc", lambda tmp: data.to_netcdf(str(tmp)))
        return samples, summary


def _summary_draws(n: int) -> int:
    """``n`` if it is enough draws to summarise: a spread (sd, contraction) needs two."""
    return check_integer("n", n, minimum=2, what="draws: a summary's sd needs two")


def _prior_seed(seed: int | None) -> list[int] | None:
    """The seed of the prior draws that go with posterior draws of ``seed`` (another stream)."""
    return None if seed is None else [int(seed), 1]


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


def summary_table(theta: np.ndarray, prior_variance: np.ndarray) -> np.ndarray:
    """Summaries of draws ``theta`` (n, B, D) of B cells: (B, D, 5) in :data:`SUMMARY_COLUMNS`
    order; contraction is ``1 - var_post / var_prior``.
    """
    variance = theta.var(axis=0, ddof=1)
    low, high = hdi(theta)
    return np.stack(
        [theta.mean(axis=0), np.sqrt(variance), low, high, 1.0 - variance / prior_variance],
        axis=-1,
    )
