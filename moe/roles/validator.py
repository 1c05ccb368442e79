"""A validator node: Proof of Intelligence over the live network, and signed weights into the ledger.

Each epoch the validator commits to a fresh secret seed in the DHT (`hivemoe/validators/commits`) before querying
anyone, draws evaluation windows from the subnets' validation splits with that seed, and sends them to every
discovered expert through the same client and request path the router uses (an expert cannot tell the two apart).
From the replies it computes each expert's log-probs of the true next bytes, flags cheats (malformed, uninformative,
copies of an earlier-registered expert, timeouts), computes exact Shapley contributions of the remaining experts to
the mixture's bits-per-byte saving, turns them into u16 weights over the experts' ledger uids, publishes a signed
`WeightSubmission` (`hivemoe/validators/weights`) and reveals the seed, so anyone can re-draw the windows and check
them with `check_windows`. Experts that never answer are simply absent (zero weight); nothing an expert sends can
crash the validator. Results go to `<run_dir>/validators/<name>/result.json`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from moe.corpus import Subnet
from moe.identity import Hotkey
from moe.ledger import RAO_PER_TAO, WeightSubmission
from moe.net.expert_record import ExpertRecord
from moe.poi.cheats import CheatConfig, detect_cheats
from moe.poi.commit import draw_windows, make_commit, new_seed
from moe.poi.scoring import shapley_weights
from moe.poi.shapley import ShapleyConfig, shapley
from moe.poi.value import UNIFORM_LOGP, MixtureGame, expert_bpb
from moe.roles.layout import StatusBoard, subnet_tokens, write_json
from moe.roles.run_config import RunConfig, ValidatorConfig

logger = logging.getLogger(__name__)


def validator_dir(run_dir: Path, name: str) -> Path:
    return run_dir / "validators" / name


@dataclass
class EpochScore:
    """One epoch's verdict on the experts, keyed by hotkey."""

    contribution: dict[str, float]
    """Share of the positive Shapley value (flagged experts 0); sums to 1 unless nobody contributed."""
    shapley_bits: dict[str, float]
    """Raw Shapley value φ in bits per byte saved over uniform bytes (flagged experts 0)."""
    flags: dict[str, list[str]]
    """Detector names per flagged expert."""
    bpb: dict[str, float | None]
    """Each expert's own bits per byte on the windows it answered (None if it answered none)."""
    mixture_bpb: float
    """Bits per byte of the mixture of the unflagged experts."""
    answered: dict[str, float] = field(default_factory=dict)
    """Fraction of windows each expert answered validly."""


def score_experts(
    hotkeys: list[str],
    registration: list[tuple[float, int]],
    dists: torch.Tensor,
    y: torch.Tensor,
    present: torch.Tensor,
    vc: ValidatorConfig,
    seed: int = 0,
    groups: list[int] | None = None,
) -> EpochScore:
    """Cheats and Shapley contributions from replies: dists (E, W, T, 256) log-probs, y (W, T), present (E, W).

    `registration` orders experts for copy detection (the earliest of a group of copies keeps the credit): one
    (registration block, uid) per expert. Flagged experts are left out of the game, so a copy does not dilute the
    value of the expert it copies.
    """
    E, W, T, V = dists.shape
    byte = y < V  # (W, T) special-token targets (EOS) are not bytes: p = 1 for everyone and the reference alike
    yc = y.long().clamp(max=V - 1)
    logp = dists.gather(-1, yc[None, :, :, None].expand(E, W, T, 1)).squeeze(-1)  # (E, W, T)
    logp = torch.where(byte, logp, torch.zeros(()))
    ref = torch.where(byte, UNIFORM_LOGP, 0.0).double()  # (W, T)
    order = sorted(range(E), key=lambda i: registration[i])
    rank = [order.index(i) for i in range(E)]
    cheat_cfg = CheatConfig(
        copy_max_js=vc.copy_max_js, max_bpb=vc.max_bpb, max_missing_fraction=vc.max_missing_fraction
    )
    report, lp, pr = detect_cheats(list(range(E)), logp, rank, present, dists, config=cheat_cfg, groups=groups)
    players = [i for i in range(E) if i not in report.flagged]
    phi = torch.zeros(E, dtype=torch.float64)
    se = torch.zeros(E, dtype=torch.float64)
    mix_bpb = 8.0
    if players:
        game = MixtureGame(lp[players], pr[players], reference_logp=ref)
        est = shapley(game, ShapleyConfig(seed=seed))
        phi[players], se[players] = est.values, est.stderr
        mix_bpb = 8.0 - game.value((1 << len(players)) - 1)
    w = shapley_weights(list(range(E)), phi, se, flagged=report.flagged)
    bpb = expert_bpb(lp, pr)
    return EpochScore(
        contribution={hotkeys[i]: w[i] for i in range(E)},
        shapley_bits={hotkeys[i]: float(phi[i]) for i in range(E)},
        flags={hotkeys[u]: r for u, r in report.reasons.items()},
        bpb={hotkeys[i]: (None if not torch.isfinite(bpb[i]) else float(bpb[i])) for i in range(E)},
        mixture_bpb=float(mix_bpb),
        answered={hotkeys[i]: float(pr[i].double().mean()) for i in range(E)},
    )


