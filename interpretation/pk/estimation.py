"""The patient's own deviations from the typical patient, estimated from their levels.

Two random effects (log clearance, log central volume) are few enough to compute the posterior
exactly on a grid, as the open model-informed dosing engines offer beside the mode (mapbayr,
Posologyr): the posterior's long tail toward low clearance, which a Gaussian (Laplace)
approximation cut off, stays in the intervals. The mode is refined from the grid's best point and
from the typical patient by a bounded quasi-Newton method (scipy's L-BFGS-B); a fit that does not
converge is reported as such and the forecast refused. Levels below the assay's limit count as
censored. Draws from the grid posterior use a fixed seed: the same history gives the same answer.

The residual error (the model's combined proportional and additive error) is part of the
likelihood, and of the interval of a *measured* trough (`measured`), which a clinician compares
with the next level: the interval of the true trough leaves it out.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import minimize
from scipy.special import log_ndtr

from interpretation.pk.kinetics import DAY_S, Covariates, Dose, Level, PopPkModel

Point = tuple[float, float]
Array = NDArray[np.float64]
Eta = tuple[Array, Array]  # log clearance and log central volume deviations

SPAN_SD = 5.0  # the grid spans this many standard deviations of each random effect
GRID = (81, 41)  # points on log clearance (the effect the levels inform most), log central volume
SEED = 20_090_916


class Posterior(NamedTuple):
    mode: Point
    draws: list[Point]  # from the grid posterior
    converged: bool


def _individual(model: PopPkModel, cov: Covariates, eta_cl: Array, eta_v1: Array) -> tuple[Array, Array]:
    """Clearance and central volume for arrays of deviations (as `pharmacokinetics.individual`)."""
    cl = (
        model.clearance_l_per_day
        * (cov.albumin_g_per_dl / model.albumin_reference_g_per_dl) ** model.albumin_exponent_on_clearance
        * (1 + model.antibodies_on_clearance * cov.antibodies)
        * (1 + model.female_on_clearance * cov.female)
        * np.exp(eta_cl)
    )
    v1 = (
        model.central_volume_l
        * (cov.weight_kg / model.weight_reference_kg) ** model.weight_exponent_on_central_volume
        * (1 + model.female_on_central_volume * cov.female)
        * np.exp(eta_v1)
    )
    return cl, v1


def predicted(
    model: PopPkModel,
    cov: Covariates,
    eta: Eta,
    doses: Sequence[Dose],
    at: Sequence[datetime],
) -> Array:
    """Concentrations (ug/mL), one row per pair of deviations, one column per time `at`: the
    two-compartment infusion response summed over the doses (superposition)."""
    cl, v1 = _individual(model, cov, *eta)
    q, v2 = model.intercompartmental_clearance_l_per_day, model.peripheral_volume_l
    k10, k12, k21 = cl / v1, q / v1, q / v2
    total = k10 + k12 + k21
    root = np.sqrt(total * total - 4 * k10 * k21)
    alpha, beta = (total + root) / 2, (total - root) / 2
    a = (alpha - k21) / (v1 * (alpha - beta))
    b = (k21 - beta) / (v1 * (alpha - beta))
    duration = model.infusion_hours / 24
    since = np.array([[(t - d.at).total_seconds() / DAY_S for d in doses] for t in at], dtype=float)
    rate = np.array([d.mg for d in doses], dtype=float) / duration  # (D,)
    out = np.zeros((len(np.atleast_1d(cl)), len(at)))
    for k, c in ((alpha, a), (beta, b)):
        k3, c3 = k[:, None, None], c[:, None, None]
        during = np.clip(since, 0.0, duration)[None]  # time spent infusing so far
        after = np.clip(since - duration, 0.0, None)[None]
        part = c3 / k3 * (1 - np.exp(-k3 * during)) * np.exp(-k3 * after)
        out += (part * rate[None, None, :]).sum(axis=2)
    return out


def _minus_two_log_posterior(
    model: PopPkModel,
    cov: Covariates,
    doses: Sequence[Dose],
    levels: Sequence[Level],
    eta: Eta,
) -> Array:
    eta_cl, eta_v1 = eta
    total = eta_cl**2 / model.clearance_variance + eta_v1**2 / model.central_volume_variance
    if not levels:
        return total
    conc = predicted(model, cov, eta, doses, [lv.at for lv in levels])
    observed = np.array([lv.ug_per_ml for lv in levels])
    censored = np.array([lv.censored for lv in levels])
    sd = np.hypot(model.additive_error_ug_per_ml, model.proportional_error * conc)
    z = (observed[None, :] - conc) / sd
    exact = np.where(censored[None, :], 0.0, z * z + 2 * np.log(sd))
    below = np.where(censored[None, :], -2 * log_ndtr(z), 0.0)  # somewhere below the limit
    return np.asarray(total + (exact + below).sum(axis=1), dtype=float)


class Grid(NamedTuple):
    points: Array  # (n, 2) deviations
    weights: Array  # the posterior's, summing to 1
    minus_two_log: Array  # -2 log posterior (up to a constant) at each point


def posterior_on_grid(
    model: PopPkModel, cov: Covariates, doses: Sequence[Dose], levels: Sequence[Level], size: tuple[int, int]
) -> Grid:
    """The posterior of the deviations on a `size` grid spanning SPAN_SD standard deviations."""
    sd = np.sqrt([model.clearance_variance, model.central_volume_variance])
    axes = [np.linspace(-SPAN_SD * s, SPAN_SD * s, n) for s, n in zip(sd, size, strict=True)]
    cl_grid, v1_grid = np.meshgrid(*axes, indexing="ij")
    points = np.column_stack([cl_grid.ravel(), v1_grid.ravel()])
    value = _minus_two_log_posterior(model, cov, doses, levels, (points[:, 0], points[:, 1]))
    weights = np.exp(-(value - value.min()) / 2)
    return Grid(points, weights / weights.sum(), value)


def estimate(
    model: PopPkModel, cov: Covariates, doses: Sequence[Dose], levels: Sequence[Level], draws: int
) -> Posterior:
    """The posterior of the patient's deviations: its mode, `draws` samples, and whether the
    mode's refinement converged."""
    sd = np.sqrt([model.clearance_variance, model.central_volume_variance])
    bounds = [(-SPAN_SD * sd[0], SPAN_SD * sd[0]), (-SPAN_SD * sd[1], SPAN_SD * sd[1])]
    grid = posterior_on_grid(model, cov, doses, levels, GRID)
    points, flat = grid.points, grid.minus_two_log
    best = int(np.argmin(flat))

    def objective(x: Array) -> float:
        return float(_minus_two_log_posterior(model, cov, doses, levels, (x[:1], x[1:2]))[0])

    starts = [points[best], np.zeros(2)]
    fits = [minimize(objective, x0, method="L-BFGS-B", bounds=bounds) for x0 in starts]
    done = [f for f in fits if f.success]
    chosen = min(done or fits, key=lambda f: f.fun)
    # A converged refinement never ends above the grid's best point: else the grid was right.
    converged = bool(done) and chosen.fun <= flat[best] + 1e-6
    at = chosen.x if converged else points[best]
    mode = (float(at[0]), float(at[1]))

    rng = np.random.default_rng(SEED)
    picked = rng.choice(flat.size, size=draws, p=grid.weights)
    # Within its grid cell, so the draws are not stuck on the grid's lines.
    step = [2 * SPAN_SD * s / (n - 1) for s, n in zip(sd, GRID, strict=True)]
    jitter = rng.uniform(-0.5, 0.5, size=(draws, 2)) * step
    sampled = points[picked] + jitter
    return Posterior(mode, [(float(a), float(b)) for a, b in sampled], converged)


def measured(model: PopPkModel, troughs: Array) -> Array:
    """What a lab would measure for each true trough: the model's residual error added (fixed
    seed), for the interval a measured next trough should fall in."""
    rng = np.random.default_rng(SEED + 1)
    noise = rng.standard_normal((2, troughs.size))
    return np.asarray(
        troughs * (1 + model.proportional_error * noise[0]) + model.additive_error_ug_per_ml * noise[1],
        dtype=float,
    )
