"""The same mixed model fitted by R's lme4 + lmerTest through `Rscript`: the reference.

Used by the tests (our fit against lme4 on the same table) and the benchmark. The factor
levels are passed explicitly, so R's treatment contrasts use the same reference levels
and column order as ours and coefficients compare one to one. Nothing here runs unless
asked; R is optional (Debian: r-cran-lmertest).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

_SCRIPT = r"""
suppressMessages({library(lmerTest); library(jsonlite)})
a <- commandArgs(trailingOnly = TRUE)
spec <- fromJSON(a[2])  # a file
d <- read.csv(a[1], colClasses = "character")
d[[spec$response]] <- as.numeric(d[[spec$response]])  # the other columns stay character
for (f in names(spec$levels)) d[[f]] <- factor(d[[f]], levels = spec$levels[[f]])
t0 <- proc.time()[["elapsed"]]
ctrl <- if (isTRUE(spec$tight)) lmerControl(optimizer = "bobyqa",
  optCtrl = list(rhobeg = 2e-3, rhoend = 1e-12, maxfun = 1e5)) else lmerControl()
fit <- lmer(as.formula(spec$formula), data = d, REML = TRUE, control = ctrl)
co <- summary(fit)$coefficients
t1 <- proc.time()[["elapsed"]]
vc <- as.data.frame(VarCorr(fit))
lrt <- lapply(spec$lrt_terms, function(term) {  # ML refits, as lme4's anova(m0, m1)
  a <- suppressMessages(anova(update(fit, as.formula(paste(". ~ . -", term))), fit))
  list(term = term, chisq = a$Chisq[2], df = a$Df[2], p_value = a[["Pr(>Chisq)"]][2])
})
out <- list(terms = rownames(co), estimate = unname(co[, "Estimate"]),
            std_error = unname(co[, "Std. Error"]), df = unname(co[, "df"]),
            p_value = unname(co[, "Pr(>|t|)"]),
            variances = setNames(as.list(vc$vcov), ifelse(vc$grp == "Residual", "residual", vc$grp)),
            theta = unname(getME(fit, "theta")), sigma = sigma(fit),
            reml_criterion = unname(REMLcrit(fit)), singular = isSingular(fit),
            lrt = lrt, seconds = t1 - t0, lme4 = as.character(packageVersion("lme4")),
            lmerTest = as.character(packageVersion("lmerTest")))
writeLines(toJSON(out, digits = NA, auto_unbox = TRUE), a[3])
"""


def unavailable() -> str | None:
    """Why lme4/lmerTest cannot be run here, or None when they can."""
    if shutil.which("Rscript") is None:
        return "Rscript not found (Debian: apt-get install r-cran-lmertest)"
    r = subprocess.run(["Rscript", "-e", "suppressMessages({library(lmerTest); library(jsonlite)})"],
                       capture_output=True, text=True, check=False)
    if r.returncode:
        return "R packages lmerTest/jsonlite missing (Debian: apt-get install r-cran-lmertest)"
    return None


def fit_lme4(df, formula: str, levels: dict[str, list[str]], *, measure_memory: bool = False,
             tight: bool = False, lrt_terms: tuple[str, ...] = ()) -> dict:
    """lmer(formula, REML = TRUE) + lmerTest's Satterthwaite summary of `df` (a DataFrame).

    `formula` in R syntax, e.g. "ssim ~ framework * dataset + (1|model) + (1|image)";
    `levels`: factor name -> level order (the first is the reference). Returns the
    coefficients (R's names), variances, theta, sigma, REML criterion, R's own fit time
    (`seconds`) and, with `measure_memory`, R's peak resident memory (`peak_rss_mb`).
    `tight`: bobyqa run to rhoend 1e-12 instead of lme4's default stopping rule, to see the
    optimum itself (the default stops up to ~1e-6 relative away on small coefficients).
    `lrt_terms`: terms to test by likelihood ratio (ML refits without each), after the timing.
    """
    response = formula.split("~")[0].strip()
    with tempfile.TemporaryDirectory(prefix="her2_lme4_") as tmp:
        tmp = Path(tmp)
        cols = [c for c in dict.fromkeys(re.findall(r"[A-Za-z_][A-Za-z0-9_.]*", formula))
                if c in df.columns]
        df[cols].to_csv(tmp / "data.csv", index=False, float_format="%.17g")
        (tmp / "fit.R").write_text(_SCRIPT)
        (tmp / "spec.json").write_text(json.dumps({
            "formula": formula, "response": response, "tight": tight,
            "lrt_terms": list(lrt_terms),
            "levels": {k: list(map(str, v)) for k, v in levels.items()}}))
        cmd = ["Rscript", str(tmp / "fit.R"), str(tmp / "data.csv"), str(tmp / "spec.json"),
               str(tmp / "out.json")]
        if measure_memory:
            cmd = ["/usr/bin/time", "-f", "HER2_MAXRSS_KB=%M", *cmd]
        r = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if r.returncode:
            raise RuntimeError(f"Rscript failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
        out = json.loads((tmp / "out.json").read_text())
    out["messages"] = [ln for ln in r.stderr.splitlines() if not ln.startswith("HER2_MAXRSS_KB=")]
    for ln in r.stderr.splitlines():
        if ln.startswith("HER2_MAXRSS_KB="):
            out["peak_rss_mb"] = int(ln.split("=", 1)[1]) / 1024.0
    return out
