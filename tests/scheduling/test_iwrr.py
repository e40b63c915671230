import pytest

from helix.scheduling.iwrr import IWRR


def test_proportions_follow_capacities():
    iwrr = IWRR([3.0, 1.0])
    picks = [iwrr.choose(1.0) for _ in range(10_000)]
    assert abs(picks.count(0) / picks.count(1) - 3.0) < 0.06


def test_weights_are_token_volumes():
    iwrr = IWRR([1.0, 1.0])
    volume = [0.0, 0.0]
    for i in range(2_000):
        w = 1000.0 if i % 2 == 0 else 10.0
        volume[iwrr.choose(w)] += w
    assert abs(volume[0] - volume[1]) / sum(volume) < 0.01


def test_mask_ties_update_restore():
    iwrr = IWRR([1.0, 1.0, 2.0])
    assert iwrr.choose(1.0, [True, True, False]) == 0  # tie → lowest index
    assert iwrr.choose(1.0, [True, True, False]) == 1
    before = list(iwrr.loads)
    k = iwrr.choose(4.0)
    iwrr.restore(4.0, k)
    assert iwrr.loads == before
    iwrr.update(2.0, 2)
    assert iwrr.loads[2] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        iwrr.choose(1.0, [False, False, False])
    with pytest.raises(ValueError):
        IWRR([0.0, 1.0]).choose(1.0, [True, False])
