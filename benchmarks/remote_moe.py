"""A top-2 mixture of 4 remote FFN experts on loopback: hivemind's RemoteMixtureOfExperts vs ours vs in-process.

Run:  python3 benchmarks/remote_moe.py [--steps 40] [--skip-hivemind] [--skip-faults]

Experts are hivemind's own "ffn" block (Linear(64, 256) -> GELU -> Linear(256, 64) + LayerNorm, d_model 64), each
served by its own process. One step = batch (16, 64, 64) -> gate (Linear on the sequence mean) -> per-sequence top-2
-> weighted sum of the chosen experts' (n, 64, 64) outputs -> backward into the gate (experts frozen for us;
hivemind's step also runs its experts' backward, as RemoteMixtureOfExperts always does). Measured in one run:
(i) hivemind's RemoteMixtureOfExperts + 4 hivemind Servers, (ii) our SyncExpertClient + 4 ExpertServers (act32 over
the direct path), (iii) the same experts in-process, one step of (iii) after each step of (ii) so that both see the
same load on a shared machine. Then p50/p99 step latency of (ii) with one expert SIGKILLed mid-run, and with one
expert answering 10x slower (--skip-faults skips both).

Where a step of (ii) goes (`breakdown_ms`, medians over steps; one monotonic clock for all processes of the host):
caller_local is the gate, mixing and backward around the call; then, for the expert whose forward ended last,
to_expert (the caller encoding and sending its requests, the expert process waking and reading its request),
expert_forward (decode, validate, compute, encode in the expert process) and from_expert (its reply back: sending,
reading, authenticating, decoding, and the caller's threads waking). inprocess_experts_ms is the in-process step's
time in its four experts.

The last line is one JSON object; `ratio_vs_hivemind` is hivemind_ms / ours_ms, `ratio_vs_inprocess` is ours_ms /
inprocess_ms and `overhead_vs_inprocess_ms` their difference.
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
WARMUP_SECONDS = 2.0
"""Untimed steps of a remote mixture first run for this long: a freshly started p2pd daemon spends ~0.3 s of CPU on
its start-up in its first second, which would otherwise compete with the first timed steps for the host's cores."""


def make_expert(seed: int) -> nn.Module:
    from hivemind.moe.server.layers import name_to_block

    torch.manual_seed(seed)
    return name_to_block["ffn"](D)


# expert processes


def _serve_ours(seed: int, slow_factor: float, conn) -> None:
    torch.set_num_threads(1)
    from moe.net.server import ExpertServer, ServerConfig

    spans: list[tuple[int, int]] = []  # (start, end) ns of each forward, for the breakdown

    class Server(ExpertServer):
        def _process(self, raw: bytes) -> bytes:
            t0 = time.perf_counter_ns()
            out = super()._process(raw)
            if slow_factor > 1:
                time.sleep((slow_factor - 1) * (time.perf_counter_ns() - t0) / 1e9)
            spans.append((t0, time.perf_counter_ns()))
            return out

    srv = Server(make_expert(seed), ServerConfig(kind="hidden", d_in=D, max_tokens=B * T)).start()
    conn.send((srv.peer_id.to_bytes(), srv.maddrs))
    while conn.recv() == "spans":  # until the parent says stop
        conn.send(spans)
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


def timed(call, spans: list[tuple[int, int]]):
    """`call` recording the (start, end) ns of each of its calls into `spans`."""

    def wrapped(inputs):
        t0 = time.perf_counter_ns()
        out = call(inputs)
        spans.append((t0, time.perf_counter_ns()))
        return out

    return wrapped


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


def run_steps(fn, steps: int, warmup: int = 5, on_step=None, warmup_seconds: float = 0.0) -> list[float]:
    """`steps` timed calls of `fn` after `warmup` untimed ones, and after at least `warmup_seconds`."""
    until = time.monotonic() + warmup_seconds
    for _ in range(warmup):
        fn()
    while time.monotonic() < until:
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


class InProcess:
    """Steps of the same mixture with its experts in this process; `calls` holds the (start, end) ns of their
    forwards in each step."""

    def __init__(self, x: torch.Tensor):
        self.x, self.gate, self.calls = x, Gate(), []
        experts = [make_expert(i).eval().requires_grad_(False) for i in range(N_EXPERTS)]

        def call(inputs):
            with torch.no_grad():
                return {e: experts[e](xi) for e, xi in inputs.items()}

        self.call = timed(call, self.calls)

    def step(self) -> float:
        return moe_step(self.gate, self.x, self.call)


