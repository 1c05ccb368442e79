"""Tests for moe/roles/validation_summary.py: validators' figures, a real ledger's rewards, and the checks on them."""

from __future__ import annotations

import json
import math
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from moe.fileio import write_json
from moe.identity import Hotkey
from moe.ledger import RAO_PER_TAO, GenesisConfig, Ledger, LedgerConfig, verify_ledger
from moe.roles.layout import RESULT, RunLayout
from moe.roles.run_config import RunConfig
from moe.roles.summary import build_summary
from moe.roles.validation_summary import spearman, validation_checks, validation_summary

VALIDATORS = [Hotkey.from_seed(bytes([i + 1]) * 32) for i in range(2)]
MINERS = [Hotkey.from_seed(bytes([i + 10]) * 32) for i in range(4)]
"""Three honest experts (english, code, math) and a noise adversary, in that order."""
STAKES_TAO = (1000.0, 300.0)


def write_ledger(path: Path, weights: list[float]) -> None:
    """A real ledger: both validators staked, the four miners registered, two epochs paid by `weights`."""
    rules = LedgerConfig(tempo=4, max_uids=8, immunity_period=3, initial_difficulty=4, subnet_shares={1: 1.0})
    genesis = GenesisConfig(
        ledger=rules, balances={v.address: int(1000 * RAO_PER_TAO) for v in VALIDATORS}, timestamp=1000.0
    )
    with Ledger.open(path, genesis) as led:
        for k in [*VALIDATORS, *MINERS]:
            assert led.register(k, 1)
        led.produce_block(1001.0)
        for v, stake in zip(VALIDATORS, STAKES_TAO, strict=True):
            assert led.add_stake(v, int(stake * RAO_PER_TAO))
        led.produce_block(1002.0)
        uids = [led.uid(1, m.address) for m in MINERS]
        for v in VALIDATORS:
            assert led.set_weights(v, 1, uids, weights)
        t = 1003.0
        while led.height < 8:
            led.produce_block(t)
            t += 1


def expert(subnet: str, hk: Hotkey, uid: int, adversary: str | None = None) -> dict:
    bpb = {} if adversary else {subnet: 2.0, "all": 2.5}
    out = {"uid": uid, "hotkey": hk.address, "subnet": subnet, "peer_id": "p", "params": 10, "eval_bpb": bpb}
    return {**out, "train_steps": 1, "train_flops": 1.0, **({"adversary": adversary} if adversary else {})}


def write_run(
    tmp_path: Path,
    contributions: list[dict[str, float]],
    ledger_weights: list[float] | None,
    paid: list[dict[str, float]] | None = None,
):
    """A run directory with three honest experts and a noise adversary, one validator result per contribution map
    (stakes 1000 and 300 TAO) with the paid shares `paid` if given, and a ledger paid by `ledger_weights` (none if
    None)."""
    cfg = RunConfig(subnets=["english", "code", "math"], run_id="r")
    layout = RunLayout.create(tmp_path, "r")
    for i, subnet in enumerate(cfg.subnets):
        write_json(layout.expert(subnet) / RESULT, expert(subnet, MINERS[i], i + 2))
    write_json(layout.adversary("noise") / RESULT, expert("code", MINERS[3], 5, adversary="noise"))
    write_json(layout.router / RESULT, {"eval_bpb": {"english": 1.9, "code": 1.9, "math": 1.9, "all": 1.9}})
    for i, contribution in enumerate(contributions):
        result = {
            "hotkey": VALIDATORS[i].address,
            "stake_tao": STAKES_TAO[i],
            "contribution": contribution,
            "weights": {"2": 100 * (i + 1), "5": 0},
            "flags": {MINERS[3].address: ["noise"]},
            **({"paid_share": paid[i]} if paid else {}),
        }
        write_json(layout.validator(f"validator-{i}") / RESULT, result)
    if ledger_weights is not None:
        write_ledger(layout.ledger, ledger_weights)
    return cfg, layout


HONEST = [m.address for m in MINERS[:3]]


def test_contribution_is_stake_weighted(tmp_path):
    """Each expert's contribution is the stake-weighted mean of the validators' shares (a missing share counts 0);
    weights and validators are listed per validator hotkey."""
    a, b, c, adv = (m.address for m in MINERS)
    cfg, layout = write_run(tmp_path, [{a: 0.6, b: 0.4}, {a: 0.2, b: 0.3, c: 0.5, adv: 0.0}], ledger_weights=None)
    out = validation_summary(layout, [])
    assert out["contribution"] == pytest.approx(
        {a: (1000 * 0.6 + 300 * 0.2) / 1300, b: (1000 * 0.4 + 300 * 0.3) / 1300, c: 300 * 0.5 / 1300, adv: 0.0}
    )
    assert out["weights"] == {VALIDATORS[0].address: {"2": 100, "5": 0}, VALIDATORS[1].address: {"2": 200, "5": 0}}
    assert [v["stake_tao"] for v in out["validators"].values()] == [1000.0, 300.0]
    assert out["validators"][VALIDATORS[0].address]["flags"] == {adv: ["noise"]}
    assert "rewards" not in out and "ledger" not in out  # no ledger file, no ledger figures


