"""Multimodal marginals: which parameters' posteriors have several separate modes.

A posterior marginal with two modes says the recording allows two distinct values of a
parameter (e.g. a large current with slow gating or a small one with fast gating), which a mean,
an sd or a box plot hides. :func:`multimodal_parameters` judges every parameter of a set of
draws; :func:`find_modes` one array of draws.

The criterion
-------------
1. **Space.** With a prior, each parameter is judged at its *position within the prior's range*
   (0 at the lower bound, 1 at the upper; the logistic of the prior's unbounded coordinate, so
   linear for uniform multipliers, logarithmic for log-uniform ones), the axis of the report's
   posterior figure. Modes are not invariant under a change of variable; on this axis the
   density of a (log-)uniform prior is flat, so the posterior's density there is proportional
   to the likelihood and its modes are the values *the recording* favours, not bumps made by
   the prior's shape. (On the unbounded axis the flow works on, its draws often end in a far
   tail bump, 5-10 logits out, i.e. within 1 % of a bound: modes that are all "at the bound"
   in the model's terms.) Without a prior the draws are judged in their own units.
2. **Density.** A Gaussian kernel density estimate with Silverman's rule-of-thumb bandwidth
   ``h = 0.9 min(sd, IQR / 1.34) n^(-1/5)`` (Silverman 1986, eq. 3.31). The rule is optimal for
   a normal density and *over*-smooths a multimodal one, so it errs towards fewer modes: a mode
   it shows is there (Silverman 1981 built his test of multimodality on this monotonicity).
   Within a prior's range the estimate is reflected at the bounds (Schuster 1985), so draws
   piled against a bound make a mode at the bound instead of a spurious fall-off. The estimate
   is computed on a grid of spacing ``h / 5`` from linearly binned draws (exact to well below
   its own noise).
3. **Modes.** Local maxima of the estimate, merged until every one left is *separate*: between
   every two neighbours the density dips to at most ``1 - min_dip`` (default: half) of the
   lower peak, a drop that is also at least ``z`` (default 4) standard errors of the estimate
   (its pointwise variance ``f R(K) / (n h)``, doubled at a reflecting bound; Silverman 1986,
   eq. 3.20), the shallowest dip merged first (the lower of its two peaks is dropped); then
   every mode must hold at least ``min_weight`` (default 5 %) of the draws in its basin (the
   draws between the dips either side), the lightest dropped first.

The depth and weight thresholds make the verdict one of size, not only of significance: with
10,000 draws a shoulder, a wavy plateau or a few draws stuck at a bound are real features of
the draws but say nothing useful. On the bundled estimator's posteriors of 18 simulated cells,
dips of a quarter flagged the wavy, nearly flat marginals of parameters the recording does not
identify (about three per cell); dips of a half flag about one parameter per cell, each with a
cluster of draws visibly apart from the rest.

The noise threshold makes the verdict sensible for few draws: among 300 repetitions at each
of 20 to 10,000 draws of a normal, uniform, skewed or heavy-tailed sample none was flagged.
Its price is that a mode needs a dozen draws or more to count: the drop from a peak holding a
share ``w`` of ``n`` draws is at most about ``sqrt(1.41 n w)`` of its standard errors,
whatever the bandwidth, so with 30 draws two clusters of 15 are not told apart however far
apart they lie, while 60 draws are.

Hartigan's dip test was the alternative: it tests the hypothesis "unimodal" (so with 10,000
draws it rejects for any small departure), does not locate the modes, and is no more
invariant under the choice of axis; the criterion here gives the modes, their share of the
draws and the depth of the dips that separate them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .._util import check_number

if TYPE_CHECKING:  # annotations only
    from ..prior import Prior

__all__ = [
    "MIN_DIP",
    "MIN_DRAWS",
    "MIN_WEIGHT",
        "MODE_COLUMNS",
    "Z_DIP",
    "Modes",
    "find_modes",
    "kernel_density",
    "multimodal_parameters",
    "prior_positions",
]

#: Default thresholds of the criterion (module docstring): every mode holds at least this
#: share of the draws...
MIN_WEIGHT = 0.05
#: ...and is separated from its neighbours by a dip of at least this fraction of the lower peak...
MIN_DIP = 0.5
#: ...that is also at least this many standard errors of the density estimate.
Z_DIP = 4.0
#: Fewest finite draws judged.
MIN_DRAWS = 10

#: Columns of :func:`multimodal_parameters`, in order.
MODE_COLUMNS: tuple[str, ...] = (
    "n_modes",
    "multimodal",
    "modes",
    "positions",
    "weights",
    "deepest_dip",
    "bandwidth",
)

#: Roughness of the Gaussian kernel, R(K) = integral of K^2.
_ROUGHNESS = 1.0 / (2.0 * math.sqrt(math.pi))
#: Grid spacing of the estimate in bandwidths, and the kernel's support in bandwidths.
_STEPS_PER_BANDWIDTH, _KERNEL_REACH = 5, 4.0
#: Most grid points (for heavy-tailed draws, whose range spans many bandwidths).
_MAX_GRID = 65_536


@dataclass(frozen=True)
class Modes:
    """The modes of one array of draws (:func:`find_modes`).

    Attributes
    ----------
    locations : numpy.ndarray
        (K,) where the density peaks, increasing, in the units of the judged draws.
    weights : numpy.ndarray
        (K,) share of the draws in each mode's basin (between the dips either side of it).
    dips : numpy.ndarray
        (K - 1,) density at the dip between modes k and k + 1 relative to the lower of the two
        peaks (0: the density vanishes between them; the criterion needs at most
        ``1 - min_dip``).
    grid, density : numpy.ndarray
        The kernel density estimate the modes were found on.
    bandwidth : float
        Its bandwidth (0 when every draw is equal).
    n : int
        Finite draws judged.
    """

    locations: np.ndarray
    weights: np.ndarray
    dips: np.ndarray
    grid: np.ndarray
    density: np.ndarray
    bandwidth: float
    n: int

    @property
    def n_modes(self) -> int:
        """Number of separate modes."""
        return int(self.locations.size)

    @property
    def multimodal(self) -> bool:
        """True when there is more than one separate mode."""
        return self.n_modes > 1


def kernel_density(
    values: np.ndarray, *, bounds: tuple[float, float] | None = None
) -> tuple[np.ndarray, np.ndarray, float]:
    """Gaussian kernel density estimate of draws with Silverman's bandwidth (module docstring).

    Parameters
    ----------
    values : numpy.ndarray
        (n,) draws; non-finite ones are ignored.
    bounds : (float, float), optional
        The support, e.g. ``(0, 1)`` for positions within a prior's range: the estimate is
        reflected at both bounds and evaluated between them. None: unbounded, evaluated from
        4 bandwidths below the smallest draw to 4 above the largest.

    Returns
    -------
    grid : numpy.ndarray
        Evaluation points, evenly spaced at most a fifth of a bandwidth apart (unless the draws
        span more than 13,000 bandwidths), the bounds among them.
    density : numpy.ndarray
        The estimate at ``grid`` (integrates to 1 over the support).
    bandwidth : float
        Silverman's ``0.9 min(sd, IQR / 1.34) n^(-1/5)`` (the sd alone when the IQR is 0); 0
        when every draw is equal, and then ``grid`` is that value and ``density`` is ``[inf]``.

    Raises
    ------
    ValueError
        Fewer than :data:`MIN_DRAWS` finite draws, draws outside `bounds`, or invalid bounds.
    """
    x = _finite(values)
    lo, hi = _check_bounds(bounds, x)
    h = silverman_bandwidth(x)
    if h == 0.0:
        return x[:1].copy(), np.array([np.inf]), 0.0
    reach = _KERNEL_REACH * h
    data = x
    if bounds is not None:  # reflect the draws within reach of a bound (Schuster 1985)
        data = np.concatenate([x, 2 * lo - x[x < lo + reach], 2 * hi - x[x > hi - reach]])
    start, stop = data.min() - reach, data.max() + reach
    step = max(h / _STEPS_PER_BANDWIDTH, (stop - start) / (_MAX_GRID - 1))
    anchor = start
    if bounds is not None:  # both bounds on the grid: a mode piled against one lies on it
        step = (hi - lo) / math.ceil((hi - lo) / step)
        anchor = lo
    grid = anchor + step * np.arange(math.floor((start - anchor) / step),
                                     math.ceil((stop - anchor) / step) + 1)
    # linear binning: each draw shares its unit weight between its two nearest grid points
    where = (data - grid[0]) / step
    left = np.clip(np.floor(where).astype(np.int64), 0, grid.size - 2)
    right_share = where - left
    counts = (np.bincount(left, 1.0 - right_share, grid.size)
              + np.bincount(left + 1, right_share, grid.size))
    half = math.ceil(reach / step)
    kernel = np.exp(-0.5 * (np.arange(-half, half + 1) * step / h) ** 2) / math.sqrt(2 * math.pi)
    density = np.convolve(counts, kernel)[half : half + grid.size] / (x.size * h)
    if bounds is None:
        inside = (grid >= x.min() - reach) & (grid <= x.max() + reach)
    else:
        grid[np.isclose(grid, hi, rtol=0, atol=1e-9 * step)] = hi  # exactly, not 1 ulp off
        inside = (grid >= lo) & (grid <= hi)
    return grid[inside], density[inside], h


def silverman_bandwidth(x: np.ndarray) -> float:
    """Silverman's rule-of-thumb bandwidth of draws ``x``: ``0.9 min(sd, IQR / 1.34) n^(-1/5)``
    (the sd alone when the IQR is 0; 0 when every draw is equal).
    """
    x = np.asarray(x, dtype=float)
    sd = float(np.std(x, ddof=1)) if x.size > 1 else 0.0
    q25, q75 = np.percentile(x, [25, 75])
    spread = min(sd, (q75 - q25) / 1.34) if q75 > q25 else sd
    return 0.9 * spread * x.size ** (-0.2)


def find_modes(
    values: np.ndarray,
    *,
    bounds: tuple[float, float] | None = None,
    min_weight: float = MIN_WEIGHT,
    min_dip: float = MIN_DIP,
    z: float = Z_DIP,
) -> Modes:
    """The separate modes of one array of draws (the criterion of the module docstring).

    Parameters
    ----------
    values : numpy.ndarray
        (n,) draws; non-finite ones are ignored.
    bounds : (float, float), optional
        The draws' support, at which the density estimate is reflected (e.g. ``(0, 1)``).
    min_weight : float
        A mode counts if at least this share of the draws lies in its basin, in [0, 0.5].
    min_dip : float
        Between two neighbouring modes the density must fall by at least this fraction of the
        lower peak, in (0, 1].
    z : float
        ...and by at least this many standard errors of the estimate (>= 0).

    Returns
    -------
    Modes
        Locations, weights and dips of the modes, with the density estimate.

    Raises
    ------
    ValueError
        Fewer than :data:`MIN_DRAWS` finite draws, draws outside `bounds`, or a threshold out
        of range.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> draws = np.concatenate([rng.normal(-2, 0.5, 600), rng.normal(2, 0.5, 400)])
    >>> modes = find_modes(draws)
    >>> modes.n_modes, np.round(modes.locations, 1), np.round(modes.weights, 2)
    (2, array([-2.,  2.]), array([0.6, 0.4]))
    """
    min_weight = check_number("min_weight", min_weight, minimum=0.0)
    min_dip = check_number("min_dip", min_dip, minimum=0.0, inclusive=False)
    z = check_number("z", z, minimum=0.0)
    if not (min_weight <= 0.5 and min_dip <= 1):
        raise ValueError(
            f"min_weight must be in [0, 0.5] and min_dip in (0, 1], got {min_weight} and "
            f"{min_dip}"
        )
    x = _finite(values)
    grid, density, h = kernel_density(x, bounds=bounds)
    if h == 0.0:
        return Modes(grid.copy(), np.ones(1), np.empty(0), grid, density, 0.0, x.size)
    variance = density * _ROUGHNESS / (x.size * h)
    if bounds is not None:  # reflection doubles the variance at a bound (fading within ~h)
        distance = np.minimum(grid - bounds[0], bounds[1] - grid)
        variance = variance * (1.0 + np.exp(-((distance / h) ** 2)))
    peaks = _local_maxima(density)
    ordered = np.sort(x)
    while peaks.size > 1:
        heights = density[peaks]
        dips = _dips(density, peaks)
        lower = np.minimum(heights[:-1], heights[1:])
        lower_peak = np.where(heights[:-1] <= heights[1:], peaks[:-1], peaks[1:])
        drop = lower - density[dips]
        noise = np.sqrt(variance[lower_peak] + variance[dips])
        weak = (drop < min_dip * lower) | (drop < z * noise)
        if weak.any():  # merge the shallowest dip: drop the lower of its two peaks
            pair = int(np.argmax(np.where(weak, density[dips] / lower, -np.inf)))
            peaks = np.delete(peaks, pair if heights[pair] <= heights[pair + 1] else pair + 1)
            continue
        weights = _basin_weights(ordered, grid[dips])
        if weights.min() >= min_weight:
            break
        peaks = np.delete(peaks, int(np.argmin(weights)))
    dips = _dips(density, peaks)
    weights = _basin_weights(ordered, grid[dips])
    relative = density[dips] / np.minimum(density[peaks[:-1]], density[peaks[1:]])
    return Modes(grid[peaks], weights, relative, grid, density, h, x.size)


def prior_positions(draws: pd.DataFrame, prior: Prior) -> pd.DataFrame:
    """Where draws lie within the prior's range of each parameter, 0..1 (module docstring):
    the logistic of :meth:`Prior.to_unbounded`, one column per name of ``prior.names``.
    """
    z = prior.to_unbounded(draws)
    return pd.DataFrame(0.5 * (1.0 + np.tanh(0.5 * z)), columns=list(prior.names),
                        index=draws.index)


def multimodal_parameters(
    draws: pd.DataFrame,
    prior: Prior | None = None,
    *,
    names: Sequence[str] | None = None,
    min_weight: float = MIN_WEIGHT,
    min_dip: float = MIN_DIP,
    z: float = Z_DIP,
) -> pd.DataFrame:
    """Which parameters' marginals have several separate modes (the module's criterion).

    Parameters
    ----------
    draws : pandas.DataFrame
        Posterior draws, one column per parameter (e.g. :meth:`CellPosterior.sample`).
    prior : Prior, optional
        The prior the draws belong to: each of its parameters is judged at its position within
        the prior's range (reflected at 0 and 1). Without it, in the draws' own units.
    names : sequence of str, optional
        The parameters to judge; default: the prior's (varying) parameters, or every column.
    min_weight, min_dip, z : float
        The thresholds of :func:`find_modes`.

    Returns
    -------
    pandas.DataFrame
        One row per parameter (index ``parameter``), columns :data:`MODE_COLUMNS`:
        ``n_modes``; ``multimodal`` (more than one); ``modes``, the locations in the draws'
        units, and ``positions``, the same within the prior's range (equal to ``modes``
        without a prior), both tuples in the order of increasing position; ``weights``, each
        mode's share of the draws; ``deepest_dip``, the lowest dip's density relative to its
        lower peak (NaN with one mode); ``bandwidth`` of the density estimate, in the judged
        space.

    Raises
    ------
    ValueError
        Unknown names, a parameter with fewer than :data:`MIN_DRAWS` finite draws, or invalid
        thresholds.
    """
    if not isinstance(draws, pd.DataFrame):
        raise ValueError(f"draws must be a pandas.DataFrame, not {type(draws).__name__}")
    if names is None:
        names = list(prior.names) if prior is not None else list(draws.columns)
    names = list(names)
    unknown = [n for n in names if n not in draws.columns]
    if unknown:
        raise ValueError(f"no draws of {', '.join(map(str, unknown))}")
    if prior is not None:
        unknown = [n for n in names if n not in prior.names]
        if unknown:
            raise ValueError(f"not a varying parameter of the prior: {', '.join(unknown)}")
        judged = prior_positions(draws, prior)
        bounds = (0.0, 1.0)
    else:
        judged, bounds = draws, None
    rows = []
    for name in names:
        try:
            modes = find_modes(judged[name].to_numpy(dtype=float), bounds=bounds,
                               min_weight=min_weight, min_dip=min_dip, z=z)
        except ValueError as error:
            raise ValueError(f"{name}: {error}") from None
        values = _to_units(modes.locations, judged[name], draws[name])
        rows.append({
            "n_modes": modes.n_modes,
            "multimodal": modes.multimodal,
            "modes": tuple(float(v) for v in values),
            "positions": tuple(float(v) for v in modes.locations),
            "weights": tuple(float(w) for w in modes.weights),
            "deepest_dip": float(modes.dips.min()) if modes.dips.size else math.nan,
            "bandwidth": modes.bandwidth,
        })
    table = pd.DataFrame(rows, index=pd.Index(names, name="parameter"), columns=MODE_COLUMNS)
    return table.astype({"n_modes": int, "multimodal": bool})


# -- implementation ----------------------------------------------------------------------------


def _finite(values: np.ndarray) -> np.ndarray:
    x = np.asarray(values, dtype=float).ravel()
    x = x[np.isfinite(x)]
    if x.size < MIN_DRAWS:
        raise ValueError(
            f"at least {MIN_DRAWS} finite draws are needed to judge modes, got {x.size}"
        )
    return x


def _check_bounds(bounds: tuple[float, float] | None, x: np.ndarray) -> tuple[float, float]:
    if bounds is None:
        return -math.inf, math.inf
    lo, hi = (check_number("bounds", b) for b in bounds)
    if not lo < hi:
        raise ValueError(f"bounds must be (low, high) with low < high, got {bounds}")
    if x.min() < lo or x.max() > hi:
        raise ValueError(f"draws lie outside the bounds {bounds}: {x.min():g} to {x.max():g}")
    return lo, hi


def _local_maxima(density: np.ndarray) -> np.ndarray:
    """Indices of the local maxima (the first point of a flat top); the grid's ends count."""
    padded = np.concatenate([[-np.inf], density, [-np.inf]])
    rising = padded[1:-1] > padded[:-2]
    not_falling_next = padded[1:-1] >= padded[2:]
    candidates = np.flatnonzero(rising & not_falling_next)
    # a flat top counts only if the density falls after it (not a step up)
    keep = []
    for i in candidates:
        j = i
        while j + 1 < density.size and density[j + 1] == density[i]:
            j += 1
        if j + 1 == density.size or density[j + 1] < density[i]:
            keep.append(i)
    return np.array(keep, dtype=np.int64)


def _basin_weights(ordered: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """Share of the sorted draws ``ordered`` between consecutive ``cuts`` (and the ends)."""
    counts = np.diff(np.concatenate([[0], np.searchsorted(ordered, cuts), [ordered.size]]))
    return counts / ordered.size


def _dips(density: np.ndarray, peaks: np.ndarray) -> np.ndarray:
    """Index of the lowest density between each two consecutive peaks."""
    pairs = zip(peaks[:-1], peaks[1:], strict=True)
    return np.array([a + int(np.argmin(density[a : b + 1])) for a, b in pairs], dtype=np.int64)


def _to_units(locations: np.ndarray, judged: pd.Series, values: pd.Series) -> np.ndarray:
    """Mode locations in the draws' own units: the judged space maps monotonically to them
    (position within the prior's range -> value), so interpolate between the sorted draws.
    """
    order = np.argsort(judged.to_numpy(), kind="stable")
    x, y = judged.to_numpy()[order], values.to_numpy(dtype=float)[order]
    finite = np.isfinite(x) & np.isfinite(y)
    return np.interp(locations, x[finite], y[finite])
