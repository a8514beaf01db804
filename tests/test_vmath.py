"""The vectorisable exp/log/pow used by the voltage-clamp kernels, against numpy's libm."""

import numba as nb
import numpy as np
import pytest

from sbi_twins.engine.vmath import FASTMATH, vexp, vlog, vpow


def _elementwise(function):
    """A compiled loop applying ``function`` to each element, as the kernels use it."""

    @nb.njit(fastmath=FASTMATH, error_model="numpy")
    def apply(x):
        out = np.empty_like(x)
        for i in range(x.size):
            out[i] = function(x[i])
        return out

    return apply


_exp_all = _elementwise(vexp)
_log_all = _elementwise(vlog)


def test_exp_relative_error_over_the_normal_range():
    x = np.linspace(-708.0, 709.0, 200_001)
    np.testing.assert_allclose(_exp_all(x), np.exp(x), rtol=1e-13, atol=0)


def test_exp_near_zero_is_accurate_to_rounding():
    x = np.linspace(-5.0, 5.0, 10_001)
    np.testing.assert_allclose(_exp_all(x), np.exp(x), rtol=1e-15, atol=0)


def test_exp_special_values():
    x = np.array([-np.inf, -800.0, 0.0, 800.0, np.inf, np.nan])
    got = _exp_all(x)
    np.testing.assert_array_equal(got[:5], [0.0, 0.0, 1.0, np.inf, np.inf])
    assert np.isnan(got[5])


def test_log_relative_error_including_subnormals():
    x = np.logspace(-320, 308, 200_001)
    np.testing.assert_allclose(_log_all(x), np.log(x), rtol=1e-15, atol=1e-13)


def test_log_special_values():
    got = _log_all(np.array([0.0, -1.0, np.inf, np.nan, 1.0]))
    assert got[0] == -np.inf and np.isnan(got[1]) and got[2] == np.inf and np.isnan(got[3])
    assert got[4] == 0.0


@pytest.mark.parametrize(
    ("x", "y"), [(3.0, 2.5), (0.45 / 0.3, 2.5), (1e-4, 0.5), (2.0, -1.5), (7.0, 0.0)]
)
def test_pow_matches_numpy(x, y):
    assert vpow(x, y) == pytest.approx(x**y, rel=1e-13)


def test_pow_edge_cases():
    assert vpow(0.0, 2.5) == 0.0 and vpow(0.0, 0.0) == 1.0 and vpow(0.0, -1.0) == np.inf
    assert np.isnan(vpow(-1.0, 2.5))
