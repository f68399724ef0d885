"""Paired comparison of two models on the same episodes: Newcombe's method-10 interval, exact McNemar test,
the verdict rule and pairing episode records by (task, seed)."""

import math

import pytest
from scipy.stats import binomtest, norm

from vlaprune.errors import VlapruneError
from vlaprune.evaluate.paired import (
    compare,
    mcnemar_exact_p,
    newcombe_paired_ci,
    pair_episodes,
    verdict,
)


def outcomes(both: int, only_base: int, only_variant: int, neither: int) -> tuple[list[bool], list[bool]]:
    """Per-episode (baseline, variant) successes with the given paired counts."""
    pairs = [(1, 1)] * both + [(1, 0)] * only_base + [(0, 1)] * only_variant + [(0, 0)] * neither
    return [bool(x) for x, _ in pairs], [bool(y) for _, y in pairs]


def direct_newcombe10(a: int, b: int, c: int, d: int, conf: float = 0.95) -> tuple[float, float]:
    """Newcombe (1998) method 10 for p1 - p2, p1 = (a + b) / n, p2 = (a + c) / n, written out again
    independently: Wilson limits as the roots of the score quadratic, phi with the paper's corrections."""
    z = norm.ppf(0.5 + conf / 2)
    n = a + b + c + d

    def wilson(x: int) -> tuple[float, float]:
        # roots in p of (x/n - p)^2 = z^2 p (1 - p) / n
        qa, qb, qc = 1 + z * z / n, -(2 * x / n + z * z / n), (x / n) ** 2
        disc = math.sqrt(max(qb * qb - 4 * qa * qc, 0.0))
        return (-qb - disc) / (2 * qa), (-qb + disc) / (2 * qa)

    p1, p2 = (a + b) / n, (a + c) / n
    (l1, u1), (l2, u2) = wilson(a + b), wilson(a + c)
    e, f, g, h = a + b, c + d, a + c, b + d
    num = a * d - b * c
    if num > 0:
        num = max(num - n / 2, 0)
    phi = 0.0 if 0 in (e, f, g, h) else num / math.sqrt(e * f * g * h)
    dl, du = p1 - l1, u1 - p1
    ml, mu = p2 - l2, u2 - p2
    return (
        p1 - p2 - math.sqrt(dl**2 - 2 * phi * dl * mu + mu**2),
        p1 - p2 + math.sqrt(du**2 - 2 * phi * du * ml + ml**2),
    )


def test_published_example_cavo_2012():
    # Complete response before (rows) and after (columns) consolidation therapy, Cavo et al. (2012), as
    # analysed by Fagerland, Lydersen & Laake (Stat Med 2014; "Statistical Analysis of Contingency Tables",
    # ch. 8): 59 both, 6 before only, 16 after only, 80 neither. Published: difference -0.0621, Newcombe
    # square-and-add (= Newcombe 1998 method 10) 95% CI -0.1186 to -0.0046, McNemar exact P = 0.052479.
    low, high = newcombe_paired_ci(59, 6, 16, 80)
    assert (round(low, 4), round(high, 4)) == (-0.1186, -0.0046)
    # As a comparison: the variant is "before" (first), the baseline "after" (second).
    base, var = outcomes(59, 16, 6, 80)
    res = compare(base, var)
    assert res["n"] == 161 and res["b"] == 16 and res["c"] == 6
    assert res["baseline_successes"] == 75 and res["variant_successes"] == 65
    assert round(res["difference"], 4) == -0.0621
    assert (res["ci_low"], res["ci_high"]) == pytest.approx((low, high), abs=1e-12)
    assert round(res["mcnemar_p"], 6) == 0.052479


@pytest.mark.parametrize(
    "table",
    [
        (59, 6, 16, 80),
        (12, 2, 1, 0),  # negative a*d - b*c: phi used as it is
        (1, 1, 7, 12),
        (36, 12, 2, 0),
        (30, 2, 1, 10),  # a*d - b*c = 298 > n/2 = 21.5: corrected to 276.5
        (2, 1, 1, 2),  # 0 < a*d - b*c = 3 <= n/2: phi = 0
        (10, 0, 0, 0),  # a zero marginal: phi = 0
        (0, 3, 0, 5),
        (0, 0, 0, 7),
        (5, 5, 0, 0),
    ],
)
def test_interval_matches_an_independent_formula(table):
    low, high = newcombe_paired_ci(*table)
    ref = direct_newcombe10(*table)
    assert (low, high) == pytest.approx(ref, abs=1e-9)
    a, b, c, d = table
    assert low <= (b - c) / (a + b + c + d) <= high and -1 <= low and high <= 1


