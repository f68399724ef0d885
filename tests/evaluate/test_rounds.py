"""Episodes in rounds until decided (evaluate/rounds.py), on injected outcomes: where it stops, which seeds
each side runs, and that the baseline runs only the seeds a comparison needs."""

from vlaprune.configs import EpisodesConfig
from vlaprune.evaluate.paired import KEEPS, LOSES, UNDECIDED
from vlaprune.evaluate.rounds import on_seeds, until_decided

TASKS = ("a", "b")


def model(success, calls: list):
    """run(seed, n) of a fake model whose episode (task, seed) succeeds when success(task, seed)."""

    def run(seed: int, n: int):
        calls.append((seed, n))
        return {t: [{"seed": s, "success": success(t, s)} for s in range(seed, seed + n)] for t in TASKS}

    return run


def test_an_obvious_loss_stops_at_an_early_look():
    eps = EpisodesConfig(n_episodes=3, sequential=True, round_episodes=2, max_episodes=40)
    vcalls, bcalls = [], []
    run_v, run_b = model(lambda t, s: False, vcalls), model(lambda t, s: True, bcalls)
    variant, base, r = until_decided(run_v, run_b, run_b(eps.seed, 3), run_v(eps.seed, 3), eps)
    assert r["verdict"] == LOSES and r["episodes_per_task"] == 5 and r["looks"] == [3, 5]
    assert vcalls == [(eps.seed, 3), (eps.seed + 3, 2)] and bcalls == [(eps.seed, 3), (eps.seed + 3, 2)]
    assert all(len(v) == 5 for v in variant.values()) and all(len(v) == 5 for v in base.values())


def test_identical_models_run_until_keeps_and_the_baseline_is_reused():
    eps = EpisodesConfig(n_episodes=4, sequential=True, round_episodes=4, max_episodes=200)
    same = lambda t, s: s % 5 != 0  # noqa: E731
    bcalls = []
    run_b = model(same, bcalls)
    base = run_b(eps.seed, 4)
    variant, base, r = until_decided(model(same, []), run_b, base, model(same, [])(eps.seed, 4), eps)
    assert r["verdict"] == KEEPS.format(points="5") and r["episodes_per_task"] < 200
    assert r["difference"] == 0 and r["ci_low"] >= -0.05
    # a second variant that stops earlier runs nothing more on the baseline
    n_base = len(bcalls)
    worse = model(lambda t, s: False, [])
    _, base2, r2 = until_decided(worse, run_b, base, worse(eps.seed, 4), eps)
    assert r2["verdict"] == LOSES and len(bcalls) == n_base and base2 == base
    assert on_seeds(base, {"a": [{"seed": eps.seed}], "b": []}) == {"a": [base["a"][0]], "b": []}


def test_undecided_at_the_maximum_says_how_many_more_episodes():
    eps = EpisodesConfig(n_episodes=2, sequential=True, round_episodes=2, max_episodes=6)
    run = model(lambda t, s: True, [])
    variant, _, r = until_decided(run, run, run(eps.seed, 2), run(eps.seed, 2), eps)
    assert r["verdict"] == UNDECIDED and r["looks"] == [2, 4, 6] and r["episodes_per_task"] == 6
    assert r["more_needed"] and r["more_needed"] > 0 and all(len(v) == 6 for v in variant.values())
