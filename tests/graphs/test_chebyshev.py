"""Chebyshev coefficients: quadrature vs the Bessel closed form, adaptive order, generic filters."""

import numpy as np
import pytest

from grn_jax.graphs import (ChebyshevPlan, chebyshev_coefficients, chebyshev_plan, fixed_order_heat_kernel_plan,
                            heat_kernel_coefficients_closed_form, heat_kernel_plan, truncation_order)

BETAS = [0.01, 0.1, 1.0, 10.0]


@pytest.mark.parametrize("beta", BETAS)
def test_quadrature_equals_bessel_closed_form(beta):
    quad = chebyshev_coefficients(lambda lam: np.exp(-beta * lam), 40)
    closed = heat_kernel_coefficients_closed_form(beta, 40)
    assert quad.dtype == np.float64
    np.testing.assert_allclose(quad, closed, rtol=0, atol=1e-12)
    # Public-code defect: float32 quadrature leaves ~1e-7 noise in c_k for k >= 5 where the
    # true values are < 1e-9. Ours matches tiny coefficients to float64 round-off.
    np.testing.assert_allclose(quad[5:12], closed[5:12], rtol=0, atol=1e-15)


def test_closed_form_values_by_hand():
    # c_k = 2 e^-beta (-1)^k I_k(beta); I_0(1) = 1.2660658777520082, I_1(1) = 0.5651591039924851
    c = heat_kernel_coefficients_closed_form(1.0, 1)
    np.testing.assert_allclose(c, [2 * np.exp(-1) * 1.2660658777520082, -2 * np.exp(-1) * 0.5651591039924851],
                               rtol=1e-14)


@pytest.mark.parametrize("beta,order", [(0.1, 4), (1.0, 8), (10.0, 20)])
def test_adaptive_order_matches_design(beta, order):
    plan = heat_kernel_plan(beta, 1e-8)
    assert plan.order == order
    full = heat_kernel_coefficients_closed_form(beta, 200)
    assert np.sum(np.abs(full[order + 1:])) <= 1e-8 < np.sum(np.abs(full[order:]))  # smallest such K
    assert plan.tail == pytest.approx(np.sum(np.abs(full[order + 1:])), rel=1e-6)


@pytest.mark.parametrize("beta", BETAS)
def test_truncated_expansion_is_within_tail_bound_of_the_filter(beta):
    plan = heat_kernel_plan(beta, 1e-8)
    lam = np.linspace(0.0, 2.0, 2001)
    err = np.abs(plan.evaluate(lam) - np.exp(-beta * lam))
    assert err.max() <= plan.tail + 1e-15
    # c_0 is halved in the expansion: at lambda = 1 (x = 0) the odd terms vanish; without
    # halving the value would be off by c_0 / 2 (~0.9 at beta = 0.1).
    unhalved = np.polynomial.chebyshev.chebval(0.0, plan.as_array())
    assert abs(unhalved - np.exp(-beta)) > 0.4 * plan.as_array()[0]


def test_plans_are_cached_and_hashable():
    a = heat_kernel_plan(0.1)
    assert heat_kernel_plan(0.1) is a  # computed once per (beta, tol)
    assert heat_kernel_plan(0.1, 1e-10) is not a
    assert hash(a) == hash(ChebyshevPlan(a.coeffs, a.tol, a.tail, a.name))


def test_generic_polynomial_filter_is_exact():
    # f(lambda) = lambda^2 = (x + 1)^2 = 1.5 T0 + 2 T1 + 0.5 T2  ->  c = [3, 2, 0.5] (c_0 halved in use)
    def square(lam):
        return lam ** 2

    np.testing.assert_allclose(chebyshev_coefficients(square, 5, 16), [3, 2, 0.5, 0, 0, 0], atol=1e-14)
    plan = chebyshev_plan(square, 1e-12, n_quad=64, max_order=32)
    assert plan.order == 2


def test_generic_smooth_filter():
    def resolvent(lam):
        return 1.0 / (1.0 + lam)

    plan = chebyshev_plan(resolvent, 1e-9)
    lam = np.linspace(0, 2, 1001)
    assert np.max(np.abs(plan.evaluate(lam) - resolvent(lam))) <= 1e-9
    assert 5 < plan.order < 40


def test_fixed_order_plan():
    plan = fixed_order_heat_kernel_plan(0.1, 64)
    assert plan.order == 64
    np.testing.assert_allclose(plan.as_array(), heat_kernel_coefficients_closed_form(0.1, 64), atol=1e-14)


def test_truncation_order_helper():
    assert truncation_order([1.0, 0.5, 1e-3, 1e-9, 1e-12], 1e-8) == 2
    assert truncation_order([1.0, 0.0], 1e-8) == 0


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="negative"):
        chebyshev_coefficients(lambda lam: lam - 1.0, 4)
    with pytest.raises(ValueError, match="not finite"):
        chebyshev_coefficients(lambda lam: 1.0 / (lam - 1.0), 4, n_quad=9)
    with pytest.raises(ValueError, match="n_quad"):
        chebyshev_coefficients(lambda lam: lam, 8, n_quad=8)
    with pytest.raises(ValueError, match="beta"):
        heat_kernel_plan(-1.0)
    with pytest.raises(ValueError, match="tol"):
        heat_kernel_plan(0.1, 0.0)
    with pytest.raises(ValueError, match="max_order"):
        chebyshev_plan(np.sqrt, 1e-12, max_order=32)  # sqrt is not smooth at 0: too many terms
