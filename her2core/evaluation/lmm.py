"""REML fit of a linear mixed model with crossed random intercepts, and Satterthwaite t tests.

    y = X beta + sum_k Z_k b_k + e,   b_k ~ N(0, sigma^2 theta_k^2 I),   e ~ N(0, sigma^2 I)

The criterion is lme4's profiled REML deviance in its relative-covariance (theta)
parametrisation (Bates et al. 2015, J Stat Softw 67(1), eqs. 34-42):

    d(theta) = log|L_theta|^2 + log|R_X|^2 + (n - p) [1 + log(2 pi pwrss / (n - p))]

minimised over theta >= 0 (a boundary fit, theta_k = 0, is a valid answer). Nothing of
size n x n is formed: the random factor with the most levels (the test image) has a
diagonal block in Henderson's equations; it is eliminated in closed form (Schur
complement), which leaves a small dense system over the other factors' levels (the
models) and the fixed effects. Sufficient statistics are accumulated once in O(n k),
k = levels of the small factors + fixed effects. The image block enters only through
1 / (theta^2 n_i + 1), n_i = rows of image i, so its contributions are summed once per
distinct n_i: each deviance evaluation then costs O(distinct n_i x k^2), independent of n
and of the number of images.

Degrees of freedom follow lmerTest (Kuznetsova et al. 2017, J Stat Softw 82(13)):
varpar = (theta, sigma), A = 2 H^+ with H the Hessian of the (unprofiled) REML deviance
in varpar (Moore-Penrose inverse over eigenvalues > 1e-8), g = the gradient of
Var(L beta) = sigma^2 L (R_X' R_X)^-1 L' in varpar, and df = 2 Var(L beta)^2 / (g' A g).
Derivatives are central differences (lmerTest uses numDeriv's Richardson extrapolation).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import numpy as np

EIGEN_TOL = 1e-8  # lmerTest's tolerance on the Hessian's eigenvalues


@dataclass
class LmmFit:
    """Estimates of one fit; arrays are indexed like `terms` / `random`."""

    terms: list[str]
    beta: np.ndarray
    vcov: np.ndarray
    df: np.ndarray  # Satterthwaite denominator degrees of freedom per coefficient
    random: list[str]
    theta: np.ndarray  # SD of each random intercept relative to sigma
    sigma: float
    reml_criterion: float  # -2 log restricted likelihood at the optimum (lme4's REMLcrit)
    n: int
    boundary: bool  # some theta_k == 0: lme4's "boundary (singular) fit"
    converged: bool
    notes: list[str] = field(default_factory=list)

    @property
    def std_error(self) -> np.ndarray:
        return np.sqrt(np.diag(self.vcov))

    @property
    def t_value(self) -> np.ndarray:
        return self.beta / self.std_error

    @property
    def p_value(self) -> np.ndarray:
        from scipy import stats

        return 2.0 * stats.t.sf(np.abs(self.t_value), self.df)

    def conf_int(self, level: float = 0.95) -> np.ndarray:
        """(low, high) per coefficient from the Satterthwaite t distribution."""
        from scipy import stats

        q = stats.t.ppf(0.5 + level / 2.0, self.df)
        se = self.std_error
        return np.column_stack([self.beta - q * se, self.beta + q * se])

    @property
    def variances(self) -> dict[str, float]:
        """Variance of each random intercept and of the residual (lme4's VarCorr, squared)."""
        out = {name: float((t * self.sigma) ** 2) for name, t in zip(self.random, self.theta)}
        out["residual"] = float(self.sigma ** 2)
        return out


class _Crossed:
    """Sufficient statistics of y, X and the random factors; deviance pieces for a theta."""

    def __init__(self, y: np.ndarray, X: np.ndarray, codes: list[np.ndarray]):
        n, p = X.shape
        self.n, self.p = n, p
        sizes = [int(c.max()) + 1 for c in codes]
        big = int(np.argmax(sizes))  # the diagonal block: the factor with most levels
        self.order = [big] + [k for k in range(len(codes)) if k != big]
        cd = codes[big]
        small = [codes[k] for k in self.order[1:]]
        small_sizes = [sizes[k] for k in self.order[1:]]
        self.q_small = int(sum(small_sizes))
        self.small_slices = np.cumsum([0] + small_sizes)
        qd = sizes[big]
        k = self.q_small + p
        # W = [Z_small, X] as column codes/values without forming Z_small densely
        offsets = self.small_slices[:-1]
        small_global = [c + o for c, o in zip(small, offsets)]
        self.n_d = np.bincount(cd, minlength=qd).astype(float)
        ZdW = np.zeros((qd, k))
        WtW = np.zeros((k, k))
        Wty = np.zeros(k)
        for g in small_global:
            ZdW[:, :self.q_small] += np.bincount(cd * self.q_small + g, minlength=qd * self.q_small
                                                 ).reshape(qd, self.q_small)
            Wty[:self.q_small] += np.bincount(g, weights=y, minlength=self.q_small)
            for h in small_global:
                WtW[:self.q_small, :self.q_small] += np.bincount(
                    g * self.q_small + h, minlength=self.q_small ** 2).reshape(self.q_small, -1)
            for j in range(p):
                WtW[:self.q_small, self.q_small + j] += np.bincount(g, weights=X[:, j],
                                                                    minlength=self.q_small)
        WtW[self.q_small:, :self.q_small] = WtW[:self.q_small, self.q_small:].T
        for j in range(p):
            ZdW[:, self.q_small + j] = np.bincount(cd, weights=X[:, j], minlength=qd)
        WtW[self.q_small:, self.q_small:] = X.T @ X
        Wty[self.q_small:] = X.T @ y
        Zdy = np.bincount(cd, weights=y, minlength=qd)
        # D_i = theta_d^2 n_i + 1 depends on an image only through its row count n_i: summing
        # the image block's contributions per distinct count once makes every later deviance
        # evaluation O(counts k^2), independent of the number of images and rows.
        self.counts, which = np.unique(self.n_d, return_inverse=True)
        self.mult = np.bincount(which).astype(float)
        self.M = np.stack([np.einsum("ik,il->kl", ZdW[which == j], ZdW[which == j])
                           for j in range(len(self.counts))])
        self.V = np.stack([ZdW[which == j].T @ Zdy[which == j] for j in range(len(self.counts))])
        self.S = np.array([Zdy[which == j] @ Zdy[which == j] for j in range(len(self.counts))])
        self.WtW, self.Wty = WtW, Wty
        self.yty = float(y @ y)
        self.penalty = np.r_[np.ones(self.q_small), np.zeros(p)]

    def theta_in_order(self, theta: np.ndarray) -> np.ndarray:
        return np.asarray(theta, float)[self.order]

    def solve(self, theta: np.ndarray) -> dict:
        """Penalised least squares at theta: log|L|^2, R_X, pwrss and beta."""
        t = self.theta_in_order(theta)
        td, ts = t[0], t[1:]
        lam = np.r_[np.repeat(ts, np.diff(self.small_slices)), np.ones(self.p)]
        w = 1.0 / (td * td * self.counts + 1.0)  # 1 / D_i per distinct image row count
        G = np.tensordot(w, self.M, axes=1)  # sum_i ZdW_i ZdW_i' / D_i
        g = w @ self.V
        K = lam[:, None] * (self.WtW - td * td * G) * lam[None, :] + np.diag(self.penalty)
        LK = np.linalg.cholesky(K)
        s = np.linalg.solve(K, lam * (self.Wty - td * td * g))  # k x k: LAPACK, no wrappers
        # y'y - rhs' solution, the image block's part in closed form
        pwrss = (self.yty - td * td * float(w @ self.S) + td * td * float(g @ (lam * s))
                 - float((lam * self.Wty) @ s))
        diag = np.diag(LK)
        q = self.q_small
        return {"ldL2": float(-(self.mult @ np.log(w)) + 2.0 * np.log(diag[:q]).sum()),
                "ldRX2": float(2.0 * np.log(diag[q:]).sum()), "RX_L": LK[q:, q:],
                "beta": s[q:], "pwrss": max(pwrss, 1e-300)}

    def profiled_reml(self, theta) -> float:
        """lme4's REML criterion with sigma profiled out (inf where the system is not PD)."""
        try:
            s = self.solve(theta)
        except np.linalg.LinAlgError:
            return float("inf")
        nmp = self.n - self.p
        return s["ldL2"] + s["ldRX2"] + nmp * (1.0 + np.log(2.0 * np.pi * s["pwrss"] / nmp))

    def profiled_ml(self, theta) -> float:
        """lme4's ML deviance with sigma profiled out (for likelihood-ratio tests)."""
        try:
            s = self.solve(theta)
        except np.linalg.LinAlgError:
            return float("inf")
        return s["ldL2"] + self.n * (1.0 + np.log(2.0 * np.pi * s["pwrss"] / self.n))

    def reml(self, varpar) -> float:
        """-2 log restricted likelihood at varpar = (theta..., sigma) (lmerTest's devfun_vp)."""
        theta, sigma2 = varpar[:-1], varpar[-1] ** 2
        s = self.solve(theta)
        return (s["ldL2"] + s["ldRX2"] + s["pwrss"] / sigma2
                + (self.n - self.p) * np.log(2.0 * np.pi * sigma2))

    def covbeta(self, varpar) -> np.ndarray:
        """sigma^2 (R_X' R_X)^-1 at varpar (lmerTest's get_covbeta)."""
        L = self.solve(varpar[:-1])["RX_L"]
        Li = np.linalg.inv(L)
        return varpar[-1] ** 2 * (Li.T @ Li)


def _steps(x: np.ndarray) -> np.ndarray:
    """numDeriv's step rule: relative 1e-4, absolute 1e-4 at zero."""
    return np.where(np.abs(x) > 1e-6, 1e-4 * np.abs(x), 1e-4)


def _hessian(f, x: np.ndarray) -> np.ndarray:
    """Central-difference Hessian with one Richardson refinement (h and h/2)."""

    def once(h):
        m = len(x)
        H = np.zeros((m, m))
        f0 = f(x)
        for i in range(m):
            ei = np.zeros(m)
            ei[i] = h[i]
            H[i, i] = (f(x + ei) - 2.0 * f0 + f(x - ei)) / h[i] ** 2
            for j in range(i):
                ej = np.zeros(m)
                ej[j] = h[j]
                H[i, j] = H[j, i] = (f(x + ei + ej) - f(x + ei - ej) - f(x - ei + ej)
                                     + f(x - ei - ej)) / (4.0 * h[i] * h[j])
        return H

    h = _steps(x) * 10.0
    return (4.0 * once(h / 2.0) - once(h)) / 3.0


def _jacobian(f, x: np.ndarray) -> list[np.ndarray]:
    """d f / d x_i for a matrix-valued f, central differences with one Richardson refinement."""
    out = []
    h = _steps(x) * 10.0

    def diff(i, step):
        e = np.zeros(len(x))
        e[i] = step
        return (f(x + e) - f(x - e)) / (2.0 * step)

    for i in range(len(x)):
        out.append((4.0 * diff(i, h[i] / 2.0) - diff(i, h[i])) / 3.0)
    return out


def _minimise(crit, start: np.ndarray) -> tuple[np.ndarray, bool]:
    """Bounded quasi-Newton on theta >= 0, then Newton polishing of the free coordinates."""
    from scipy.optimize import minimize

    def grad(t):
        g = np.zeros_like(t)
        for i in range(len(t)):
            h = 1e-6 * max(1.0, abs(t[i]))
            e = np.zeros_like(t)
            e[i] = h
            lo = t - e
            if lo[i] < 0:  # one-sided at the bound
                g[i] = (crit(t + e) - crit(t)) / h
            else:
                g[i] = (crit(t + e) - crit(lo)) / (2 * h)
        return g

    res = minimize(crit, start, jac=grad, method="L-BFGS-B", bounds=[(0.0, None)] * len(start),
                   options={"ftol": 1e-15, "gtol": 1e-9, "maxiter": 500})
    theta = np.clip(res.x, 0.0, None)
    best = crit(theta)
    for _ in range(8):  # Newton on the coordinates off the bound: tight optimum for beta
        free = theta > 1e-8
        if not free.any():
            break
        g = grad(theta)[free]
        H = _hessian(partial(_on_free, crit, theta, free), theta[free])
        try:
            step = np.linalg.solve(H, g)
        except np.linalg.LinAlgError:
            break
        if not np.all(np.isfinite(step)):
            break
        cand = _put(theta, free, np.clip(theta[free] - step, 0.0, None))
        val = crit(cand)
        if val > best + 1e-10:
            break
        done = np.max(np.abs(cand - theta)) < 1e-10
        theta, best = cand, min(val, best)
        if done:
            break
    # a zero theta on the bound is an optimum when the criterion rises into the interior
    converged = bool(res.success or np.linalg.norm(grad(theta)[theta > 1e-8]) < 1e-3)
    return theta, converged


def _on_free(crit, theta, mask, values):
    return crit(_put(theta, mask, values))


def _put(theta, mask, values):
    t = theta.copy()
    t[mask] = values
    return t


def fit_lmm(y, X, terms: list[str], random: dict[str, np.ndarray]) -> LmmFit:
    """REML fit of y ~ X + (1|f) for each factor f in `random` (name -> level codes 0..q-1).

    At least one random factor with two levels is needed (else it is OLS).
    """
    y = np.asarray(y, float)
    X = np.asarray(X, float)
    names = list(random)
    codes = _codes(random)
    # standardise y: theta is scale free, beta and sigma scale with sd; better conditioned sums
    has_intercept = "Intercept" in terms
    mu, sd = (float(y.mean()) if has_intercept else 0.0), float(y.std()) or 1.0
    ys = (y - mu) / sd
    model = _Crossed(ys, X, codes)
    theta, converged = _minimise(model.profiled_reml, np.ones(len(names)))
    sol = model.solve(theta)
    nmp = model.n - model.p
    sigma_s = float(np.sqrt(sol["pwrss"] / nmp))
    varpar = np.r_[theta, sigma_s * sd]  # lmerTest's varpar, on the data's scale

    def reml(v):
        return model.reml(np.r_[v[:-1], v[-1] / sd]) + nmp * np.log(sd * sd)

    def covbeta(v):
        return model.covbeta(np.r_[v[:-1], v[-1] / sd]) * sd * sd

    vcov = covbeta(varpar)
    notes = []
    H = _hessian(reml, varpar)
    evals, evecs = np.linalg.eigh(H)
    pos = evals > EIGEN_TOL
    if (evals < -EIGEN_TOL).any():
        notes.append(f"REML Hessian has {int((evals < -EIGEN_TOL).sum())} negative eigenvalue(s) "
                     "(as lmerTest: model failed to converge)")
    A = 2.0 * (evecs[:, pos] / evals[pos]) @ evecs[:, pos].T
    jac = _jacobian(covbeta, varpar)
    var = np.diag(vcov)
    g = np.stack([np.diag(J) for J in jac], axis=1)  # (p, m)
    denom = np.einsum("pi,ij,pj->p", g, A, g)
    with np.errstate(divide="ignore", invalid="ignore"):
        df = 2.0 * var ** 2 / denom
    beta = sol["beta"] * sd
    if has_intercept:  # the intercept column is all ones: it carries the mean shift
        beta[terms.index("Intercept")] += mu
    boundary = bool((theta < 1e-8).any())
    if boundary:
        zero = [n for n, t in zip(names, theta) if t < 1e-8]
        notes.append(f"boundary (singular) fit: variance of {', '.join(zero)} estimated as 0")
    return LmmFit(terms=list(terms), beta=beta, vcov=vcov, df=df, random=names, theta=theta,
                  sigma=float(varpar[-1]), reml_criterion=float(reml(varpar)), n=len(y),
                  boundary=boundary, converged=converged, notes=notes)


def _codes(random: dict) -> list[np.ndarray]:
    import pandas as pd

    return [pd.factorize(np.asarray(v))[0].astype(np.int64) for v in random.values()]


def likelihood_ratio_tests(y, X, columns: dict[str, list[int]], random: dict[str, np.ndarray]
                           ) -> list[dict]:
    """Likelihood-ratio test of each term no other term contains (lme4's anova of ML refits).

    `columns`: term name -> its column indices in X. Both models are refitted by maximum
    likelihood (REML criteria of different fixed effects do not compare); chi-square with
    the term's column count as df.
    """
    from scipy import stats

    y = np.asarray(y, float)
    X = np.asarray(X, float)
    ys = (y - y.mean()) / (y.std() or 1.0)  # a shift and scale common to both models
    codes = _codes(random)

    def ml(cols):
        model = _Crossed(ys, X[:, cols], codes)
        theta, _ = _minimise(model.profiled_ml, np.ones(len(codes)))
        return model.profiled_ml(theta)

    everything = sorted(i for c in columns.values() for i in c)
    full = ml(everything)
    out = []
    for term, cols in columns.items():
        parts = set(term.split(":"))
        if term == "Intercept" or any(parts < set(t.split(":")) for t in columns if t != term):
            continue
        chisq = max(ml([i for i in everything if i not in cols]) - full, 0.0)
        out.append({"term": term, "chisq": float(chisq), "df": len(cols),
                    "p_value": float(stats.chi2.sf(chisq, len(cols)))})
    return out
