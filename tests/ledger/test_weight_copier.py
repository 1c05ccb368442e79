"""Tests for moe/poi/weight_copier.py: on a real ledger, commit-reveal makes weight copying stop paying."""

from __future__ import annotations

import pytest

from moe.identity import Hotkey
from moe.ledger.chain import Ledger
from moe.ledger.genesis import GenesisConfig, LedgerConfig
from moe.poi.weight_copier import copy_visible_weights

TAO = 10**9
WARMUP_EPOCHS = 5
"""Epochs of unchanging miner quality first, so every validator's bonds settle before the truth starts moving."""
EPOCHS = 12
MEASURED = range(8, EPOCHS + 1)
"""Epochs whose dividends are compared: well after the truth started moving (and after any start-up effect)."""


def truth(epoch: int) -> list[float]:
    """The three miners' true quality: fixed during the warm-up, then the best miner changes every epoch."""
    if epoch <= WARMUP_EPOCHS:
        return [3.0, 2.0, 1.0]
    return [4.0 if (epoch + i) % 3 == 0 else 1.0 for i in range(3)]


def step(led: Ledger) -> None:
    led.produce_block(led.last_timestamp + 1.0)


def simulate(path, commit_reveal: bool) -> dict[str, dict[int, int]]:
    """Dividends (rao) per epoch of the honest validator with stake 500 ("honest") and the copier ("copier").

    Each epoch the two honest validators (stakes 1000 and 500) publish that epoch's truth in its first block (a
    commit plus the reveal of last epoch's commit, when commit-reveal is on); in the next block the copier copies
    whatever weights are visible then and publishes them the same way.
    """
    keys = [Hotkey.from_seed(bytes([i + 60]) * 32) for i in range(6)]
    big, honest, copier, *miners = keys
    cfg = LedgerConfig(
        tempo=4,
        max_uids=8,
        immunity_period=1000,
        initial_difficulty=1,
        subnet_shares={1: 1.0},
        subnet_params={1: {"commit_reveal": commit_reveal, "yuma_version": 3, "bond_alpha": 0.9}},
    )
    stakes = {big.address: 1000 * TAO, honest.address: 500 * TAO, copier.address: 500 * TAO}
    genesis = GenesisConfig(ledger=cfg, balances={k.address: TAO for k in keys}, stakes=stakes, timestamp=0.0)
    led = Ledger.open(path, genesis)
    for k in keys:
        assert led.register(k, 1)
    while (led.height + 1) % cfg.tempo:
        step(led)
    uids = [led.uid(1, m.address) for m in miners]
    secrets: dict[tuple[str, int], tuple[list[int], list[float], bytes]] = {}
    out: dict[str, dict[int, int]] = {"honest": {}, "copier": {}}

    def publish(v: Hotkey, us: list[int], ws: list[float]) -> None:
        ep = led.current_epoch
        if not commit_reveal:
            assert led.set_weights(v, 1, us, ws)
            return
        if (v.address, ep - 1) in secrets:
            assert led.reveal_weights(v, 1, ep - 1, *secrets[(v.address, ep - 1)])
        salt = led.commit_weights(v, 1, us, ws)
        assert salt is not None
        secrets[(v.address, ep)] = (us, ws, salt)

    for epoch in range(1, EPOCHS + 1):
        assert led.current_epoch == epoch
        for v in (big, honest):
            publish(v, uids, truth(epoch))
        step(led)
        copied = copy_visible_weights(led.state, 1, copier.address)
        if copied[0]:
            publish(copier, *copied)
        elif (copier.address, epoch - 1) in secrets:  # nothing new to copy: still reveal the last commit
            assert led.reveal_weights(copier, 1, epoch - 1, *secrets[(copier.address, epoch - 1)])
        while (led.height + 1) % cfg.tempo:
            step(led)
        ep = led.state.subnets[1].latest_epoch
        assert ep["epoch"] == epoch
        paid = dict(zip(ep["validators"], ep["validator_payouts"], strict=True))
        out["honest"][epoch] = paid[honest.address]
        out["copier"][epoch] = paid[copier.address]
    led.close()
    return out


def ratio(paid: dict[str, dict[int, int]], epochs) -> float:
    """The copier's dividends over the equally staked honest validator's, summed over `epochs`."""
    return sum(paid["copier"][e] for e in epochs) / sum(paid["honest"][e] for e in epochs)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[bool, dict]:
    tmp = tmp_path_factory.mktemp("copier")
    return {cr: simulate(tmp / f"cr{int(cr)}.db", cr) for cr in (False, True)}


def test_copying_pays_without_commit_reveal(runs):
    """With weights public at once, the copier earns what the honest validator of equal stake earns."""
    assert ratio(runs[False], MEASURED) == pytest.approx(1.0, abs=0.02)


def test_commit_reveal_makes_copying_lose(runs):
    """With commit-reveal the copier only sees last epoch's truth: once the truth moves every epoch it earns well
    under the honest validator of equal stake per unit stake, though it had caught up while the truth stood still."""
    paid = runs[True]
    assert ratio(paid, [WARMUP_EPOCHS]) > 0.95  # bonds settled: the start-up lag is gone before the truth moves
    assert ratio(paid, MEASURED) < 0.7


def test_the_measure_separates_the_two_cases(runs):
    """The commit-reveal assertion fails on the run without commit-reveal, so it measures the mechanism."""
    assert not ratio(runs[False], MEASURED) < 0.7
    assert ratio(runs[False], MEASURED) - ratio(runs[True], MEASURED) > 0.3


def test_copy_visible_weights_is_the_stake_weighted_mean_of_applied_rows(tmp_path):
    """The copy is the stake-weighted mean of other validators' normalized applied rows, never the copier's own
    uid, and sees nothing that is only committed."""
    keys = [Hotkey.from_seed(bytes([i + 90]) * 32) for i in range(5)]
    cfg = LedgerConfig(
        tempo=4, initial_difficulty=1, subnet_shares={1: 1.0, 2: 1.0}, subnet_params={2: {"commit_reveal": True}}
    )
    stakes = {keys[0].address: 300 * TAO, keys[1].address: 100 * TAO, keys[2].address: 100 * TAO}
    led = Ledger.open(tmp_path / "c.db", GenesisConfig(ledger=cfg, balances={}, stakes=stakes))
    for n in (1, 2):
        for k in keys:
            assert led.register(k, n)
    step(led)
    assert led.set_weights(keys[0], 1, [3, 4], [1.0, 1.0])
    assert led.set_weights(keys[1], 1, [4, 2], [3.0, 1.0])
    assert led.commit_weights(keys[0], 2, [3], [1.0]) is not None
    step(led)
    uids, weights = copy_visible_weights(led.state, 1, keys[2].address)  # uid 2: its own uid left out
    assert uids == [3, 4] and weights == pytest.approx([150 / 375, 225 / 375])
    uids, weights = copy_visible_weights(led.state, 1, keys[4].address)
    assert uids == [2, 3] and weights == pytest.approx([25 / 175, 150 / 175])
    assert copy_visible_weights(led.state, 2, keys[2].address) == ([], [])
    assert copy_visible_weights(led.state, 9, keys[2].address) == ([], [])
    led.close()