def test_mcnemar_exact_matches_scipy_binomtest():
    for b in range(13):
        for c in range(13):
            expected = 1.0 if b + c == 0 else binomtest(b, b + c, 0.5).pvalue
            assert mcnemar_exact_p(b, c) == pytest.approx(expected, rel=1e-9, abs=1e-15), (b, c)
    assert mcnemar_exact_p(300, 345) == pytest.approx(binomtest(300, 645, 0.5).pvalue, rel=1e-9)


def test_equal_outcomes_and_bad_input():
    for base in ([True] * 20, [False] * 20, [True, False, True, True, False] * 4):
        res = compare(base, list(base))
        assert res["difference"] == 0 and res["b"] == res["c"] == 0 and res["mcnemar_p"] == 1.0
        assert res["ci_low"] < 0 < res["ci_high"]
    with pytest.raises(VlapruneError, match="no episodes"):
        compare([], [])
    with pytest.raises(VlapruneError, match="same episodes"):
        compare([True], [True, False])


def test_verdict_rule():
    assert verdict(compare(*outcomes(180, 0, 0, 20)), 0.05) == "keeps success within 5 points"
    assert verdict(compare(*outcomes(50, 40, 0, 10)), 0.05) == "loses success"
    assert verdict(compare(*outcomes(6, 2, 0, 2)), 0.05) == "not distinguishable at this episode count"
    # The rule itself, on intervals: rule 1 first, then "significantly worse", else undecided.
    assert verdict({"ci_low": -0.03, "ci_high": -0.01}, 0.05) == "keeps success within 5 points"
    assert verdict({"ci_low": -0.05, "ci_high": 0.2}, 0.05) == "keeps success within 5 points"
    assert verdict({"ci_low": -0.09, "ci_high": -0.01}, 0.05) == "loses success"
    assert verdict({"ci_low": -0.30, "ci_high": -0.10}, 0.05) == "loses success"
    assert verdict({"ci_low": -0.09, "ci_high": 0.0}, 0.05) == "not distinguishable at this episode count"
    assert verdict({"ci_low": -0.03, "ci_high": 0.01}, 0.025) == "not distinguishable at this episode count"
    assert verdict({"ci_low": -0.02, "ci_high": 0.01}, 0.025) == "keeps success within 2.5 points"
    with pytest.raises(VlapruneError):
        verdict({"ci_low": 0.0, "ci_high": 0.1}, -0.05)


def test_pair_episodes():
    base = [{"seed": 2, "success": True}, {"seed": 1, "success": False, "steps": 9}]
    var = [{"seed": 1, "success": True}, {"seed": 2, "success": True}]
    assert pair_episodes(base, var) == ([False, True], [True, True])  # paired by seed, not by position
    base_t = {"reach-v3": base, "drawer-close-v3": [{"seed": 1, "success": True}]}
    var_t = {"drawer-close-v3": [{"seed": 1, "success": False}], "reach-v3": var}
    assert pair_episodes(base_t, var_t) == ([True, False, True], [False, True, True])
    res = compare(*pair_episodes(base_t, var_t))
    assert res["n"] == 3 and res["b"] == 1 and res["c"] == 1

    with pytest.raises(VlapruneError, match="do not pair") as err:
        pair_episodes(base, [{"seed": 1, "success": True}, {"seed": 3, "success": True}])
    assert "\n" not in str(err.value)
    with pytest.raises(VlapruneError, match="do not pair"):
        pair_episodes(base_t, {"reach-v3": var})
    with pytest.raises(VlapruneError, match="twice"):
        pair_episodes(base + base[:1], var)
    with pytest.raises(VlapruneError, match="without 'seed'"):
        pair_episodes([{"success": True}], var)