def test_rewards_rank_against_the_paid_shares_when_validators_report_them(tmp_path):
    """Validators that report the share their weights ask for (subnet share times share within the subnet) are
    judged on it: rewards following those shares pass though the network-wide Shapley shares rank the other way;
    without the paid shares the same ledger fails the check."""
    backwards = dict(zip(HONEST, [0.6, 0.3, 0.1], strict=True))
    asked = dict(zip(HONEST, [0.1, 0.3, 0.6], strict=True))
    cfg, layout = write_run(tmp_path / "a", [backwards], ledger_weights=[1.0, 2.0, 3.0, 0.0], paid=[asked])
    s = build_summary(cfg, layout, 0.0)
    assert s["paid_share"] == pytest.approx({**asked})
    assert s["checks"]["rewards_spearman_honest"] == 1.0
    cfg, layout = write_run(tmp_path / "b", [backwards], ledger_weights=[1.0, 2.0, 3.0, 0.0])
    assert build_summary(cfg, layout, 0.0)["checks"]["rewards_rank_like_contributions"] is False


def test_each_epochs_paid_share_counts_for_the_epochs_its_weights_stood(tmp_path):
    """The ledger pays by a validator's latest weights until it sets new ones, and after its last epoch until the
    run ends: weights named in epoch 1 stood for 1 epoch and those of epoch 2 for the 7 the ledger paid after, so the
    summary's paid share weighs them 1 to 7; without a ledger both epochs count alike."""
    first = dict(zip(HONEST, [0.6, 0.3, 0.1], strict=True))
    last = dict(zip(HONEST, [0.1, 0.3, 0.6], strict=True))
    mean = {hk: (first[hk] + last[hk]) / 2 for hk in HONEST}
    for name, ledger in (("with", [1.0, 2.0, 3.0, 0.0]), ("without", None)):
        cfg, layout = write_run(tmp_path / name, [mean], ledger_weights=ledger, paid=[mean])
        result_path = layout.validator("validator-0") / RESULT
        result = json.loads(result_path.read_text())
        result["epochs"] = [
            {"epoch": n, "paid_share": p, "contribution": mean, "flags": {}} for n, p in ((1, first), (2, last))
        ]
        write_json(result_path, result)
        if ledger is not None:
            with Ledger.open(layout.ledger) as led:
                while led.height < 39:  # tempo 4: epochs 0 to 9 paid
                    led.produce_block(led.last_timestamp + 1.0)
        paid = validation_summary(layout, [])["paid_share"]
        want = {hk: (first[hk] + 7 * last[hk]) / 8 for hk in HONEST} if ledger else mean
        assert paid == pytest.approx(want)


def test_no_validators_adds_nothing(tmp_path):
    """A run without validator results has no validation part and no validation checks in its summary."""
    cfg, layout = write_run(tmp_path, [], ledger_weights=None)
    assert validation_summary(layout, []) == {}
    s = build_summary(cfg, layout, 0.0)
    assert "contribution" not in s and "rewards_rank_like_contributions" not in s["checks"]
    assert validation_checks(s) == {}


def test_rewards_and_ledger_figures_come_from_the_ledger(tmp_path):
    """Rewards are each expert's ledger balance in TAO, and the ledger part matches the file: height, head, issuance,
    the miners' emission summed over epochs, and a passing verification."""
    cfg, layout = write_run(tmp_path, [{h: 1 / 3 for h in HONEST}], ledger_weights=[1.0, 2.0, 3.0, 0.0])
    s = build_summary(cfg, layout, 0.0)
    with Ledger.open(layout.ledger) as led:
        assert s["rewards"] == {m.address: led.balance(m.address) / RAO_PER_TAO for m in MINERS}
        assert s["ledger"]["height"] == led.height == 8 and s["ledger"]["head_hash"] == led.head_hash
        assert s["ledger"]["total_issuance"] == led.total_issuance
        assert s["ledger"]["total_issuance_tao"] == led.total_issuance / RAO_PER_TAO
    assert s["ledger"]["miner_emission_tao"] == pytest.approx(sum(s["rewards"].values()))
    assert s["ledger"]["miner_emission_tao"] > 0 and s["rewards"][MINERS[3].address] == 0.0
    assert s["ledger"]["verified"] == str(verify_ledger(layout.ledger, workers=0))
    assert json.loads(json.dumps(s)) == s


