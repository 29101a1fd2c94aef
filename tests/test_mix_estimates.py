"""The class-mix estimates of simulations/mix_estimates.py: EM and BBSE recover a known mix, and
the first-selection diagnostic runs end to end on a small federation."""

import numpy as np

from fedal.uncertainty import bbse_mix as bbse, confusion_counts
from simulations.mix_estimates import ESTIMATES, first_selection, saerens_em, table
from tests.test_protocol import SMALL


def test_em_recovers_a_pools_prior_from_calibrated_posteriors():
    # two Gaussian classes; posteriors are Bayes-exact under a 50/50 training prior, the pool is 80/20
    rng = np.random.default_rng(0)
    y = (rng.random(20000) < 0.2).astype(int)
    x = rng.normal(np.where(y == 1, 1.0, -1.0), 1.0)
    like = np.stack([np.exp(-(x + 1) ** 2 / 2), np.exp(-(x - 1) ** 2 / 2)], 1)
    post = like / like.sum(1, keepdims=True)
    assert abs(post.mean(0)[1] - 0.2) > 0.05  # the plain mean is biased toward the training prior
    q = saerens_em(post, np.array([0.5, 0.5]))
    assert abs(q[1] - 0.2) < 0.02


def test_bbse_inverts_the_confusion_matrix():
    conf = np.array([[80, 20, 0], [10, 90, 0], [0, 30, 70]])  # true x predicted
    m = (conf / conf.sum(1, keepdims=True)).T
    q = np.array([0.5, 0.1, 0.4])
    assert np.allclose(bbse(conf, m @ q), q, atol=1e-9)
    assert not np.allclose(m @ q, q)  # the argmax share itself is off
    assert np.allclose(bbse(conf, np.zeros(3)), 0)  # a pool without predictions


def test_confusion_counts_are_true_by_predicted():
    probs = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.0, 0.1, 0.9]])
    conf = confusion_counts(probs, [0, 1, 1, 2], 3)
    assert conf.tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]


def test_first_selection_runs_and_tabulates():
    rc = {**SMALL, "clients-per-round": 2, "seed": 3}
    r = first_selection(rc, 8, draws=20)
    assert r.seed == 3 and 0 < r.accuracy <= 1
    assert set(r.tv) == set(r.greedy) == set(ESTIMATES)
    assert all(0 <= v <= 1 for v in r.tv.values())
    assert 0 < r.random <= np.log(10) and 0 < r.oracle <= np.log(10)
    text = table([r])
    assert "| 3 |" in text and "oracle" in text


def _documented_mix_estimates_commands():
    import shlex
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    found = []
    for doc in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        text = doc.read_text()
        # Inline commands may wrap over a line break inside backticks: join each `...` span.
        for span in [*text.splitlines(), *(" ".join(m.split()) for m in text.split("`")[1::2])]:
            words = shlex.split(span.split(" #")[0], posix=True) if "simulations.mix_estimates" in span else []
            if "simulations.mix_estimates" in words:
                args = words[words.index("simulations.mix_estimates") + 1:]
                if args and (doc.name, args) not in found:  # a bare module mention names no suite
                    found.append((doc.name, args))
    return found


def test_documented_mix_estimates_commands_validate(capsys):
    import pytest

    from simulations.mix_estimates import main

    cmds = _documented_mix_estimates_commands()
    assert len(cmds) >= 3, cmds  # results.md twice, method.md once (wrapped inside backticks)
    for where, args in cmds:
        assert main([*args, "--dry-run"]) == 0, where
        assert "validated; nothing was run" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="numerics = 'portabel' is invalid; valid: native, portable"):
        main(["mnist1d-shard-pretrained", "--seeds", "0", "--set", "numerics=portabel"])
    with pytest.raises(SystemExit):
        main(["mnist1d-shard-pretrained", "--set", "numerics"])
    assert "KEY=VALUE" in capsys.readouterr().err