def bench_ours(
    x: torch.Tensor, steps: int, slow: bool = False, kill: bool = False, interleave: InProcess | None = None
) -> tuple[list[float], dict[str, float], list[float]]:
    """(step times in ms, their breakdown, the `interleave` step times in ms run after each of ours)."""
    from hivemind.p2p import PeerID

    from moe.net.client import ClientConfig, SyncExpertClient

    procs = [_spawn(_serve_ours, i, 10.0 if (slow and i == 0) else 1.0) for i in range(N_EXPERTS)]
    warmup, calls, baseline = 5, [], []  # (start, end) ns of each step's call; in-process step times
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

            call = timed(call, calls)

            def step():
                ms = moe_step(gate, x, call)
                if interleave is not None:
                    baseline.append(interleave.step())
                return ms

            def on_step(i):
                if kill and i == steps // 2:
                    os.kill(procs[0][0].pid, signal.SIGKILL)

            times = run_steps(step, steps, warmup=warmup, on_step=on_step, warmup_seconds=WARMUP_SECONDS)
        forwards = [] if kill else [span for _, conn in procs for span in _ask_spans(conn)]
        return times, breakdown(times, calls[-steps:], forwards), baseline[-steps:]
    finally:
        _stop(procs)


def _ask_spans(conn) -> list[tuple[int, int]]:
    conn.send("spans")
    return conn.recv()


def breakdown(times: list[float], calls: list[tuple[int, int]], forwards: list[tuple[int, int]]) -> dict[str, float]:
    """Medians over steps of where each went (see the module docstring); `calls` are the steps' remote calls and
    `forwards` every expert forward, as (start, end) ns."""
    parts: dict[str, list[float]] = {"caller_local": [], "to_expert": [], "expert_forward": [], "from_expert": []}
    for ms, (c0, c1) in zip(times, calls, strict=True):
        parts["caller_local"].append(ms - (c1 - c0) / 1e6)
        inside = [f for f in forwards if c0 <= f[0] and f[1] <= c1]
        if inside:
            f0, f1 = max(inside, key=lambda f: f[1])  # the forward the call waited for last
            parts["to_expert"].append((f0 - c0) / 1e6)
            parts["expert_forward"].append((f1 - f0) / 1e6)
            parts["from_expert"].append((c1 - f1) / 1e6)
    return {k: round(statistics.median(v), 2) if v else float("nan") for k, v in parts.items()}


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

        return statistics.median(run_steps(step, steps, warmup=3, warmup_seconds=WARMUP_SECONDS))
    finally:
        _stop(procs)
        dht.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--skip-hivemind", action="store_true")
    ap.add_argument("--skip-faults", action="store_true", help="skip the killed- and slow-expert runs")
    args = ap.parse_args()
    torch.set_num_threads(1)
    x = torch.randn(B, T, D, generator=torch.Generator().manual_seed(0))

    inprocess = InProcess(x)
    ours, parts, inproc = bench_ours(x, args.steps, interleave=inprocess)
    ours_ms, inprocess_ms = statistics.median(ours), statistics.median(inproc)
    inprocess_experts_ms = statistics.median([(c1 - c0) / 1e6 for c0, c1 in inprocess.calls[-len(inproc) :]])
    print(f"in-process: {inprocess_ms:.2f} ms/step (experts {inprocess_experts_ms:.2f})", flush=True)
    print(f"ours: {ours_ms:.2f} ms/step (p99 {pct(ours, 0.99):.2f}); breakdown ms {parts}", flush=True)
    nan = [float("nan")]
    killed = nan if args.skip_faults else bench_ours(x, args.steps, kill=True)[0]
    print(f"ours, one expert killed mid-run: p50 {pct(killed, 0.5):.2f} p99 {pct(killed, 0.99):.2f} ms", flush=True)
    slow = nan if args.skip_faults else bench_ours(x, args.steps, slow=True)[0]
    print(f"ours, one expert 10x slower: p50 {pct(slow, 0.5):.2f} p99 {pct(slow, 0.99):.2f} ms", flush=True)
    hivemind_ms = float("nan") if args.skip_hivemind else bench_hivemind(x, args.steps)
    print(f"hivemind RemoteMixtureOfExperts: {hivemind_ms:.2f} ms/step", flush=True)
    result = {
        "hivemind_ms": round(hivemind_ms, 2),
        "ours_ms": round(ours_ms, 2),
        "inprocess_ms": round(inprocess_ms, 2),
        "inprocess_experts_ms": round(inprocess_experts_ms, 2),
        "breakdown_ms": parts,
        "p50_killed_ms": round(pct(killed, 0.5), 2),
        "p99_killed_ms": round(pct(killed, 0.99), 2),
        "p50_slow_ms": round(pct(slow, 0.5), 2),
        "p99_slow_ms": round(pct(slow, 0.99), 2),
        "ratio_vs_hivemind": round(hivemind_ms / ours_ms, 2),
        "ratio_vs_inprocess": round(ours_ms / inprocess_ms, 2),
        "overhead_vs_inprocess_ms": round(ours_ms - inprocess_ms, 2),
        "ours_within_inprocess_plus_2ms": ours_ms <= inprocess_ms + 2,
        "ours_within_2x_inprocess_plus_5ms": ours_ms <= 2 * inprocess_ms + 5,
        "steps": args.steps,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
