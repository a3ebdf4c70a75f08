"""Noise schedules: closed forms, monotonicity, and the inverse of the noise ratio."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sda_cli.schedule import CosineSchedule, LinearSchedule, Schedule, VESchedule, make_schedule

F64 = torch.float64
SCHEDULES = [
    CosineSchedule(),
    CosineSchedule(eta=1e-2),
    VESchedule(),
    VESchedule(sigma_min=2e-3, sigma_max=80.0),
    LinearSchedule(),
    LinearSchedule(beta_min=0.5, beta_max=10.0, eta=1e-2),
]
IDS = [str(sorted(s.config().items())) for s in SCHEDULES]
TIMES = torch.linspace(0.0, 1.0, 2001, dtype=F64)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=IDS)
def test_time_of_ratio_inverts_ratio(schedule: Schedule) -> None:
    """Round trip t -> rho -> t over the whole range, and rho -> t -> rho on a log grid of ratios."""
    back = schedule.time_of_ratio(schedule.ratio(TIMES))
    torch.testing.assert_close(back, TIMES, rtol=0, atol=1e-10)
    low, high = schedule.ratio_range()
    ratios = torch.logspace(math.log10(low), math.log10(high), 2001, dtype=F64)
    torch.testing.assert_close(schedule.ratio(schedule.time_of_ratio(ratios)), ratios, rtol=1e-9, atol=0)


@settings(max_examples=200, deadline=None)
@given(t=st.floats(min_value=0.0, max_value=1.0), index=st.integers(0, len(SCHEDULES) - 1))
def test_time_of_ratio_inverts_ratio_anywhere(t: float, index: int) -> None:
    """The ratio comes back to 1e-9 relative. The time only to ~sqrt(machine epsilon) near t = 0 on the VP
    schedules, where d rho / dt = 0: there the ratio itself cannot tell t from 0 (e.g. t = 2e-10 maps to 0)."""
    schedule = SCHEDULES[index]
    ratio = schedule.ratio(torch.tensor(t, dtype=F64))
    back = schedule.time_of_ratio(ratio)
    assert math.isclose(float(schedule.ratio(back)), float(ratio), rel_tol=1e-9)
    assert abs(float(back) - t) <= 1e-7


@pytest.mark.parametrize("schedule", SCHEDULES, ids=IDS)
def test_monotone_in_time(schedule: Schedule) -> None:
    alpha, sigma = schedule.alpha_sigma(TIMES)
    assert bool((alpha.diff() <= 0).all()) and bool((alpha > 0).all())
    assert bool((sigma.diff() > 0).all())
    assert bool((schedule.ratio(TIMES).diff() > 0).all())


@pytest.mark.parametrize("schedule", SCHEDULES, ids=IDS)
def test_ratio_range_is_the_ratio_at_the_ends(schedule: Schedule) -> None:
    low, high = schedule.ratio_range()
    ratios = schedule.ratio(TIMES)
    assert 0 < low < high
    assert low == float(ratios[0]) and high == float(ratios[-1])
    assert float(ratios.min()) == low and float(ratios.max()) == high


@pytest.mark.parametrize("eta", [1e-3, 1e-2])
def test_cosine_formula_and_endpoints(eta: float) -> None:
    """alpha_t = cos(arccos(sqrt(eta)) t)^2, sigma_t = sqrt(1 - alpha_t^2 + eta^2): alpha_0 = 1, sigma_0 = eta,
    alpha_1 = eta, sigma_1 = 1, and alpha^2 + sigma^2 = 1 + eta^2 throughout."""
    schedule = CosineSchedule(eta=eta)
    alpha, sigma = schedule.alpha_sigma(TIMES)
    theta = math.acos(math.sqrt(eta))
    for t, a, s in zip(TIMES.tolist()[::100], alpha.tolist()[::100], sigma.tolist()[::100], strict=True):
        expected = math.cos(theta * t) ** 2
        assert math.isclose(a, expected, rel_tol=1e-13)
        assert math.isclose(s, math.sqrt(1 - expected**2 + eta**2), rel_tol=1e-12)
    assert math.isclose(float(alpha[0]), 1.0, rel_tol=1e-15) and math.isclose(float(sigma[0]), eta, rel_tol=1e-12)
    assert math.isclose(float(alpha[-1]), eta, rel_tol=1e-12) and math.isclose(float(sigma[-1]), 1.0, rel_tol=1e-12)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.full_like(alpha, 1 + eta**2), rtol=1e-14, atol=0)
    assert schedule.ratio_range() == pytest.approx((eta, 1 / eta), rel=1e-12)


def test_ve_formula_and_endpoints() -> None:
    schedule = VESchedule(sigma_min=1e-3, sigma_max=1e2)
    alpha, sigma = schedule.alpha_sigma(TIMES)
    assert bool((alpha == 1).all())
    torch.testing.assert_close(sigma, 1e-3 * (1e5) ** TIMES, rtol=1e-13, atol=0)
    assert schedule.ratio_range() == pytest.approx((1e-3, 1e2), rel=1e-13)


def test_linear_formula_and_endpoints() -> None:
    """alpha_t = exp(-(beta_0 t + (beta_1 - beta_0) t^2 / 2) / 2), the DDPM alpha_bar^(1/2) in continuous time."""
    b0, b1, eta = 0.1, 20.0, 1e-3
    schedule = LinearSchedule(beta_min=b0, beta_max=b1, eta=eta)
    alpha, sigma = schedule.alpha_sigma(TIMES)
    expected = torch.exp(-0.5 * (b0 * TIMES + 0.5 * (b1 - b0) * TIMES**2))
    torch.testing.assert_close(alpha, expected, rtol=1e-14, atol=0)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.full_like(alpha, 1 + eta**2), rtol=1e-14, atol=0)
    assert float(alpha[0]) == 1.0 and math.isclose(float(sigma[0]), eta, rel_tol=1e-12)
    assert math.isclose(float(alpha[-1]), math.exp(-0.25 * (b0 + b1)), rel_tol=1e-13)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=IDS)
def test_config_round_trip(schedule: Schedule) -> None:
    rebuilt = make_schedule(schedule.config())
    assert type(rebuilt) is type(schedule) and rebuilt.config() == schedule.config()
    for a, b in zip(rebuilt.alpha_sigma(TIMES), schedule.alpha_sigma(TIMES), strict=True):
        assert torch.equal(a, b)


def test_unknown_schedule_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown schedule"):
        make_schedule({"name": "sigmoid"})
