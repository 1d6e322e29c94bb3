"""The statistics of the experiment report: means, intervals, tests, relative lift, sample ratio.

The web service imports :mod:`feed.experiments` on every request, so scipy is imported inside
the functions that need it (the first report a process computes pays for it), never at module
level.

Examples
--------
>>> mean_var([1.0, 2.0, 3.0])
(2.0, 1.0)
>>> [round(x, 4) for x in wilson(7, 40)]
[0.0875, 0.3195]

A lift of +20% (means 1.0 and 1.2, variances 1.0 and 1.44, 400 users per arm): ignoring the
control's variance would give +20% ± 11.8%.

>>> [round(x, 3) for x in lift_ci(1.0, 1.0, 400, 1.2, 1.44, 400)]
[0.034, 0.366]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

SRM_ALPHA = 0.001  # sample-ratio mismatch is flagged below this p-value
Z95 = 1.959963984540054  # two-sided 95% normal quantile: scipy.stats.norm.ppf(0.975)


def mean_var(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and sample variance (ddof=1; 0 for fewer than two values)."""
    n = len(xs)
    if n == 0:
        return 0.0, 0.0
    m = sum(xs) / n
    return m, (sum((x - m) ** 2 for x in xs) / (n - 1) if n > 1 else 0.0)


def welch(x: Sequence[float], y: Sequence[float]) -> dict[str, Any]:
    """Difference of means ``mean(y) - mean(x)``: 95% normal CI and Welch's t-test p-value."""
    (mx, vx), (my, vy) = mean_var(x), mean_var(y)
    if len(x) < 2 or len(y) < 2:
        return {"diff": my - mx, "diff_ci": None, "p_value": None}
    se2 = vx / len(x) + vy / len(y)
    diff = my - mx
    if se2 == 0:
        return {"diff": diff, "diff_ci": [diff, diff], "p_value": 1.0 if diff == 0 else 0.0}
    from scipy.stats import ttest_ind_from_stats

    test = ttest_ind_from_stats(
        my, math.sqrt(vy), len(y), mx, math.sqrt(vx), len(x), equal_var=False
    )
    se = math.sqrt(se2)
    return {
        "diff": diff,
        "diff_ci": [diff - Z95 * se, diff + Z95 * se],
        "p_value": float(test.pvalue),
    }


def wilson(k: int, n: int) -> list[float] | None:
    """Wilson 95% interval of a proportion ``k / n`` (closed form; as
    ``scipy.stats.binomtest(k, n).proportion_ci(method="wilson")``)."""
    if n == 0:
        return None
    p, z2 = k / n, Z95 * Z95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return [centre - half, centre + half]


def two_proportions(k1: int, n1: int, k2: int, n2: int) -> dict[str, Any]:
    """``k2/n2 - k1/n1``: 95% (unpooled) normal CI and the pooled two-proportion z-test."""
    if n1 == 0 or n2 == 0:
        return {"diff": None, "diff_ci": None, "p_value": None}
    p1, p2 = k1 / n1, k2 / n2
    diff, pooled = p2 - p1, (k1 + k2) / (n1 + n2)
    se0 = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    se = math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    if se0 == 0:
        p = 1.0 if diff == 0 else 0.0
    else:
        from scipy.special import ndtr

        p = float(2 * ndtr(-abs(diff) / se0))
    return {"diff": diff, "diff_ci": [diff - Z95 * se, diff + Z95 * se], "p_value": p}


def lift_ci(mc: float, vc: float, nc: int, mt: float, vt: float, nt: int) -> list[float] | None:
    """95% interval of the relative lift ``mt / mc - 1`` by the delta method.

    Both means are uncertain: ``Var ≈ vt / (nt·mc²) + mt²·vc / (nc·mc⁴)`` (``v`` the per-user
    variance, ``p(1 - p)`` for a proportion). None without users in an arm or with a zero control.
    """
    if nc == 0 or nt == 0 or mc == 0:
        return None
    lift = mt / mc - 1
    half = Z95 * math.sqrt(vt / (nt * mc**2) + mt**2 * vc / (nc * mc**4))
    return [lift - half, lift + half]


def srm(observed: dict[str, int], weights: dict[str, float]) -> dict[str, Any]:
    """Chi-square test of observed users per arm against the configured weights."""
    arms = [a for a in weights if weights[a] > 0]
    total = sum(observed.get(a, 0) for a in weights)
    stray = sum(observed.get(a, 0) for a in weights if weights[a] <= 0)
    out: dict[str, Any] = {
        "observed": {a: observed.get(a, 0) for a in weights},
        "expected_share": {a: weights[a] / 100 for a in weights},
        "chi2": None,
        "df": len(arms) - 1,
        "p_value": None,
        "mismatch": False,
    }
    if total == 0 or len(arms) < 2:
        return out
    chi2 = sum(
        (observed.get(a, 0) - total * weights[a] / 100) ** 2 / (total * weights[a] / 100)
        for a in arms
    )
    if stray:
        p = 0.0
    else:
        from scipy.stats import chi2 as chi2_dist

        p = float(chi2_dist.sf(chi2, len(arms) - 1))
    out.update(chi2=chi2, p_value=p, mismatch=p < SRM_ALPHA)
    return out
