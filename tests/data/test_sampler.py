"""The domain sampler: distribution, no replacement inside a domain, exhaustion, identical replay."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from llamafactory_dids.data.sampler import DomainMixtureSampler

SIZES = [50, 30, 20]
DOMAIN_IDS = np.repeat(np.arange(3), SIZES)  # rows 0-49 domain 0, 50-79 domain 1, 80-99 domain 2
rng = np.random.default_rng(0)
SHUFFLED_IDS = rng.permutation(DOMAIN_IDS)


def make(weights=(0.5, 0.3, 0.2), length=100, seed=1, ids=DOMAIN_IDS, **kw) -> DomainMixtureSampler:
    return DomainMixtureSampler(ids, weights, epoch_length=length, seed=seed, **kw)


def test_same_seed_same_stream_and_seed_matters():
    assert list(make()) == list(make())
    assert list(make()) != list(make(seed=2))


def test_indices_belong_to_drawn_domains_and_follow_the_weights():
    s = make(weights=(0.7, 0.2, 0.1), length=20000, ids=SHUFFLED_IDS)
    drawn = SHUFFLED_IDS[np.fromiter(s, dtype=np.int64)]
    fractions = np.bincount(drawn, minlength=3) / drawn.size
    # binomial standard error at n=20000 is < 0.0033: allow 4 sigma
    np.testing.assert_allclose(fractions, [0.7, 0.2, 0.1], atol=0.014)


def test_without_replacement_inside_a_domain_until_exhausted():
    s = make(weights=(1, 1, 1), length=300)
    stream = np.fromiter(s, dtype=np.int64)
    for d, size in enumerate(SIZES):
        rows = stream[DOMAIN_IDS[stream] == d]
        for start in range(0, len(rows) - size + 1, size):  # every complete pass is a permutation
            assert sorted(rows[start : start + size]) == list(np.flatnonzero(DOMAIN_IDS == d))
        # the partial last pass has no repeats either
        tail = rows[(len(rows) // size) * size :]
        assert len(set(tail)) == len(tail)
    actions = [e["action"] for e in s.events]
    assert any(a.startswith("reshuffled (pass 2)") for a in actions)


def test_drop_policy_removes_exhausted_domain():
    s = make(weights=(0.1, 0.1, 0.8), length=90, on_exhausted="drop")
    stream = np.fromiter(s, dtype=np.int64)
    drop = next(e for e in s.events if e["action"] == "dropped")
    assert drop["domain"] == 2
    after = DOMAIN_IDS[stream[drop["position"] + 1 :]]
    assert 2 not in after
    assert (DOMAIN_IDS[stream] == 2).sum() == SIZES[2]  # every row of domain 2 exactly once


def test_drop_keeps_sampling_when_every_weighted_domain_is_gone():
    s = make(weights=(0, 0, 1), length=60, on_exhausted="drop")
    stream = np.fromiter(s, dtype=np.int64)
    assert len(stream) == 60  # domain 2 (20 rows) dropped; the rest is drawn from live domains
    assert set(DOMAIN_IDS[stream[20:]]) <= {0, 1}


def test_set_weights_applies_from_the_next_position_and_replays():
    live = make(length=200)
    it = iter(live)
    first = list(itertools.islice(it, 37))
    pos = live.set_weights([0, 0, 1])
    assert pos == 37
    rest = list(it)
    assert set(DOMAIN_IDS[rest[:20]]) == {2}  # domain 2 only, until it runs out (20 rows)
    # a new sampler with the saved state replays the identical stream (the resume path)
    replay = make(length=200)
    replay.load_state_dict(live.state_dict())
    assert list(replay) == first + rest


def test_epochs_continue_one_stream():
    s = make(length=40)
    s.set_epoch(0)
    e0 = list(s)
    s.set_epoch(1)
    e1 = list(s)
    whole = list(make(length=80))
    assert e0 + e1 == whole


def test_set_weights_between_epochs_applies_at_epoch_start():
    s = make(length=40)
    list(s)
    assert s.set_weights([1, 0, 0]) == 40
    s.set_epoch(1)
    assert set(DOMAIN_IDS[list(s)[:10]]) == {0}


def test_set_weights_checks_shape():
    with pytest.raises(ValueError, match=r"expected 3 weights, got shape \(2,\)"):
        make().set_weights([0.5, 0.5])


def test_state_mismatch_is_refused():
    state = make(length=100).state_dict()
    with pytest.raises(ValueError, match="checkpoint has epoch_length=100 but this run has 50"):
        make(length=50).load_state_dict(state)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"weights": (1, 1)}, r"domain ids must lie in \[0, 2\), got \[0, 2\]"),
        ({"weights": (0, 0, 0)}, r"not all 0"),
        ({"weights": (1, float("nan"), 1)}, r"must be finite"),
        ({"length": 0}, r"epoch_length must be positive"),
        ({"on_exhausted": "panic"}, r"on_exhausted must be"),
        ({"ids": np.array([0, 0, 1, 1])}, r"Domains with no training rows: d2"),
    ],
)
def test_bad_arguments(kwargs, match):
    names = ["d0", "d1", "d2"]
    with pytest.raises(ValueError, match=match):
        make(domain_names=names, **kwargs)
