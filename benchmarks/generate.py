"""Generation speed: KV-cached inference sessions (route once, one byte a step) vs the stateless path (re-route and
re-run the whole context every byte), against real expert servers on loopback, at 64 and 512 bytes of context.

Run:  python3 benchmarks/generate.py [--experts 4] [--stateless-bytes 8] [--session-bytes 128]

Four random-init ByteLMs of the default experts' size (d_model 128, 4 layers; max_seq_len raised to 1024 so 512
bytes of context fit) are served by ExpertServers (each proving a hotkey, so replies carry receipts) and called through
one SyncExpertClient (q8 over the direct path), with a local generalist of the same size and a random gate: the
router's own probe, gate, top-2, switching mixture (moe.routing.remote.serve_mix). The stateless baseline is
moe.routing.generation.generate_stateless over that mixture; sessions are generate_bytes over RemoteSessions (their
context starts at the prompt's length and grows, so they never see less than the baseline). The last line is one JSON
object; `ratio_vs_stateless_512` is sessions' bytes/s over the stateless path's at 512 bytes of context.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--experts", type=int, default=4)
    p.add_argument("--stateless-bytes", type=int, default=8, help="bytes generated per context by the baseline")
    p.add_argument("--session-bytes", type=int, default=128, help="bytes generated per context with sessions")
    p.add_argument("--contexts", default="64,512")
    args = p.parse_args()

    from hivemind.p2p import PeerID

    from moe.identity import Hotkey
    from moe.model.transformer import ByteLM, ModelConfig
    from moe.net.client import ClientConfig, SyncExpertClient
    from moe.net.server import ExpertServer, ServerConfig
    from moe.routing.gate import Gate
    from moe.routing.generation import generate_bytes, generate_stateless
    from moe.routing.mixing import ExpertEntry
    from moe.routing.remote import RouterConfig, serve_mix
    from moe.routing.remote_sessions import RemoteSessions
    from moe.routing.signature import SIGNATURE_DIM

    cfg = ModelConfig(max_seq_len=1024)

    def model(seed: int) -> ByteLM:
        torch.manual_seed(seed)
        return ByteLM(cfg).eval()

    servers, keys = [], [Hotkey.from_seed(bytes([i + 1]) * 32) for i in range(args.experts)]
    client = None
    try:
        for i, key in enumerate(keys):
            srv = ExpertServer(model(i), ServerConfig(max_tokens=4096)).start()
            srv.prove_identity(key)
            servers.append(srv)
        client = SyncExpertClient(
            ClientConfig(wire_format="q8", forward_timeout_seconds=30.0),
            initial_peers=[m for s in servers for m in s.maddrs],
        )
        peer_of = {k.address: s.peer_id for k, s in zip(keys, servers, strict=True)}
        torch.manual_seed(100)
        entries = [ExpertEntry(k.address, i, torch.rand(SIGNATURE_DIM).tolist()) for i, k in enumerate(keys)]
        gate, rc, generalist = Gate(RouterConfig.d_gate), RouterConfig(), model(99)

        def call(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            by_peer = {peer_of[k]: x for k, x in inputs.items()}
            replies = client.call_many(list(by_peer), by_peer)
            return {k: replies[peer_of[k]] for k in inputs if peer_of[k] in replies}

        def generalist_logp(x: torch.Tensor) -> torch.Tensor:
            return torch.log_softmax(generalist(x)[..., :256].float(), -1)

        def route(x: torch.Tensor):
            return serve_mix(gate, x, entries, call, rc, generalist_logp)

        remote = RemoteSessions(client, lambda: {k: str(p.to_base58()) for k, p in peer_of.items()}, generalist)
        assert all(isinstance(p, PeerID) for p in peer_of.values())
        result: dict = {"experts": args.experts, "model": "ByteLM default size (d_model 128, 4 layers)"}
        with torch.no_grad():
            for context in [int(c) for c in args.contexts.split(",")]:
                prompt = torch.randint(0, 256, (context,), generator=torch.Generator().manual_seed(context)).tolist()

                def run(name: str, n: int, prompt: list[int] = prompt, context: int = context):
                    if name == "stateless":
                        return generate_stateless(lambda x: route(x).logp, prompt, n, context_bytes=context)
                    return generate_bytes(
                        route,
                        remote,
                        prompt,
                        n,
                        context_bytes=context,
                        reroute_every=64,
                        switch_alpha=rc.switch_alpha,
                        gate_weight=rc.switch_gate_weight,
                        generalist_share=rc.generalist_share,
                    )

                figures = {}
                for name, n in (("stateless", args.stateless_bytes), ("sessions", args.session_bytes)):
                    list(run(name, 2))  # warm-up: connections, first compute
                    t0 = time.perf_counter()
                    got = list(run(name, n))
                    figures[name] = round(len(got) / (time.perf_counter() - t0), 2)
                    print(f"context {context}: {name} {figures[name]} bytes/s", flush=True)
                figures["ratio"] = round(figures["sessions"] / figures["stateless"], 2)
                result[f"context_{context}"] = figures
        result["ratio_vs_stateless_512"] = result.get("context_512", {}).get("ratio")
        result["baseline"] = "stateless: Mixture.generate's old path (route and mix the whole context per byte)"
        print(json.dumps(result))
    finally:
        if client is not None:
            client.shutdown()
        for s in servers:
            s.shutdown()


if __name__ == "__main__":
    main()
