"""A top-2 mixture of 4 remote FFN experts on loopback: hivemind's RemoteMixtureOfExperts vs ours vs in-process.

Run:  python3 benchmarks/remote_moe.py [--steps 40] [--skip-hivemind]

Experts are hivemind's own "ffn" block (Linear(64, 256) -> GELU -> Linear(256, 64) + LayerNorm, d_model 64), each
served by its own process. One step = batch (16, 64, 64) -> gate (Linear on the sequence mean) -> per-sequence top-2
-> weighted sum of the chosen experts' (n, 64, 64) outputs -> backward into the gate (experts frozen for us;
hivemind's step also runs its experts' backward, as RemoteMixtureOfExperts always does). Measured in one run:
(i) hivemind's RemoteMixtureOfExperts + 4 hivemind Servers, (ii) our SyncExpertClient + 4 ExpertServers (act32 over
the direct path), (iii) the same experts in-process, its steps taken alternately with (ii)'s so that drifting load
on a shared machine weighs on both alike. Then p50/p99 step latency of (ii) with one expert SIGKILLed mid-run, and
with one expert answering 10x slower. The last line is one JSON object; `ratio_vs_hivemind` is
hivemind_ms / ours_ms.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import signal
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch import nn  # noqa: E402

B, T, D, N_EXPERTS, K = 16, 64, 64, 4, 2


def make_expert(seed: int) -> nn.Module:
    from hivemind.moe.server.layers import name_to_block

    torch.manual_seed(seed)
    return name_to_block["ffn"](D)


# expert processes


def _serve_ours(seed: int, slow_factor: float, conn) -> None:
    torch.set_num_threads(1)
    from moe.net.server import ExpertServer, ServerConfig

    class Server(ExpertServer):
        def _process(self, raw: bytes) -> bytes:
            t0 = time.perf_counter()
            out = super()._process(raw)
            if slow_factor > 1:
                time.sleep((slow_factor - 1) * (time.perf_counter() - t0))
            return out

    srv = Server(make_expert(seed), ServerConfig(kind="hidden", d_in=D, max_tokens=B * T)).start()
    conn.send((srv.peer_id.to_bytes(), srv.maddrs))
    conn.recv()  # wait for the parent to say stop
    srv.shutdown()


def _serve_hivemind(seed: int, initial_peers: list[str], conn) -> None:
    torch.set_num_threads(1)
    from hivemind.moe.server import Server
    from hivemind.moe.server.layers import name_to_block, register_expert_class

    # hivemind's "ffn" declares (batch, d) samples; the same block declared over (batch, T, d) sequences
    register_expert_class("ffn_seq", lambda batch_size, hid_dim: torch.empty((batch_size, T, hid_dim)))(
        type("FeedforwardSeq", (name_to_block["ffn"],), {})
    )
    torch.manual_seed(seed)
    server = Server.create(
        expert_uids=[f"expert.{seed}"],
        expert_cls="ffn_seq",
        hidden_dim=D,
        initial_peers=initial_peers,
        host_maddrs=["/ip4/127.0.0.1/tcp/0"],
        start=True,
        update_period=5,
    )
    conn.send(True)
    conn.recv()
    server.shutdown()


def _spawn(target, *args):
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    p = ctx.Process(target=target, args=(*args, child), daemon=False)  # hivemind servers spawn children
    p.start()
    return p, parent


def _stop(procs):
    for _, conn in procs:
        try:
            conn.send("stop")
        except (BrokenPipeError, OSError):
            pass
    for p, _ in procs:
        p.join(10)
        if p.is_alive():
            p.kill()
            p.join()


# the MoE step


class Gate(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(D, N_EXPERTS)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.proj(x.mean(1))  # (B, E)
        top, idx = scores.topk(K, dim=-1)  # (B, K)
        return top, idx


def moe_step(gate: Gate, x: torch.Tensor, call) -> float:
    """One forward + backward into the gate; `call(groups)` maps {expert: sample ids} to {expert: (n, T, D)}."""
    t0 = time.perf_counter()
    top, idx = gate.route(x)
    groups = {e: (idx == e).any(-1).nonzero().squeeze(-1) for e in range(N_EXPERTS)}
    groups = {e: s for e, s in groups.items() if len(s)}
    outs = call({e: x[s] for e, s in groups.items()})
    answered = torch.zeros(B, K, dtype=torch.bool)
    y_full = torch.zeros(B, K, T, D)
    for e, s in groups.items():
        if e in outs:
            slot = (idx[s] == e).float().argmax(-1)  # (n,) which of the sample's k picks is e
            y_full[s, slot] = outs[e]
            answered[s, slot] = True
    w = torch.softmax(top.masked_fill(~answered, float("-inf")), dim=-1).nan_to_num(0.0)  # (B, K) missing averaged out
    y = (w[:, :, None, None] * y_full).sum(1)  # (B, T, D)
    loss = y.pow(2).mean()
    gate.zero_grad()
    loss.backward()
    return (time.perf_counter() - t0) * 1e3


def run_steps(fn, steps: int, warmup: int = 5, on_step=None) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for i in range(steps):
        if on_step is not None:
            on_step(i)
        times.append(fn())
    return times


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def inprocess_step(x: torch.Tensor):
    """One step of the same experts called in this process (the baseline)."""
    experts = [make_expert(i).eval().requires_grad_(False) for i in range(N_EXPERTS)]
    gate = Gate()

    def call(inputs):
        with torch.no_grad():
            return {e: experts[e](xi) for e, xi in inputs.items()}

    return lambda: moe_step(gate, x, call)


def bench_ours(
    x: torch.Tensor, steps: int, slow: bool = False, kill: bool = False, baseline=None
) -> list[float] | tuple[list[float], list[float]]:
    """Step times over the remote experts; with `baseline` (a step function), its times too, taken alternately with
    ours, step by step, so that load drifting on a shared machine weighs on both alike."""
    from hivemind.p2p import PeerID

    from moe.net.client import ClientConfig, SyncExpertClient

    procs = [_spawn(_serve_ours, i, 10.0 if (slow and i == 0) else 1.0) for i in range(N_EXPERTS)]
    try:
        infos = [conn.recv() for _, conn in procs]
        peers = [PeerID(pid) for pid, _ in infos]
        cfg = ClientConfig(
            wire_format="act32",
            forward_timeout_seconds=1.0,
            timeout_after_k_min_seconds=0.005,
            backoff_base_seconds=0.5,
        )
        with SyncExpertClient(cfg, initial_peers=[m for _, ms in infos for m in ms]) as client:
            gate = Gate()

            def call(inputs):
                by_peer = {peers[e]: xi for e, xi in inputs.items()}
                got = client.call_many(list(by_peer), by_peer, k_min=max(1, len(by_peer) - 1))
                return {e: got[peers[e]] for e in inputs if peers[e] in got}

            def on_step(i):
                if kill and i == steps // 2:
                    os.kill(procs[0][0].pid, signal.SIGKILL)

            ours = lambda: moe_step(gate, x, call)  # noqa: E731
            if baseline is None:
                return run_steps(ours, steps, on_step=on_step)
            times = run_steps(lambda: (baseline(), ours()), steps, on_step=on_step)
            return [b for b, _ in times], [o for _, o in times]
    finally:
        _stop(procs)


def bench_hivemind(x: torch.Tensor, steps: int) -> float:
    import hivemind
    from hivemind.moe import RemoteMixtureOfExperts

    dht = hivemind.DHT(start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"])
    peers = [str(m) for m in dht.get_visible_maddrs()]
    procs = [_spawn(_serve_hivemind, i, peers) for i in range(N_EXPERTS)]
    try:
        for _, conn in procs:
            conn.recv()
        time.sleep(2.0)  # let the experts' declarations reach the DHT
        moe = RemoteMixtureOfExperts(
            in_features=D, grid_size=(N_EXPERTS,), dht=dht, uid_prefix="expert.", k_best=K, forward_timeout=5.0
        )

        def step():
            t0 = time.perf_counter()
            y = moe(x)
            loss = y.pow(2).mean()
            moe.zero_grad()
            loss.backward()
            return (time.perf_counter() - t0) * 1e3

        return statistics.median(run_steps(step, steps, warmup=3))
    finally:
        _stop(procs)
        dht.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--skip-hivemind", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    x = torch.randn(B, T, D, generator=torch.Generator().manual_seed(0))

    inprocess, ours = bench_ours(x, args.steps, baseline=inprocess_step(x))
    inprocess_ms, ours_ms = statistics.median(inprocess), statistics.median(ours)
    print(f"in-process: {inprocess_ms:.2f} ms/step", flush=True)
    print(f"ours: {ours_ms:.2f} ms/step (p99 {pct(ours, 0.99):.2f})", flush=True)
    killed = bench_ours(x, args.steps, kill=True)
    print(f"ours, one expert killed mid-run: p50 {pct(killed, 0.5):.2f} p99 {pct(killed, 0.99):.2f} ms", flush=True)
    slow = bench_ours(x, args.steps, slow=True)
    print(f"ours, one expert 10x slower: p50 {pct(slow, 0.5):.2f} p99 {pct(slow, 0.99):.2f} ms", flush=True)
    hivemind_ms = float("nan") if args.skip_hivemind else bench_hivemind(x, args.steps)
    print(f"hivemind RemoteMixtureOfExperts: {hivemind_ms:.2f} ms/step", flush=True)
    result = {
        "hivemind_ms": round(hivemind_ms, 2),
        "ours_ms": round(ours_ms, 2),
        "inprocess_ms": round(inprocess_ms, 2),
        "ours_minus_inprocess_ms": round(ours_ms - inprocess_ms, 2),
        "ours_within_inprocess_plus_2ms": ours_ms <= inprocess_ms + 2,
        "p50_killed_ms": round(pct(killed, 0.5), 2),
        "p99_killed_ms": round(pct(killed, 0.99), 2),
        "p50_slow_ms": round(pct(slow, 0.5), 2),
        "p99_slow_ms": round(pct(slow, 0.99), 2),
        "ratio_vs_hivemind": round(hivemind_ms / ours_ms, 2),
        "ours_within_2x_inprocess_plus_5ms": ours_ms <= 2 * inprocess_ms + 5,
        "steps": args.steps,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
