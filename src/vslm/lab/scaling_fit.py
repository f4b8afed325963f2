"""The L(N, D) fit of a scaling study: Chinchilla's approaches 3 and 1 (Hoffmann et al. 2022, appendix D).

Approach 3 fits L(N, D) = E + A / N^alpha + B / D^beta to the final losses of runs of N parameters
trained on D tokens: with a = log A, b = log B, e = log E, it minimises the Huber loss (delta 1e-3) of

    LSE(a - alpha log N, b - beta log D, e) - log L

over the runs by L-BFGS, from the paper's grid of starting points (alpha, beta in {0, 0.5, ..., 2},
e in {-1, -0.5, ..., 1}, a, b in {0, 5, ..., 25}: 4,500 starts), keeping the lowest objective.
Intervals come from a bootstrap over runs (resampled with replacement, refitted from the full fit's
optimum and the best grid starts of the resample; 2.5 and 97.5 percentiles). Besiroglu et al. (2024)
found the paper's own intervals too narrow; a bootstrap over a dozen runs is wide, and says so.

Compute-optimal allocation under C = 6 N D (Kaplan et al., Chinchilla): N_opt(C) = G (C / 6)^a_exp,
D_opt(C) = (C / 6)^b_exp / G, with a_exp = beta / (alpha + beta), b_exp = alpha / (alpha + beta) and
G = (alpha A / (beta B))^(1 / (alpha + beta)).

Approach 1 takes the envelope of (smoothed) training loss against compute C = 6 N D over every run,
reads off the size N that reaches the lowest loss at each C, and fits N_opt ~ C^a by least squares
in log-log (D_opt = C / 6 N_opt, so b = 1 - a).

numpy and scipy only, no torch (an import-linter contract keeps it so): tests fit thousands of
synthetic points in a second.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize
from scipy.special import logsumexp

from vslm.errors import VSLMError

HUBER_DELTA = 1e-3
PARAMETERS = ("E", "A", "alpha", "B", "beta")
# the paper's grid of starting points, as (a, b, e, alpha, beta)
GRID = {"a": np.arange(0, 30, 5.0), "b": np.arange(0, 30, 5.0), "e": np.arange(-1, 1.5, 0.5),
        "alpha": np.arange(0, 2.5, 0.5), "beta": np.arange(0, 2.5, 0.5)}
CHINCHILLA = {"E": 1.69, "A": 406.4, "alpha": 0.34, "B": 410.7, "beta": 0.28, "a": 0.46, "b": 0.54,
              "tokens_per_param": 20.0}  # Hoffmann et al. 2022, eq. 10 and table 2 (approach 3); ~20 tokens/param
BOOTSTRAP_STARTS = 8  # best grid starts of each resample, beside the full fit's optimum


@dataclass
class Law:
    """L(N, D) = E + A / N^alpha + B / D^beta."""

    E: float
    A: float
    alpha: float
    B: float
    beta: float

    def loss(self, n, d):
        return self.E + self.A / np.power(n, self.alpha) + self.B / np.power(d, self.beta)

    @property
    def a(self) -> float:
        """N_opt ~ C^a."""
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:
        """D_opt ~ C^b."""
        return self.alpha / (self.alpha + self.beta)

    def optimal(self, flops):
        """(N_opt, D_opt) at compute C = 6 N D, the closed form of minimising L under that constraint."""
        g = (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))
        c6 = np.asarray(flops, dtype=float) / 6
        return g * c6 ** self.a, c6 ** self.b / g

    def as_dict(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in PARAMETERS}


@dataclass
class Fit:
    law: Law
    objective: float
    starts: int
    converged_starts: int
    residuals: np.ndarray  # log L_fit - log L per run
    bootstrap: list[Law] = field(default_factory=list)

    def intervals(self, level: float = 0.95) -> dict[str, tuple[float, float]]:
        """Percentile intervals of E, A, alpha, B, beta, a and b over the bootstrap fits."""
        if not self.bootstrap:
            return {}
        q = (50 * (1 - level), 50 * (1 + level))
        table = {k: [getattr(law, k) for law in self.bootstrap] for k in (*PARAMETERS, "a", "b")}
        return {k: tuple(float(v) for v in np.nanpercentile(vs, q)) for k, vs in table.items()}


def _objective(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray,
               delta: float) -> tuple[float, np.ndarray]:
    """Summed Huber loss of LSE(a - alpha log N, b - beta log D, e) - log L, and its gradient in theta
    (written out: L-BFGS calls it some 10^5 times per fit)."""
    a, b, e, alpha, beta = theta
    t0, t1 = a - alpha * log_n, b - beta * log_d  # (runs,) each; the third term is e
    top = np.maximum(np.maximum(t0, t1), e)
    x0, x1, x2 = np.exp(t0 - top), np.exp(t1 - top), np.exp(e - top)
    total = x0 + x1 + x2
    r = top + np.log(total) - log_l
    abs_r = np.abs(r)
    value = np.where(abs_r <= delta, 0.5 * r * r, delta * (abs_r - 0.5 * delta)).sum()
    g = np.clip(r, -delta, delta) / total  # dHuber/dr x (softmax weights' denominator)
    w0, w1, w2 = g * x0, g * x1, g * x2
    grad = np.array([w0.sum(), w1.sum(), w2.sum(), -(w0 @ log_n), -(w1 @ log_d)])
    return float(value), grad


def _grid() -> np.ndarray:
    return np.array(list(itertools.product(GRID["a"], GRID["b"], GRID["e"], GRID["alpha"], GRID["beta"])))


def _grid_values(grid: np.ndarray, log_n, log_d, log_l, delta: float) -> np.ndarray:
    """The objective at every start at once: (starts,)."""
    a, b, e, alpha, beta = (grid[:, i : i + 1] for i in range(5))
    terms = np.stack([a - alpha * log_n, b - beta * log_d, np.broadcast_to(e, (len(grid), len(log_n)))])
    r = logsumexp(terms, axis=0) - log_l
    return np.where(np.abs(r) <= delta, 0.5 * r**2, delta * (np.abs(r) - 0.5 * delta)).sum(axis=1)


def _minimise(starts: np.ndarray, log_n, log_d, log_l, delta: float, max_iter: int):
    """L-BFGS from each start: (best theta, its objective, how many starts converged)."""
    best, best_value, converged = None, math.inf, 0
    for start in starts:
        res = minimize(_objective, start, args=(log_n, log_d, log_l, delta), jac=True, method="L-BFGS-B",
                       options={"maxiter": max_iter})
        if not np.all(np.isfinite(res.x)) or not math.isfinite(res.fun):
            continue
        converged += bool(res.success)
        if res.success and res.fun < best_value:
            best, best_value = res.x, float(res.fun)
    return best, best_value, converged


def _law(theta: np.ndarray) -> Law:
    a, b, e, alpha, beta = (float(v) for v in theta)
    return Law(E=math.exp(e), A=math.exp(a), alpha=alpha, B=math.exp(b), beta=beta)


def check_points(n, d, loss) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n, d, loss = (np.asarray(x, dtype=float) for x in (n, d, loss))
    if not (len(n) == len(d) == len(loss)):
        raise VSLMError(f"the fit needs one N, D and loss per run, got {len(n)}, {len(d)} and {len(loss)}")
    if len(n) < len(PARAMETERS):
        raise VSLMError(f"the L(N, D) fit has {len(PARAMETERS)} parameters (E, A, alpha, B, beta) and only "
                        f"{len(n)} usable runs: give a grid of at least {len(PARAMETERS)} finished runs")
    if len(np.unique(n)) < 2 or len(np.unique(d)) < 2:
        raise VSLMError(f"the L(N, D) fit needs at least 2 model sizes and 2 token budgets among its runs, got "
                        f"{len(np.unique(n))} sizes and {len(np.unique(d))} budgets")
    if not (np.all(np.isfinite(loss)) and np.all(loss > 0) and np.all(n > 0) and np.all(d > 0)):
        raise VSLMError("the L(N, D) fit needs finite positive losses, sizes and budgets (leave diverged runs out)")
    return n, d, loss


def fit_law(n, d, loss, delta: float = HUBER_DELTA, starts: int | None = None, bootstrap: int = 0,
            seed: int = 0, max_iter: int = 1000) -> Fit:
    """Approach 3: the Huber fit of log L from the paper's grid of starts (all of them, or the `starts`
    with the lowest objective on the grid), then `bootstrap` refits over runs resampled with replacement.
    Raises VSLMError when no start converges."""
    n, d, loss = check_points(n, d, loss)
    log_n, log_d, log_l = np.log(n), np.log(d), np.log(loss)
    grid = _grid()
    if starts is not None:
        grid = grid[np.argsort(_grid_values(grid, log_n, log_d, log_l, delta), kind="stable")[:starts]]
    theta, value, converged = _minimise(grid, log_n, log_d, log_l, delta, max_iter)
    if theta is None:
        raise VSLMError(f"the L(N, D) fit did not converge from any of its {len(grid)} starting points "
                        f"(L-BFGS, at most {max_iter} iterations): the losses may not follow "
                        "E + A/N^alpha + B/D^beta; see the report's runs")
    law = _law(theta)
    residuals = np.log(law.loss(n, d)) - log_l
    fit = Fit(law, value, len(grid), converged, residuals)
    rng = np.random.default_rng(seed)
    full = _grid()
    while len(fit.bootstrap) < bootstrap:
        pick = rng.integers(len(n), size=len(n))
        if len(set(zip(n[pick], d[pick], strict=True))) < len(PARAMETERS) or len(np.unique(n[pick])) < 2 \
                or len(np.unique(d[pick])) < 2:
            continue  # a resample that cannot identify the law: drawn again
        ln, ld, ll = log_n[pick], log_d[pick], log_l[pick]
        best = full[np.argsort(_grid_values(full, ln, ld, ll, delta), kind="stable")[:BOOTSTRAP_STARTS]]
        resampled, _, _ = _minimise(np.vstack([theta, best]), ln, ld, ll, delta, max_iter)
        fit.bootstrap.append(_law(resampled) if resampled is not None else
                             Law(math.nan, math.nan, math.nan, math.nan, math.nan))
    return fit


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Running mean over `window` points (shorter at the start)."""
    if window <= 1:
        return values
    csum = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(0, idx - window)
    return (csum[idx] - csum[lo]) / (idx - lo)