def test_checks_of_an_honest_ledger(tmp_path):
    """Rewards ranked like contributions, an adversary paid nothing and a ledger that verifies pass every check."""
    contribution = dict(zip(HONEST, [0.1, 0.3, 0.6], strict=True))
    cfg, layout = write_run(tmp_path, [contribution], ledger_weights=[1.0, 2.0, 3.0, 0.0])
    c = build_summary(cfg, layout, 0.0)["checks"]
    assert c["rewards_spearman_honest"] == 1.0 and c["rewards_rank_like_contributions"] is True
    assert c["adversaries_emission_share"] == 0.0 and c["adversaries_below_1pct"] is True
    assert c["ledger_verifies"] is True
    assert c["every_adversary_flagged"] is True and c["no_honest_expert_flagged"] is True
    assert c["mixture_beats_every_expert"] is True  # the summary's own checks are kept alongside


def test_flags_of_every_validator_reach_each_expert_and_the_checks(tmp_path):
    """Each expert carries every reason any validator flagged it for; a flagged honest expert fails
    no_honest_expert_flagged, an adversary nobody flagged fails every_adversary_flagged."""
    cfg, layout = write_run(tmp_path, [{h: 1 / 3 for h in HONEST}] * 2, ledger_weights=[1.0, 2.0, 3.0, 0.0])
    s = build_summary(cfg, layout, 0.0)
    assert [e["flags"] for e in s["experts"]] == [[], [], [], ["noise"]]
    path = layout.validator("validator-1") / RESULT
    result = json.loads(path.read_text())
    result["flags"] = {HONEST[1]: ["timeout"], MINERS[3].address: ["copy"]}
    write_json(path, result)
    s = build_summary(cfg, layout, 0.0)
    assert [e["flags"] for e in s["experts"]] == [[], ["timeout"], [], ["copy", "noise"]]
    assert s["checks"]["no_honest_expert_flagged"] is False and s["checks"]["every_adversary_flagged"] is True
    for i in range(2):
        path = layout.validator(f"validator-{i}") / RESULT
        write_json(path, {**json.loads(path.read_text()), "flags": {}})
    assert build_summary(cfg, layout, 0.0)["checks"]["every_adversary_flagged"] is False


def test_checks_flag_a_paid_adversary_and_misranked_rewards(tmp_path):
    """An adversary paid like an honest expert and rewards in the reverse order of contributions fail both checks,
    with the figures behind them."""
    contribution = dict(zip(HONEST, [0.6, 0.3, 0.1], strict=True))
    cfg, layout = write_run(tmp_path, [contribution], ledger_weights=[1.0, 2.0, 3.0, 2.0])
    s = build_summary(cfg, layout, 0.0)
    c = s["checks"]
    assert c["rewards_spearman_honest"] == -1.0 and c["rewards_rank_like_contributions"] is False
    share = s["rewards"][MINERS[3].address] / s["ledger"]["miner_emission_tao"]
    assert c["adversaries_emission_share"] == round(share, 6) and share == pytest.approx(0.25, abs=1e-3)
    assert c["adversaries_below_1pct"] is False


def test_tampered_accounts_fail_verification(tmp_path):
    """A ledger whose accounts table was edited after the fact replays but does not verify: ledger_verifies False."""
    cfg, layout = write_run(tmp_path, [{h: 1 / 3 for h in HONEST}], ledger_weights=[1.0, 2.0, 3.0, 0.0])
    with closing(sqlite3.connect(layout.ledger)) as conn, conn:
        n = conn.execute("UPDATE accounts SET balance = balance + 1 WHERE address = ?", (MINERS[2].address,)).rowcount
    assert n == 1
    c = build_summary(cfg, layout, 0.0)["checks"]
    assert c["ledger_verifies"] is False


def test_tampered_block_is_reported_not_raised(tmp_path):
    """A ledger with an edited block (a miner's payout raised) is reported as not verifying, with the rest of the
    summary intact, rather than making build_summary raise at the end of the run."""
    cfg, layout = write_run(tmp_path, [{h: 1 / 3 for h in HONEST}], ledger_weights=[1.0, 2.0, 3.0, 0.0])
    with closing(sqlite3.connect(layout.ledger)) as conn, conn:
        (raw,) = conn.execute("SELECT records FROM blocks WHERE height = 7").fetchone()
        records = json.loads(raw)
        epoch = next(r for r in records if r.get("kind") == "epoch")
        epoch["miner_payouts"][-1] += 1000
        conn.execute("UPDATE blocks SET records = ? WHERE height = 7", (json.dumps(records),))
    s = build_summary(cfg, layout, 0.0)
    assert s["checks"]["ledger_verifies"] is False and s["mixture"]["eval_bpb"]["all"] == 1.9


