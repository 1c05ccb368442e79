"""A validator node: Proof of Intelligence over the live network, and signed weights into the ledger.

Each epoch the validator commits to a fresh secret seed in the DHT (`hivemoe/validators/commits`) before querying
anyone, draws evaluation windows with that seed from its evaluation pool (by default a part of the public held-out
splits chosen by its secret salt, or its private text: `moe.poi.eval_source` says what each leaves a memorising
miner and what stays publicly checkable), and sends them to every discovered expert through the same client and
request path the router uses (an expert cannot tell the two apart). Spliced twins of those windows go out shuffled
among them (a causality audit, `moe.poi.causality`: an expert that reads the byte it predicts is flagged
`noncausal`). With a salted pool, an expert far better on its public (val) windows than on its route windows is
flagged `memorised` (`moe.poi.memorisation`); calls the routers sampled with the experts' receipts are re-sent, and an
expert whose reply differs from what it signed for the router is flagged `twofaced` (`moe.poi.traffic_check`). From
the replies `moe.poi.epoch.score_experts` flags cheats (malformed, uninformative, copies of an
earlier-registered expert, timeouts) and computes exact Shapley contributions of the remaining experts to the
mixture's bits-per-byte saving; the validator turns them into u16 weights over each subnet's ledger uids, commits
them and reveals them an epoch later (`moe.roles.validator_weights`), reports each subnet's share on the root
subnet, and reveals the seed, so anyone who can rebuild the pool can
re-draw the windows (and twins) and check them with `check_windows`. Experts that never answer are simply absent
(zero weight); nothing an expert sends can crash the validator. Results go to
`<run_dir>/validators/<name>/result.json`.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from hivemind.p2p import PeerID
from hivemind.utils import get_dht_time

from moe.config_checks import require_at_least, require_between, require_one_of, require_positive
from moe.corpus.tokens import subnet_tokens
from moe.fileio import write_json
from moe.identity import Hotkey
from moe.ledger import RAO_PER_TAO
from moe.net.expert_record import ExpertRecord
from moe.poi.causality import AuditConfig, audited_query
from moe.poi.cheats import CheatConfig
from moe.poi.commit import draw_windows, make_commit, new_seed
from moe.poi.epoch import score_experts
from moe.poi.eval_source import (
    EVAL_SOURCES,
    PRIVATE,
    SALT_SUFFIX,
    check_private_data,
    data_commitment,
    load_or_create_salt,
    private_tokens,
    salt_commitment,
    salted_pools,
    salted_pools_origin,
)
from moe.poi.memorisation import MEMORISED, MemorisationConfig, flag_memorised, public_windows, window_bpb
from moe.poi.traffic_check import TWOFACED, Replay, TrafficCheckConfig, choose_calls, flag_two_faced
from moe.roles.layout import RESULT, RunLayout
from moe.roles.miners import any_priced
from moe.roles.node import StatusBoard
from moe.routing.traffic import fetch_request, read_traffic
from moe.routing.window_query import query_windows
from moe.training.network_metrics import validator_epoch_metrics
from moe.training.tracking import Tracker, hotkey_key

if TYPE_CHECKING:
    from moe.corpus import Subnet
    from moe.roles.run_config import RunConfig

logger = logging.getLogger(__name__)


@dataclass
class ValidatorConfig:
    """What a validator stakes, how it samples each epoch, and its cheat thresholds."""

    stake_tao: float = 1000.0
    """TAO this validator stakes on the ledger (held as integer rao); its weights count in proportion."""
    epochs: int = 2
    """Evaluation epochs before the validator exits; 0 runs until stopped."""
    windows_per_epoch: int = 32
    """Evaluation windows drawn per epoch from the evaluation pool (`eval_source`)."""
    seq_len: int = 64
    """Bytes per evaluation window."""
    batch_size: int = 8
    """Windows per expert call (an expert missing one call is absent from those windows only)."""
    epoch_interval_seconds: float = 5.0
    """Seconds between the starts of two evaluation epochs."""
    weights_deadline_fraction: float = 0.6
    """Start an epoch's work only while less than this fraction of the ledger epoch has passed, so the weights land
    in the epoch they name (querying and scoring take a few blocks)."""
    commit_ttl_seconds: float = 300.0
    """Seconds a seed commitment (and its reveal) stays in the DHT for anyone to check the windows."""
    eval_source: str = "salted"
    """Where windows come from when `data` is empty (moe.poi.eval_source): `salted`, a part of the public val and
    route splits chosen by this validator's secret salt, or `public`, the whole val split (anyone can re-draw the
    windows, and a miner can memorise them)."""
    data: str = ""
    """A local file or directory of text no miner holds; when set, every window is drawn from it (`private`)."""
    salt_fraction: float = 0.5
    """Fraction of the held-out blocks a salted validator keeps in its pool."""
    cheats: CheatConfig = field(default_factory=CheatConfig)
    """Thresholds of the cheat detectors (noise, copies, timeouts, malformed replies)."""
    memorisation: MemorisationConfig = field(default_factory=MemorisationConfig)
    """With the salted source, an expert far better on the pool's public (val) windows than on its route windows of
    the same domain is flagged `memorised` (moe.poi.memorisation)."""
    traffic: TrafficCheckConfig = field(default_factory=TrafficCheckConfig)
    """Re-sending routers' sampled calls (moe.poi.traffic_check): an expert answering them differently from what it
    signed for the router is flagged `twofaced`."""
    audit: AuditConfig = field(default_factory=AuditConfig)
    """The causality audit each epoch: spliced twins of the epoch's windows, shuffled among them, catch experts
    that read the byte they predict (135 twins by default: a 5% peeker is caught with probability 0.999)."""

    def __post_init__(self):
        require_at_least(self, 1, ["windows_per_epoch", "seq_len", "batch_size"])
        require_at_least(self, 0, ["epochs", "epoch_interval_seconds"])
        require_positive(self, ["stake_tao", "commit_ttl_seconds", "weights_deadline_fraction"])
        require_between(self, "weights_deadline_fraction", 0.0, 1.0)
        require_one_of(self, "eval_source", EVAL_SOURCES)
        require_positive(self, ["salt_fraction"])
        require_between(self, "salt_fraction", 0.0, 1.0)
        if self.eval_source == PRIVATE and not self.data:
            raise ValueError("eval_source=private needs data=PATH (a file or directory of text no miner holds)")
        if self.data:
            check_private_data(self.data, self.seq_len + 1)

    @property
    def source(self) -> str:
        """The evaluation source in effect: `private` whenever `data` is set."""
        return PRIVATE if self.data else self.eval_source


def _windows(val: dict[str, np.ndarray], seed: bytes, n: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor, list]:
    drawn = draw_windows(seed, {k: len(v) for k, v in val.items()}, n, seq_len + 1)
    rows = np.stack([val[s][o : o + seq_len + 1] for s, o in drawn]).astype(np.int64)  # (W, T+1)
    t = torch.from_numpy(rows)
    return t[:, :-1], t[:, 1:], drawn


def _eval_pool(
    cfg: RunConfig, subnets: dict[str, Subnet], key_path: Path
) -> tuple[dict[str, np.ndarray], bytes, dict[str, np.ndarray] | None]:
    """Domain → the tokens this validator draws windows from, the hash its seed commitments carry to bind them
    (empty for the public split, which anyone can rebuild), and for a salted pool each token's split (0 = val).
    The salt lives next to the hotkey and is created once, so the validator's pool, and the commitment to it, stay
    the same across restarts."""
    vc = cfg.validator
    if vc.source == PRIVATE:
        tokens = private_tokens(vc.data)
        return {PRIVATE: tokens}, data_commitment(tokens), None
    val = {s: subnet_tokens(subnets[s], "val", cfg.data) for s in cfg.subnets}
    if vc.source == "public":
        return val, b"", None
    salt = load_or_create_salt(key_path.with_suffix(SALT_SUFFIX))
    held_out = {s: [val[s], subnet_tokens(subnets[s], "route", cfg.data)] for s in cfg.subnets}
    pools = salted_pools(held_out, salt, vc.salt_fraction)
    return pools, salt_commitment(salt), salted_pools_origin(held_out, salt, vc.salt_fraction)


LATE_WEIGHTS_FRACTION = 0.9
"""Weights go out while less than this fraction of an epoch has passed (else they wait for the next epoch), so the
block that carries them is still in the epoch they name."""


def _wait_for_fresh_epoch(dht, host: str, last_epoch: int, timeout: float, deadline_fraction: float):
    """The ledger head once its epoch is new to this validator and not nearly over (so weights are not stale)."""
    from moe.net.ledger_client import read_head

    deadline = time.monotonic() + timeout
    while True:
        head = read_head(dht, host)
        if head is not None and head.epoch > last_epoch and head.epoch_progress() < deadline_fraction:
            return head
        if time.monotonic() > deadline:
            raise TimeoutError(f"no fresh ledger epoch after {last_epoch} within {timeout:.0f}s")
        time.sleep(min(0.2, head.block_interval if head else 0.2))


def run_validator(cfg: RunConfig, subnets: dict[str, Subnet], layout: RunLayout) -> int:
    from moe.net.ledger_client import publish_commit, register_on_ledger
    from moe.roles.validator_weights import WeightSetter, paid_shares, root_weights, subnet_weights
    from moe.routing.remote import Mixture

    vc, lc = cfg.validator, cfg.ledger
    key_path = Path(cfg.hotkey_path) if cfg.hotkey_path else layout.key("validator")
    name = key_path.stem
    hotkey = Hotkey.load_or_create(key_path)
    out = layout.validator(name)
    status = StatusBoard(layout.status, name)
    status.update(phase="joining", step=0, steps=vc.epochs)
    pool, pool_commitment, origins = _eval_pool(cfg, subnets, key_path)
    logger.info("evaluating on %s windows from %s", vc.source, {d: len(t) for d, t in pool.items()})
    mixture = Mixture.from_dht(cfg.initial_peers, [subnets[s].netuid for s in cfg.subnets], cfg.router, cfg.network)
    dht = mixture.dht
    stake_rao = int(round(vc.stake_tao * RAO_PER_TAO))
    epochs: list[dict] = []
    tracker = Tracker.for_node(cfg, layout.root, name)
    try:
        my_uid, head = None, None
        if lc.enabled:
            status.update(phase="registering")
            netuids = [subnets[s].netuid for s in cfg.subnets]
            mine, head = register_on_ledger(
                dht, hotkey, stake_rao, lc.register_timeout_seconds, host=lc.host, netuids=netuids
            )
            my_uid = {str(n): uid for n, (uid, _) in mine.items()}
            setter = WeightSetter(dht, hotkey, lc.host)
            if any_priced(cfg.miners, cfg.subnets, cfg.expert.price_tao_per_mbyte):  # they serve its pass free
                from moe.roles.settlement import pass_as_validator

                pass_as_validator(mixture, hotkey, lc.host, lc.register_timeout_seconds)
        status.update(phase="discovering")
        mixture.wait_for_experts(1, timeout=cfg.network.discovery_timeout_seconds)
        last_epoch = last_weights_epoch = -1
        i = 0
        while vc.epochs <= 0 or i < vc.epochs:
            t0 = time.monotonic()
            if lc.enabled:
                timeout = lc.register_timeout_seconds
                head = _wait_for_fresh_epoch(dht, lc.host, last_epoch, timeout, vc.weights_deadline_fraction)
                epoch = head.epoch
            else:
                epoch = i
            status.update(phase=f"epoch {epoch}", step=i)
            seed = new_seed()
            commit = make_commit(hotkey, seed, epoch, pool=pool_commitment)
            publish_commit(dht, hotkey, commit.to_json(), None, vc.commit_ttl_seconds)
            x, y, drawn = _windows(pool, seed, vc.windows_per_epoch, vc.seq_len)
            records = scorable(mixture.records(), hotkey.address, head if lc.enabled else None)
            hotkeys = [r.hotkey for r in records]
            donors = _windows(pool, hashlib.sha256(seed + b"audit-donors").digest(), vc.audit.count(), vc.seq_len)[0]
            rng = np.random.default_rng(int.from_bytes(hashlib.sha256(seed + b"audit").digest()[:8], "big"))
            query = functools.partial(query_windows, mixture.call, hotkeys, batch_size=vc.batch_size)
            dists, present, audit = audited_query(query, x, donors, vc.audit, rng)
            outside_flags: dict[int, list[str]] = {i: [r] for i, r in audit.flags(vc.audit).items()}
            domains = sorted(pool)
            groups = [domains.index(s) for s, _ in drawn]  # a specialist is judged on its best domain
            for e in _memorisers(vc, origins, drawn, dists, y, present, groups):
                outside_flags.setdefault(e, []).append(MEMORISED)
            replays = _replay_router_calls(mixture, records, vc.traffic, seed)
            for hk in flag_two_faced(replays, vc.traffic):
                outside_flags.setdefault(hotkeys.index(hk), []).append(TWOFACED)
            reg = _registration(records, head if lc.enabled else None)
            score = score_experts(
                hotkeys,
                reg,
                dists,
                y,
                present,
                vc.cheats,
                seed=int.from_bytes(seed[:4], "big"),
                groups=groups,
                audit_flags=outside_flags,
                markets=[r.netuid for r in records],
            )
            for impostor in mixture.impostors():
                score.flags.setdefault(impostor, []).append("identity")
            weights: dict[int, dict[int, int]] = {}  # netuid -> uid -> u16, as sent
            weight_of: dict[str, int] = {}  # the same weights by hotkey
            root: dict[int, float] = {}
            paid: dict[str, float] = {}
            if lc.enabled and head is not None:
                # weights name the epoch they land in: scoring may outlast the epoch the windows were drawn in
                head = _wait_for_fresh_epoch(dht, lc.host, last_weights_epoch, timeout, LATE_WEIGHTS_FRACTION)
                root = root_weights(head, records, score.contribution)
                per_subnet = subnet_weights(head, records, score.market_bits)
                paid = paid_shares(head, records, per_subnet, root)
                weights = setter.set(head, per_subnet, root)
                last_weights_epoch = head.epoch
                for r in records:
                    reg = head.uid_on(r.netuid, r.hotkey)
                    if reg is not None:
                        weight_of[r.hotkey] = weights.get(r.netuid, {}).get(reg[0], 0)
                setter.reveal_due(timeout + head.tempo * head.block_interval * 4)
            publish_commit(
                dht, hotkey, commit.to_json(), seed, vc.commit_ttl_seconds, flags=score.flags, bpb=score.bpb
            )
            epochs.append(
                {
                    "epoch": epoch,
                    "eval_source": vc.source,
                    "commit": commit.to_json(),
                    "seed": seed.hex(),
                    "windows": [[s, int(o)] for s, o in drawn],
                    "contribution": score.contribution,
                    "shapley_bits": score.shapley_bits,
                    "market_bits": score.market_bits,
                    "paid_share": paid,
                    "flags": score.flags,
                    "audit": {
                        hk: {"twins": int(audit.checked[i]), "violations": int(audit.violations[i])}
                        for i, hk in enumerate(hotkeys)
                    },
                    "traffic": {
                        hk: {
                            "replayed": sum(r.expert == hk and r.fresh_reply is not None for r in replays),
                            "mismatched": sum(r.expert == hk and r.matches() is False for r in replays),
                        }
                        for hk in hotkeys
                    },
                    "bpb": score.bpb,
                    "domain_bpb": {hk: {domains[d]: v for d, v in per.items()} for hk, per in score.group_bpb.items()},
                    "answered": score.answered,
                    "mixture_bpb": score.mixture_bpb,
                    "weights": weight_of,
                    "ledger_weights": {str(n): {str(u): w for u, w in row.items()} for n, row in weights.items()},
                    "root_weights": {str(n): v for n, v in root.items()},
                    "weights_epoch": last_weights_epoch if weights else None,
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
            write_json(out / RESULT, _result(hotkey, my_uid, vc, epochs))
            tracker.log(validator_epoch_metrics(score, weight_of, time.monotonic() - t0), step=epoch)
            i += 1
            time.sleep(max(0.0, vc.epoch_interval_seconds - (time.monotonic() - t0)))
        status.update(phase="done", step=i)
        final = _result(hotkey, my_uid, vc, epochs)  # contributions averaged over epochs, as result.json has them
        mean = final["contribution"]
        tracker.summary({f"validator/mean_contribution/{hotkey_key(hk)}": c for hk, c in mean.items()})
        tracker.summary({"validator/epochs": len(epochs), "validator/flagged": len(final["flags"])})
    finally:
        tracker.finish()
        mixture.shutdown()
    return 0


def _memorisers(vc: ValidatorConfig, origins, drawn, dists, y, present, groups) -> list[int]:
    """Indices of the experts whose edge on the salted pool's public windows gives away a lookup of public text
    (none without a salted pool: `origins` is None)."""
    if origins is None:
        return []
    mc = vc.memorisation
    by_window = window_bpb(dists, y, present, mc.min_logp)
    public = public_windows(origins, drawn, vc.seq_len + 1)
    return flag_memorised(by_window, public, mc.min_windows, mc.max_gap_bits, groups).nonzero().flatten().tolist()


def _replay_router_calls(mixture, records: list[ExpertRecord], cfg: TrafficCheckConfig, seed: bytes) -> list[Replay]:
    """Re-send, from this validator's peer, up to `cfg.per_expert` calls the routers published to each expert, and
    keep each reply (None when the expert did not answer: the call is skipped, not held against it).

    Longest calls first: a short probe is what routers send, so an expert that tells callers apart by what they send
    takes this validator for a router from its first probe on, and answers the later calls as it answered the
    router's; sent last, the probes cost the check nothing."""
    if cfg.per_expert == 0:
        return []
    rng = random.Random(hashlib.sha256(seed + b"traffic").digest())
    peers = {r.hotkey: PeerID.from_base58(r.peer_id) for r in records}
    chosen = choose_calls(read_traffic(mixture.dht), list(peers), cfg, get_dht_time(), rng)
    replays = []
    for hk, calls in chosen.items():
        records = [r for r in (fetch_request(mixture.dht, c) for c in calls) if r is not None]
        for record in sorted(records, key=lambda r: -len(r.request)):  # a router's short probes last (see below)
            try:
                reply, _ = mixture.client.replay(peers[hk], record.request)
            except Exception as e:  # any failure of the expert or the network: no verdict from this call
                logger.debug("re-sent call to %s failed: %r", hk[:16], e)
                reply = None
            replays.append(Replay(hk, record, reply))
    return replays


