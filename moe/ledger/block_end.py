"""What ends each block: the mint, the epochs due, the emission split and the registration adjustments.

`end_block` runs after a block's signed records (moe.ledger.state.apply_signed) and returns the records it derives
(emission, one epoch per subnet every `tempo` blocks, the split under a non-static `emission_split`). On replay it is
given the block's recorded derived records, checks each against its own (integers exactly, floats within
FLOAT_TOLERANCE, payouts recomputed from the recorded floats) and applies the recorded ones. Epochs run Yuma
(moe.ledger.yuma) on each subnet's latest weights and stakes and pay miners, validators and the subnet's owner.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from moe.ledger.emission import block_emission, split_between_subnets, split_by_weights, split_emission
from moe.ledger.fields import describe, exactly_equal
from moe.ledger.genesis import SubnetParams
from moe.ledger.records import Record, RecordError
from moe.ledger.registration import adjust_toward_target
from moe.ledger.root import check_split, split_shares
from moe.ledger.state import LedgerState, drop_expired_commits, writable_registry
from moe.ledger.yuma import yuma_epoch

FLOAT_TOLERANCE = 1e-9
YUMA1 = {
    "yuma_version": 1,
    "liquid_alpha": False,
    "alpha_low": 0.7,
    "alpha_high": 0.9,
    "alpha_sigmoid_steepness": 1000.0,
}
"""Yuma settings under which `yuma_epoch` is called exactly as before these settings existed."""


def _close(a: list, b: list) -> bool:
    if not isinstance(a, list) or len(a) != len(b):
        return False
    return all(isinstance(x, float) and math.isclose(x, y, abs_tol=FLOAT_TOLERANCE) for x, y in zip(a, b, strict=True))


def _epoch(st: LedgerState, netuid: int, height: int) -> tuple[Record, dict[str, np.ndarray], tuple[dict, dict]]:
    """Run Yuma on the subnet's latest signed weights and stakes with the subnet's settings; the epoch record, the
    new bonds per validator, and the (per uid, per validator) trust."""
    cfg, sub, p = st.config, st.subnets[netuid], st.params(netuid)
    reg = sub.registry
    uids = sorted(reg.slots)
    staked = [(reg.slots[u].hotkey, u) for u in uids if st.stakes.get(reg.slots[u].hotkey, 0) > 0]
    staked.sort(key=lambda hu: (-st.stakes[hu[0]], hu[1]))
    vals = sorted(staked[: cfg.max_validators], key=lambda hu: hu[1])  # validator rows in uid order
    V, M = len(vals), p.max_uids
    W = np.zeros((V, M))  # (V, M)
    B = np.zeros((V, M))  # (V, M)
    S = np.array([float(st.stakes[h]) for h, _ in vals])  # (V,)
    registered_at = {u: reg.slots[u].registered_at for u in uids}
    recent = np.zeros(M, dtype=bool)  # (M,) uids registered since the last epoch lose their old bonds
    recent[[u for u in uids if registered_at[u] > sub.last_epoch_height]] = True
    for i, (hk, vuid) in enumerate(vals):
        if hk in sub.weights:
            set_at, row = sub.weights[hk]
            # weights set before a uid's (re)registration or on oneself do not count
            kept = [(u, w) for u, w in row.items() if registered_at.get(u, set_at) < set_at and u != vuid]
            if kept:
                cols, ws = zip(*kept, strict=True)
                W[i, list(cols)] = ws
        if hk in sub.bonds:
            B[i] = np.where(recent, 0.0, sub.bonds[hk])
    res = yuma_epoch(W, S, B, **_yuma_kwargs(p))
    rec: Record = {
        "kind": "epoch",
        "netuid": netuid,
        "epoch": st.epoch_of(height),
        "uids": uids,
        "hotkeys": [reg.slots[u].hotkey for u in uids],
        "consensus": res.consensus[uids].tolist(),
        "incentive": res.incentive[uids].tolist(),
        "validators": [h for h, _ in vals],
        "validator_stakes": [st.stakes[h] for h, _ in vals],
        "dividends": res.dividends.tolist(),
        "emission": sub.pending,
    }
    rec.update(_payouts(sub.pending, cfg.miner_share, rec["incentive"], rec["dividends"], rec["validator_stakes"]))
    if p.owner is not None:
        rec.update(owner=p.owner, owner_payout=sub.owner_pending)
    trust = _trust(W, S, res.consensus)
    trusts = ({u: float(trust[u]) for u in uids}, {h: float(res.validator_trust[i]) for i, (h, _) in enumerate(vals)})
    return rec, {h: res.bonds[i].copy() for i, (h, _) in enumerate(vals)}, trusts


def _yuma_kwargs(p: SubnetParams) -> dict[str, Any]:
    """The subnet's Yuma settings as `yuma_epoch` keywords; the version-3 and liquid-alpha ones only when set, so a
    subnet on the defaults calls Yuma exactly as ledgers written before per-subnet settings did."""
    kw: dict[str, Any] = {"kappa": p.kappa, "bond_alpha": p.bond_alpha, "bond_penalty": p.bond_penalty}
    extra = {name: getattr(p, name) for name in YUMA1}
    if extra != YUMA1:
        kw.update(extra)
    return kw


def _trust(W: np.ndarray, S: np.ndarray, consensus: np.ndarray) -> np.ndarray:
    """(M,) per miner, the share of its stake-weighted normalized weight left after clipping at consensus
    (subtensor's Trust); 0 for a miner nobody weighs. Shown by `hivemoe ledger show`, never recorded."""
    s = S / S.sum() if S.sum() > 0 else np.zeros_like(S)  # (V,)
    t = W.sum(axis=1, keepdims=True)  # (V, 1)
    Wn = np.divide(W, t, out=np.zeros_like(W), where=t > 0)  # (V, M)
    rank = s @ Wn  # (M,)
    clipped = s @ np.minimum(Wn, consensus[None, :])  # (M,)
    return np.divide(clipped, rank, out=np.zeros_like(rank), where=rank > 0)


def _payouts(pending: int, miner_share: float, incentive: list, dividends: list, stakes: list) -> dict[str, Any]:
    """Integer rao per miner and validator; any rao nobody can earn (no validators at all) carry to next epoch."""
    zeros_m, zeros_v = [0] * len(incentive), [0] * len(dividends)
    if sum(incentive) > 0 and sum(dividends) > 0:
        m, v = split_emission(pending, miner_share)
        return {"miner_payouts": split_by_weights(m, incentive), "validator_payouts": split_by_weights(v, dividends)}
    if sum(incentive) > 0:
        return {"miner_payouts": split_by_weights(pending, incentive), "validator_payouts": zeros_v}
    if sum(stakes) > 0:  # no weights yet: validators earn by stake, as subtensor does
        return {"miner_payouts": zeros_m, "validator_payouts": split_by_weights(pending, stakes)}
    return {"miner_payouts": zeros_m, "validator_payouts": zeros_v}


def _apply_epoch(
    st: LedgerState, rec: Record, bonds: dict[str, np.ndarray], height: int, trusts: tuple[dict, dict] = ({}, {})
) -> None:
    sub = st.subnets[rec["netuid"]]
    if "owner" in rec and rec["owner_payout"]:
        st.credit(rec["owner"], rec["owner_payout"])
        st.assign(sub, "owner_pending", sub.owner_pending - rec["owner_payout"])
    paid = 0
    for hk, amt in [
        *zip(rec["hotkeys"], rec["miner_payouts"], strict=True),
        *zip(rec["validators"], rec["validator_payouts"], strict=True),
    ]:
        if amt:
            st.credit(hk, amt)
            paid += amt
    st.assign(sub, "pending", sub.pending - paid)
    st.assign(sub, "bonds", bonds)
    scores = {u: i for u, i in zip(rec["uids"], rec["incentive"], strict=True)}
    div = dict(zip(rec["validators"], rec["dividends"], strict=True))
    for u, hk in zip(rec["uids"], rec["hotkeys"], strict=True):
        scores[u] += div.get(hk, 0.0)
    writable_registry(st, sub).set_scores(scores)
    st.assign(sub, "last_epoch_height", height)
    st.assign(sub, "latest_epoch", rec)
    st.assign(sub, "trust", trusts[0])
    st.assign(sub, "validator_trust", trusts[1])


def end_block(st: LedgerState, height: int, recorded: list[Record] | None = None) -> list[Record]:
    """Mint this block's emission, run epochs and adjustments due at `height`; returns the derived records.

    With `recorded` (replay), each derived record must match the recomputed one (floats within 1e-9, integers
    exactly, payouts recomputed from the recorded floats) and the recorded one is applied; else RecordError.
    """
    cfg = st.config
    out: list[Record] = []
    expected: list[tuple[Record, Any]] = []
    minted = block_emission(st.total_issuance)
    per = _subnet_split(minted, st.split or tuple(cfg.subnet_shares.items()))
    expected.append((None, "emission"))
    epoch_end = (height + 1) % cfg.tempo == 0
    if epoch_end:  # epochs run after the mint, so they pay out this block's emission too
        expected.extend((None, n) for n in sorted(st.subnets))
        split = _split(st, height) if cfg.emission_split != "static" else None
        if split is not None:  # epochs change neither stakes nor root weights: computed up front all the same
            expected.append((split, "split"))
    if recorded is not None and len(recorded) != len(expected):
        raise RecordError(f"expected {len(expected)} derived records, found {len(recorded)}")
    for i, (rec, netuid) in enumerate(expected):
        if netuid == "split":
            rec = rec if recorded is None else check_split(recorded[i], rec)
            st.assign(st, "latest_split", rec)
            st.assign(st, "split", tuple(zip(rec["netuids"], rec["shares"], strict=True)))
            out.append(rec)
            continue
        if netuid == "emission":
            rec = _emission_record(st, minted, per, None if recorded is None else recorded[i])
            st.assign(st, "total_issuance", st.total_issuance + minted)
            owners = cfg.subnet_owners
            for n, a in per.items():
                sub = st.subnets[n]
                cut = _owner_part(a, cfg.owner_cut) if n in owners else 0
                st.assign(sub, "pending", sub.pending + a - cut)
                if cut:
                    st.assign(sub, "owner_pending", sub.owner_pending + cut)
            out.append(rec)
            continue
        rec, bonds, trusts = _epoch(st, netuid, height)
        if recorded is not None:
            rec = _check_epoch(recorded[i], rec, cfg.miner_share)
        _apply_epoch(st, rec, bonds, height, trusts)
        out.append(rec)
    if epoch_end:
        drop_expired_commits(st, st.epoch_of(height))
    if (height + 1) % cfg.adjustment_interval == 0:
        for n, sub in st.subnets.items():
            args = (sub.registrations, st.params(n).target_registrations)
            difficulty = adjust_toward_target(sub.difficulty, *args, cfg.min_difficulty, cfg.max_difficulty)
            st.assign(sub, "difficulty", difficulty)
            st.assign(sub, "burn", adjust_toward_target(sub.burn, *args, cfg.min_burn, cfg.max_burn))
            st.assign(sub, "registrations", 0)
    return out


def _emission_record(st: LedgerState, minted: int, per: dict[int, int], recorded: Record | None) -> Record:
    """The block's emission record: `recorded` (replay) if it is exactly the one this mint gives, else RecordError.

    Replays share one parsed record between blocks of the same text (`read_blocks`), so a recorded record that is the
    very object last found equal to the same mint (`LedgerState.emission_checked`) is not compared again.
    """
    checked = st.emission_checked
    if recorded is not None and checked is not None and recorded is checked[0] and checked[1:] == (per, minted):
        return recorded
    rec = {"kind": "emission", "minted": minted, "subnets": {str(n): a for n, a in per.items()}}
    if recorded is None:
        return rec
    if not exactly_equal(recorded, rec):
        raise RecordError(f"emission record differs from replay, which gives {rec}")
    st.emission_checked = (recorded, per, minted)
    return recorded


@functools.lru_cache(maxsize=256)
def _owner_part(amount: int, owner_cut: float) -> int:
    """Rao of `amount` that goes to a subnet's owner: floor(amount * owner_cut), the cut read as its decimal."""
    return split_emission(amount, owner_cut)[0]


def _split(st: LedgerState, height: int) -> Record | None:
    """The split record due at the epoch end `height`: from the root weights of the top `max_validators` staked
    hotkeys with non-zero root weights; None (the previous split stays) when there are none."""
    cfg = st.config
    staked = [(h, st.stakes.get(h, 0)) for h, (_, row) in st.root_weights.items() if any(row.values())]
    staked = sorted((hs for hs in staked if hs[1] > 0), key=lambda hs: (-hs[1], hs[0]))[: cfg.max_validators]
    if not staked:
        return None
    vals = sorted(staked)
    netuids = sorted(st.subnets)
    rows = [st.root_weights[h][1] for h, _ in vals]
    shares = split_shares(cfg.emission_split, [s for _, s in vals], rows, netuids, cfg.kappa)
    if not any(shares):
        return None
    return {
        "kind": "split",
        "epoch": st.epoch_of(height),
        "mode": cfg.emission_split,
        "netuids": netuids,
        "shares": shares,
        "validators": [h for h, _ in vals],
        "validator_stakes": [s for _, s in vals],
    }


@functools.lru_cache(maxsize=64)
def _subnet_split(minted: int, shares: tuple[tuple[int, float], ...]) -> dict[int, int]:
    """Cached `split_between_subnets`: the shares change at most once an epoch and `minted` only at halvings.

    Callers must not mutate the returned dict (it is shared between blocks).
    """
    return split_between_subnets(minted, dict(shares))


def _check_epoch(got: Record, want: Record, miner_share: float) -> Record:
    """The recorded epoch `got` if it matches the recomputed `want`; raises RecordError naming the first mismatch."""
    if type(got) is not dict or got.keys() != want.keys():
        raise RecordError(f"epoch record has the wrong fields ({describe(got)})")
    exact = ("kind", "netuid", "epoch", "uids", "hotkeys", "validators", "validator_stakes", "emission")
    for key in exact + (("owner", "owner_payout") if "owner" in want else ()):
        if not exactly_equal(got[key], want[key]):
            raise RecordError(f"epoch record field {key!r} differs from replay")
    for key in ("consensus", "incentive", "dividends"):
        if not _close(got[key], want[key]):
            raise RecordError(f"epoch record field {key!r} differs from replay")
    if got["incentive"] == want["incentive"] and got["dividends"] == want["dividends"]:
        pay = {k: want[k] for k in ("miner_payouts", "validator_payouts")}  # same figures, same payouts
    else:
        pay = _payouts(got["emission"], miner_share, got["incentive"], got["dividends"], got["validator_stakes"])
    for key, value in pay.items():
        if not exactly_equal(got[key], value):
            raise RecordError(f"epoch record field {key!r} differs from the payouts its own figures imply")
    return got