def reference_spearman(a: list[float], b: list[float]) -> float:
    """Plain-Python Spearman: Pearson correlation of average ranks."""

    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(v):
            j = i
            while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2 + 1
            i = j + 1
        return r

    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    return cov / math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))


@pytest.mark.parametrize(
    "a,b",
    [([1, 2, 3, 4], [10, 20, 30, 40]), ([1, 2, 2, 3], [1, 2, 3, 4]), ([3, 1, 2, 2, 5], [0.5, 0.1, 0.1, 0.9, 0.7])],
)
def test_spearman_matches_average_rank_reference(a, b):
    """spearman equals the Pearson correlation of average ranks (ties share their mean rank)."""
    assert spearman(a, b) == pytest.approx(reference_spearman(a, b), abs=1e-12)


@pytest.mark.parametrize("a,b", [([1.0], [2.0]), ([], []), ([2.0, 2.0, 2.0], [1.0, 2.0, 3.0]), ([1, 2], [5, 5])])
def test_spearman_undefined_is_nan(a, b):
    """With fewer than two points, or either side constant, the rank correlation is undefined: NaN."""
    assert math.isnan(spearman(a, b))


def checks_for(rewards: list[float], contributions: list[float], adversary_tao: float, miner_tao: float) -> dict:
    """validation_checks on a summary of len(rewards) honest experts and one adversary, figures given."""
    honest = [f"h{i}" for i in range(len(rewards))]
    s = {
        "experts": [{"hotkey": h} for h in honest] + [{"hotkey": "adv", "adversary": "noise"}],
        "rewards": {**dict(zip(honest, rewards, strict=True)), "adv": adversary_tao},
        "contribution": dict(zip(honest, contributions, strict=True)),
        "ledger": {"miner_emission_tao": miner_tao, "verified": "ok: 3 blocks, head x"},
    }
    return validation_checks(s)


def test_adversary_share_threshold_is_strict():
    """The adversaries' share must be strictly under 1% of the miners' emission: 0.5% passes, 1% does not."""
    assert checks_for([1, 2, 3], [1, 2, 3], adversary_tao=0.5, miner_tao=100.0)["adversaries_below_1pct"] is True
    c = checks_for([1, 2, 3], [1, 2, 3], adversary_tao=1.0, miner_tao=100.0)
    assert c["adversaries_emission_share"] == 0.01 and c["adversaries_below_1pct"] is False


def test_no_miner_emission_is_not_a_pass():
    """Before any epoch paid the miners, the adversaries' share is undefined: reported None and not passed."""
    c = checks_for([0, 0, 0], [1, 2, 3], adversary_tao=0.0, miner_tao=0.0)
    assert c["adversaries_emission_share"] is None and c["adversaries_below_1pct"] is False
    assert c["rewards_spearman_honest"] is None and c["rewards_rank_like_contributions"] is False


def test_rank_check_below_threshold_fails():
    """A rank correlation under 0.9 (four experts, one adjacent swap: 0.8) fails the rank check."""
    c = checks_for([1, 2, 3, 4], [2, 1, 3, 4], adversary_tao=0.0, miner_tao=10.0)
    assert c["rewards_spearman_honest"] == 0.8 and c["rewards_rank_like_contributions"] is False


def test_rank_check_at_threshold_passes():
    """A rank correlation of exactly 0.9 (five experts, one adjacent swap) passes the documented `>= 0.9` check,
    consistent with the 0.9 reported beside it."""
    c = checks_for([1, 2, 3, 4, 5], [2, 1, 3, 4, 5], adversary_tao=0.0, miner_tao=10.0)
    assert c["rewards_spearman_honest"] == 0.9
    assert c["rewards_rank_like_contributions"] is True


def test_a_redundant_honest_miner_is_a_market_verdict_not_a_cheat(tmp_path):
    """An honest miner flagged only `redundant` (it added nothing beyond an earlier competitor) keeps
    no_honest_expert_flagged true and is listed under honest_redundant; any other reason still fails the check."""
    cfg, layout = write_run(tmp_path, [{h: 1 / 3 for h in HONEST}], ledger_weights=[1.0, 2.0, 3.0, 0.0])
    path = layout.validator("validator-0") / RESULT
    write_json(
        path, {**json.loads(path.read_text()), "flags": {HONEST[2]: ["redundant"], MINERS[3].address: ["noise"]}}
    )
    c = build_summary(cfg, layout, 0.0)["checks"]
    assert c["no_honest_expert_flagged"] is True and c["honest_redundant"] == [HONEST[2]]
    write_json(path, {**json.loads(path.read_text()), "flags": {HONEST[2]: ["redundant", "timeout"]}})
    c = build_summary(cfg, layout, 0.0)["checks"]
    assert c["no_honest_expert_flagged"] is False and c["honest_redundant"] == []