def envelope(curves: list[dict], points: int = 30, skip: float = 0.1, smooth: float = 0.05) -> dict:
    """Approach 1. `curves`: per run {"params", "tokens": array, "loss": array} (training loss per logged
    step). Each curve is smoothed (running mean over `smooth` of its points) and read from a `skip`
    fraction of its tokens on (warmup and the first descent are no run's optimum); at `points` log-spaced
    C = 6 N D where at least two sizes have a curve, the run of lowest loss gives (C, N_opt, loss). The
    exponent a is the log-log slope of N_opt on C (NaN when fewer than 2 distinct sizes win)."""
    prepared = []
    for c in curves:
        tokens, loss = np.asarray(c["tokens"], dtype=float), np.asarray(c["loss"], dtype=float)
        ok = np.isfinite(loss) & (tokens > 0)
        tokens, loss = tokens[ok], loss[ok]
        if len(tokens) < 2:
            continue
        loss = _smooth(loss, max(1, int(smooth * len(loss))))
        keep = tokens >= skip * tokens[-1]
        flops = 6 * c["params"] * tokens[keep]
        prepared.append((c["params"], np.log(flops), loss[keep]))
    if not prepared:
        return {"flops": [], "params": [], "loss": [], "a": math.nan, "b": math.nan}
    lo, hi = min(f[0] for _, f, _ in prepared), max(f[-1] for _, f, _ in prepared)
    grid = np.linspace(lo, hi, points)
    rows = []
    for log_c in grid:
        cands = [(float(np.interp(log_c, lf, ls)), n) for n, lf, ls in prepared if lf[0] <= log_c <= lf[-1]]
        if len({n for _, n in cands}) < 2:
            continue
        loss, n = min(cands)
        rows.append((math.exp(log_c), n, loss))
    flops = np.array([r[0] for r in rows])
    params = np.array([r[1] for r in rows], dtype=float)
    a = math.nan
    if len(np.unique(params)) >= 2:
        a = float(np.polyfit(np.log(flops), np.log(params), 1)[0])
    return {"flops": flops.tolist(), "params": params.tolist(), "loss": [r[2] for r in rows], "a": a,
            "b": 1 - a if math.isfinite(a) else math.nan, "winners": sorted({int(p) for p in params})}
