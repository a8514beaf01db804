"""Posterior-predictive checks: posterior draws re-simulated as the recording they explain.

Each draw (cell and recording parameters) is simulated through the estimator's recording model
(series resistance, leak, offset, noise, filter) under its protocol and reduced by its
observation scheme, so the predictive traces are directly comparable with the cell's own
observation vector. A draw the simulator cannot integrate is counted, not dropped silently.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .._util import check_number
from ..engine import SimulationWarning

if TYPE_CHECKING:  # annotations only
    from .posterior import CellPosterior


@dataclass(frozen=True)
class PredictiveCheck:
    """Posterior-predictive traces of one cell's recording, on its observation windows.

    Attributes
    ----------
    traces : numpy.ndarray
        (n, L) the predictive observation vectors of the draws that simulated.
    observed : numpy.ndarray
        (L,) the cell's own observation vector.
    times_ms : numpy.ndarray
        (L,) the centre of each observation window.
    segment : numpy.ndarray
        (L,) the protocol segment (0-based) of each window.
    noise : numpy.ndarray
        (L,) the recording noise each window's mean carries under the posterior: the median
        over draws of ``recording.noise_pA_per_pF`` divided by the square root of the window's
        samples (0 for an estimator without a noise model).
    failed : int
        Draws whose simulation failed (not in ``traces``).
    """

    traces: np.ndarray
    observed: np.ndarray
    times_ms: np.ndarray
    segment: np.ndarray
    noise: np.ndarray
    failed: int

    def band(self, level: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
        """Central predictive band of mass ``level``: (low, high), each (L,)."""
        level = check_number("level", level, minimum=0.0, inclusive=False)
        if not level < 1:
            raise ValueError(f"level must be in (0, 1), got {level!r}")
        return tuple(np.quantile(self.traces, [(1 - level) / 2, (1 + level) / 2], axis=0))

    def coverage(self, level: float = 0.9) -> float:
        """Share of the observation's windows inside the predictive band of mass ``level``."""
        low, high = self.band(level)
        return float(np.mean((low <= self.observed) & (self.observed <= high)))

    @property
    def errors(self) -> np.ndarray:
        """(L,) observed minus the predictive median of each window."""
        return self.observed - np.median(self.traces, axis=0)

    @property
    def z_scores(self) -> np.ndarray:
        """(L,) :attr:`errors` over the predictive spread (sd over draws, which includes the
        inferred noise).
        """
        return self.errors / np.maximum(self.traces.std(axis=0), 1e-12)

    @property
    def residuals(self) -> pd.DataFrame:
        """Per protocol segment: windows, RMS of (observed - predictive median), the same
        normalised by the predictive spread (:attr:`z_scores`), and the share of windows
        outside the 90 % band.
        """
        error, z = self.errors, self.z_scores
        low, high = self.band(0.9)
        outside = (self.observed < low) | (self.observed > high)
        rows = []
        for k in np.unique(self.segment):
            w = self.segment == k
            rows.append(
                {
                    "segment": int(k) + 1,
                    "windows": int(w.sum()),
                    "rms_pA_per_pF": float(np.sqrt(np.mean(error[w] ** 2))),
                    "rms_normalised": float(np.sqrt(np.mean(z[w] ** 2))),
                    "outside_90": float(outside[w].mean()),
                }
            )
        return pd.DataFrame(rows).set_index("segment")


def predictive_check(posterior: CellPosterior, n: int = 200, seed: int = 0) -> PredictiveCheck:
    """Re-simulate ``n`` posterior draws of ``posterior`` (see :class:`PredictiveCheck`)."""
    estimator = posterior.estimator
    draws = posterior.sample(n, seed=seed)
    noise_seeds = np.random.default_rng([seed, 1]).integers(0, 2**63 - 1, n, dtype=np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SimulationWarning)  # failures are counted below
        recorded = estimator.simulate_recordings(draws, noise_seeds)
    observed = estimator.scheme.apply(recorded, allow_nonfinite=True)
    ok = np.isfinite(observed).all(axis=1)
    scheme = estimator.scheme
    segment = estimator.protocol.segment_index(scheme.times_ms)
    samples = (scheme.stops - scheme.starts).astype(float)
    noise_column = "recording.noise_pA_per_pF"
    noise_level = float(np.median(draws[noise_column])) if noise_column in draws else 0.0
    return PredictiveCheck(
        traces=observed[ok],
        observed=np.asarray(posterior.observation, dtype=float),
        times_ms=np.asarray(scheme.times_ms),
        segment=segment,
        noise=noise_level / np.sqrt(samples),
        failed=int((~ok).sum()),
    )