def query_windows(call, hotkeys: list[str], x: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Send (W, T) windows to every expert in batches via `call({hotkey: x}) -> {hotkey: logp}`.

    Returns (E, W, T, 256) float32 log-probs (0 where absent) and (E, W) presence; a reply of the wrong shape or
    dtype counts as absent (logged), as does an expert that did not answer a batch in time.
    """
    W, T = x.shape
    E = len(hotkeys)
    dists = torch.zeros(E, W, T, 256)
    present = torch.zeros(E, W, dtype=torch.bool)
    for w0 in range(0, W, batch_size):
        xb = x[w0 : w0 + batch_size]
        replies = call({hk: xb for hk in hotkeys})
        for i, hk in enumerate(hotkeys):
            r = replies.get(hk)
            if r is None:
                continue
            if not isinstance(r, torch.Tensor) or tuple(r.shape) != (xb.shape[0], T, 256) or not r.is_floating_point():
                logger.warning("expert %s sent a reply of shape %s; windows counted missing", hk[:16], tuple(r.shape))
                continue
            dists[i, w0 : w0 + xb.shape[0]] = r.float()
            present[i, w0 : w0 + xb.shape[0]] = True
    return dists, present


def _windows(val: dict[str, np.ndarray], seed: bytes, n: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor, list]:
    drawn = draw_windows(seed, {k: len(v) for k, v in val.items()}, n, seq_len + 1)
    rows = np.stack([val[s][o : o + seq_len + 1] for s, o in drawn]).astype(np.int64)  # (W, T+1)
    t = torch.from_numpy(rows)
    return t[:, :-1], t[:, 1:], drawn


def _wait_for_fresh_epoch(dht, host: str | None, last_epoch: int, timeout: float):
    """The ledger head once its epoch is new to this validator and not nearly over (so weights are not stale)."""
    from moe.net.ledger_client import read_head

    deadline = time.monotonic() + timeout
    while True:
        head = read_head(dht, host)
        if head is not None and head.epoch > last_epoch and head.epoch_progress() < 0.6:
            return head
        if time.monotonic() > deadline:
            raise TimeoutError(f"no fresh ledger epoch after {last_epoch} within {timeout:.0f}s")
        time.sleep(min(0.2, head.block_interval if head else 0.2))


def run_validator(cfg: RunConfig, subnets: dict[str, Subnet], run_dir: Path) -> int:
    from moe.net.dht_records import publish_signed
    from moe.net.ledger_client import COMMIT_CONTEXT, COMMITS_KEY, publish_weights, register_on_ledger
    from moe.routing.remote import Mixture

    vc, lc = cfg.validator, cfg.ledger
    key_path = Path(cfg.hotkey_path) if cfg.hotkey_path else run_dir / "keys" / "validator.key"
    name = key_path.stem
    hotkey = Hotkey.load_or_create(key_path)
    out = validator_dir(run_dir, name)
    status = StatusBoard(run_dir, name)
    status.update(phase="joining", step=0, steps=vc.epochs)
    val = {s: subnet_tokens(subnets[s], "val", cfg.data) for s in cfg.subnets}
    mixture = Mixture.from_dht(cfg.initial_peers, [subnets[s].netuid for s in cfg.subnets], cfg.router, cfg.network)
    dht = mixture.dht
    stake_rao = int(round(vc.stake * RAO_PER_TAO))
    epochs: list[dict] = []
    try:
        my_uid, head = None, None
        if lc.enabled:
            status.update(phase="registering")
            my_uid, _, head = register_on_ledger(dht, hotkey, stake_rao, vc.register_timeout, lc.host or None)
        status.update(phase="discovering")
        mixture.wait_for_experts(1, timeout=cfg.network.join_timeout * 4)
        last_epoch = -1
        i = 0
        while vc.epochs <= 0 or i < vc.epochs:
            t0 = time.monotonic()
            if lc.enabled:
                head = _wait_for_fresh_epoch(dht, lc.host or None, last_epoch, timeout=vc.register_timeout)
                epoch = head.epoch
            else:
                epoch = i
            status.update(phase=f"epoch {epoch}", step=i)
            seed = new_seed()
            commit = make_commit(hotkey, seed, epoch)
            publish_signed(dht, COMMITS_KEY, hotkey, {"commit": commit.to_json(), "seed": None}, COMMIT_CONTEXT, 300)
            x, y, drawn = _windows(val, seed, vc.windows_per_epoch, vc.seq_len)
            records: list[ExpertRecord] = [r for r in mixture.records() if r.hotkey != hotkey.address]
            hotkeys = [r.hotkey for r in records]
            dists, present = query_windows(mixture.call, hotkeys, x, vc.batch_size)
            reg = _registration(records, head)
            domains = sorted(val)
            groups = [domains.index(s) for s, _ in drawn]  # a specialist is judged on its best domain
            score = score_experts(
                hotkeys, reg, dists, y, present, vc, seed=int.from_bytes(seed[:4], "big"), groups=groups
            )
            weights: dict[int, int] = {}
            if lc.enabled and head is not None:
                uids = [head.uids[hk][0] for hk in hotkeys if hk in head.uids]
                ws = [score.contribution[hk] for hk in hotkeys if hk in head.uids]
                missing = [hk[:16] for hk in hotkeys if hk not in head.uids]
                if missing:
                    logger.warning("experts not registered on the ledger get no weight: %s", missing)
                sub = WeightSubmission.create(hotkey, head.netuid, epoch, uids, ws)
                publish_weights(dht, hotkey, [sub])
                weights = dict(zip(sub.uids, sub.weights, strict=True))
            publish_signed(
                dht, COMMITS_KEY, hotkey, {"commit": commit.to_json(), "seed": seed.hex()}, COMMIT_CONTEXT, 300
            )
            epochs.append(
                {
                    "epoch": epoch,
                    "commit": commit.to_json(),
                    "seed": seed.hex(),
                    "windows": [[s, int(o)] for s, o in drawn],
                    "contribution": score.contribution,
                    "shapley_bits": score.shapley_bits,
                    "flags": score.flags,
                    "bpb": score.bpb,
                    "answered": score.answered,
                    "mixture_bpb": score.mixture_bpb,
                    "weights": {str(u): w for u, w in weights.items()},
                    "uids": {hk: r.uid for hk, r in zip(hotkeys, records, strict=True)},
                }
            )
            last_epoch = epoch
            logger.info(
                "epoch %d: contributions %s flags %s",
                epoch,
                {hk[:8]: round(c, 3) for hk, c in score.contribution.items()},
                {hk[:8]: r for hk, r in score.flags.items()},
            )
            write_json(out / "result.json", _result(hotkey, my_uid, vc, epochs))
            i += 1
            time.sleep(max(0.0, vc.epoch_interval - (time.monotonic() - t0)))
        status.update(phase="done", step=i)
    finally:
        mixture.shutdown()
    return 0


def _registration(records: list[ExpertRecord], head) -> list[tuple[float, int]]:
    """(registration block, uid) per expert: the ledger's when it knows the hotkey, else the record's own claim."""
    out = []
    for r in records:
        if head is not None and r.hotkey in head.uids:
            uid, block = head.uids[r.hotkey]
            out.append((float(block), uid))
        else:
            out.append((float(r.registered_at) if r.registered_at else float("inf"), r.uid))
    return out


def _result(hotkey: Hotkey, uid: int | None, vc: ValidatorConfig, epochs: list[dict]) -> dict:
    """The validator's result: every epoch, and the contribution averaged over epochs (what the summary reports)."""
    keys = sorted({hk for e in epochs for hk in e["contribution"]})
    mean = {hk: float(np.mean([e["contribution"].get(hk, 0.0) for e in epochs])) for hk in keys}
    flags = {hk: sorted({f for e in epochs for f in e["flags"].get(hk, [])}) for hk in keys}
    return {
        "hotkey": hotkey.address,
        "uid": uid,
        "stake_tao": vc.stake,
        "epochs": epochs,
        "contribution": mean,
        "flags": {hk: f for hk, f in flags.items() if f},
        "weights": epochs[-1]["weights"] if epochs else {},
        "bpb": epochs[-1]["bpb"] if epochs else {},
    }