def scorable(records: list[ExpertRecord], me: str, head) -> list[ExpertRecord]:
    """The experts a validator scores: identity-proven records (Mixture.records) other than its own and, when the
    network has a ledger, only hotkeys registered there; an unregistered record is no miner."""
    out = [r for r in records if r.hotkey != me]
    if head is None:
        return out
    unregistered = [r.hotkey[:16] for r in out if head.uid_on(r.netuid, r.hotkey) is None]
    if unregistered:
        logger.info("not scoring experts the ledger does not know on their subnet: %s", unregistered)
    return [r for r in out if head.uid_on(r.netuid, r.hotkey) is not None]


def _registration(records: list[ExpertRecord], head) -> list[tuple[float, int]]:
    """(registration block, uid) per expert, from the ledger when the network has one (never from the record's own
    claim, which anyone can backdate); without a ledger, the record's claim is all there is."""
    if head is not None:
        regs = [head.uid_on(r.netuid, r.hotkey) for r in records]
        return [(float(block), uid) for uid, block in regs]
    return [(float(r.registered_at) if r.registered_at else float("inf"), r.uid) for r in records]


def _result(hotkey: Hotkey, uid: dict[str, int] | None, vc: ValidatorConfig, epochs: list[dict]) -> dict:
    """The validator's result: every epoch, and the contribution and the share its weights asked to pay averaged over
    epochs (what the summary reports)."""
    keys = sorted({hk for e in epochs for hk in e["contribution"]})
    mean = {hk: float(np.mean([e["contribution"].get(hk, 0.0) for e in epochs])) for hk in keys}
    paying = [e["paid_share"] for e in epochs if e.get("paid_share")]
    paid = {hk: float(np.mean([p.get(hk, 0.0) for p in paying])) for hk in sorted({h for p in paying for h in p})}
    flagged = sorted({hk for e in epochs for hk in e["flags"]})  # impostors are flagged without being scored
    flags = {hk: sorted({f for e in epochs for f in e["flags"].get(hk, [])}) for hk in flagged}
    return {
        "hotkey": hotkey.address,
        "uid": uid,
        "stake_tao": vc.stake_tao,
        "eval_source": vc.source,
        "epochs": epochs,
        "contribution": mean,
        "paid_share": paid,
        "flags": {hk: f for hk, f in flags.items() if f},
        "weights": epochs[-1]["weights"] if epochs else {},
        "bpb": epochs[-1]["bpb"] if epochs else {},
        "domain_bpb": epochs[-1].get("domain_bpb", {}) if epochs else {},
    }
