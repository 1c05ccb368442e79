"""Router scale: shortlisted routing over 16 to 1,024 tiny experts, in process, against probing everyone and an oracle.

    python benchmarks/scale.py             # 80 s of CPU on one thread (5.5 min wall on a busy 2-core box)
    python benchmarks/scale.py --quick     # 27 s of CPU: 64 windows a size, up to 256 experts, no sweep
    python benchmarks/scale.py --shortlist 12 --sizes 64:16,1024:32

Setup (not timed): one tiny byte LM (moe.model.transformer, d_model 32, one layer) is trained for `--train-steps` steps
on each of `--domains` corpora: the four default subnets' cached test slices (train split; windows are routed from the
val split), then the same text through seeded byte ciphers (same structure, other bytes). A network of N experts on G
subnets gives expert i to subnet i mod G (domain (i mod G) mod --domains) as a copy of that domain's model with
Gaussian noise of a random scale (up to `--noise` of each weight tensor's std), so experts of a subnet differ in
quality; each publishes its domain's signature centroid. Sizes: 16 experts on 8 subnets, 64 on 16, 256 on 32, 1,024 on
32.

Per size, measured:
- validator epoch: the validators' coalition game (moe.poi.value.MixtureGame) over every expert's log-probs on
  `--val-windows` windows, Shapley by `--permutations` sampled permutations (moe.poi.shapley); the time excludes the
  experts' forward passes (remote calls in a real epoch);
- ledger epoch: `yuma_epoch` on each subnet's (validators x uids) weights, which follow the Shapley values with
  per-validator noise; its incentive is the trust the router gets (moe.routing.remote.relative_log_trust);
- router: `serve_mix` with the default RouterConfig (no generalist) and an untrained gate, after `--warmup` windows
  from which a cold router learns its experts' profiles (moe.routing.shortlist.ExpertProfiles), over `--sequences`
  windows spread over the subnets, in-process experts (moe.routing.mixing.local_caller): expert calls per sequence
  (probes, whole-sequence calls and escalations), expert positions per byte, CPU and wall milliseconds per sequence
  (ranking, calls and mixing, one thread), bits per byte, and the ratio to the oracle that knows each window's subnet
  and calls that subnet's best expert on these windows.
Baseline, same run: probing everyone (shortlist 0) at 64 experts. Without --quick, a sweep of shortlist sizes and
prefixes at the largest size justifies the defaults.

Last line of stdout: one JSON object with the per-size figures, the baseline's, the ratios to it and the flatness
from 64 to the largest size.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moe.corpus.batches import ByteBatches  # noqa: E402
from moe.corpus.tokens import CorpusConfig, subnet_tokens  # noqa: E402
from moe.ledger.yuma import yuma_epoch  # noqa: E402
from moe.metrics import bits_per_byte, byte_log_probs, target_log_probs  # noqa: E402
from moe.model.transformer import ByteLM, ModelConfig  # noqa: E402
from moe.poi.shapley import ShapleyConfig, sampled_shapley  # noqa: E402
from moe.poi.value import MixtureGame  # noqa: E402
from moe.routing.gate import Gate  # noqa: E402
from moe.routing.mixing import ExpertEntry, local_caller  # noqa: E402
from moe.routing.remote import RouterConfig, relative_log_trust, serve_mix  # noqa: E402
from moe.routing.shortlist import ExpertProfiles  # noqa: E402
from moe.routing.signature import domain_centroid  # noqa: E402
from subnets import all_subnets  # noqa: E402

SEQ_LEN = 128
"""Bytes per routed window (the default run's)."""
MODEL = ModelConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64, max_seq_len=SEQ_LEN)
SIZES = ((16, 8), (64, 16), (256, 32), (1024, 32))
"""(experts, subnets) per measured network."""
BASELINE = (64, 16)
VALIDATORS = 8


def domain_corpora(n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) token streams of n domains: the embedded subnets' slices, then byte-ciphered copies."""
    real = []
    for subnet in all_subnets().values():
        cfg = CorpusConfig(slice=True)
        real.append((subnet_tokens(subnet, "train", cfg), subnet_tokens(subnet, "val", cfg)))
    out = []
    for d in range(n):
        train, test = real[d % len(real)]
        if d >= len(real):
            perm = np.random.default_rng(d).permutation(256).astype(train.dtype)  # bytes only; EOS stays

            def cipher(t: np.ndarray, perm: np.ndarray = perm) -> np.ndarray:
                return np.where(t < 256, perm[np.minimum(t, 255)], t)

            train, test = cipher(train), cipher(test)
        out.append((train, test))
    return out


def train_model(tokens: np.ndarray, steps: int, seed: int) -> ByteLM:
    torch.manual_seed(seed)
    model = ByteLM(MODEL)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batches = ByteBatches(tokens, SEQ_LEN, 16, seed)
    for _ in range(steps):
        x, y = batches.sample()
        F.cross_entropy(model(x).flatten(0, 1), y.flatten(), ignore_index=-1).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return model.eval()


class CountingCaller:
    """local_caller that counts expert calls (one per expert per sequence sent)."""

    def __init__(self, models: dict[str, torch.nn.Module]):
        self.inner, self.calls = local_caller(models), 0

    def __call__(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.calls += sum(int(x.shape[0]) for x in inputs.values())
        return self.inner(inputs)


def build_network(n: int, g: int, bases: list[ByteLM], noise: float, seed: int):
    """n noisy copies of the base models on g subnets: (models {key: model}, subnet of each key)."""
    rng = torch.Generator().manual_seed(seed)
    models, subnet = {}, {}
    for i in range(n):
        key, s = f"e{i:04d}", i % g
        m = copy.deepcopy(bases[s % len(bases)])
        scale = noise * float(torch.rand((), generator=rng))
        with torch.no_grad():
            for p in m.parameters():
                p.add_(scale * p.std() * torch.randn(p.shape, generator=rng))
        models[key], subnet[key] = m, s
    return models, subnet


@torch.no_grad()
def validator_epoch(models, subnet, corpora, g: int, args, seed: int):
    """Shapley over every expert on validation windows, then each subnet's Yuma epoch: (trust {key: incentive},
    shapley seconds, ledger seconds)."""
    keys = list(models)
    per = max(1, args.val_windows // g)
    xs, ys = [], []
    for s in range(g):
        x, y = ByteBatches(corpora[s % len(corpora)][1], args.val_len, per, seed + s).sample()
        xs.append(x)
        ys.append(y)
    x, y = torch.cat(xs), torch.cat(ys)
    lp = torch.stack([target_log_probs(byte_log_probs(models[k](x)), y)[0] for k in keys]).double()  # (E, W, T)
    t0 = time.perf_counter()
    cfg = ShapleyConfig(
        max_permutations=args.permutations, min_permutations=args.permutations, target_stderr=0.0, seed=seed
    )
    phi = sampled_shapley(MixtureGame(lp), cfg).values.clamp(min=0).numpy()
    shapley_s = time.perf_counter() - t0
    rng = np.random.default_rng(seed)
    stakes = rng.uniform(1, 10, VALIDATORS)
    trust: dict[str, float] = {}
    t0 = time.perf_counter()
    for s in range(g):
        uids = [i for i, k in enumerate(keys) if subnet[k] == s]
        w = phi[uids][None, :] * rng.lognormal(0.0, 0.1, (VALIDATORS, len(uids)))  # (V, M) noisy views
        inc = yuma_epoch(w, stakes).incentive
        trust.update({keys[u]: float(v) for u, v in zip(uids, inc, strict=True)})
    return trust, shapley_s, time.perf_counter() - t0


def route(gate, x, y, entries, models, rc: RouterConfig, batch: int, profiles: ExpertProfiles, domain_of) -> dict:
    """Mix every window through serve_mix: bits per byte, expert calls per sequence (probes, whole-sequence calls and
    escalations), expert positions per byte, wall and CPU milliseconds per sequence, and the share of windows whose
    top-k held an expert of their domain. `domain_of(key)` is an expert's domain; windows are in subnet order."""
    call = CountingCaller(models)
    bits, n, wall, cpu, positions, right = 0.0, 0, 0.0, 0.0, 0, []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            t0, c0 = time.perf_counter(), time.process_time()
            out = serve_mix(gate, x[i : i + batch], entries, call, rc, None, profiles)
            wall, cpu = wall + time.perf_counter() - t0, cpu + time.process_time() - c0
            b, c = bits_per_byte(out.logp, y[i : i + batch])
            bits, n, positions = bits + b, n + c, positions + out.expert_positions
            for r, row in enumerate(out.chosen):
                right.append(any(domain_of(out.keys[j]) == domain_of(i + r, True) for j in row.nonzero().flatten()))
    return {
        "bpb": bits / n,
        "calls_per_seq": call.calls / len(x),
        "positions_per_byte": positions / x.numel(),
        "ms_per_seq": 1000 * wall / len(x),
        "cpu_ms_per_seq": 1000 * cpu / len(x),
        "right_domain": float(np.mean(right)),
    }


@torch.no_grad()
def oracle_bpb(models, subnet, x, y, seq_subnet: list[int]) -> float:
    """Bits per byte of each window's subnet's best expert on that subnet's windows."""
    bits, n = 0.0, 0
    for s in sorted(set(seq_subnet)):
        rows = torch.tensor([i for i, t in enumerate(seq_subnet) if t == s])
        scored = [bits_per_byte(byte_log_probs(m(x[rows])), y[rows]) for k, m in models.items() if subnet[k] == s]
        b, c = min(scored)
        bits, n = bits + b, n + c
    return bits / n


def windows(corpora, subnets: list[int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One test window of each listed subnet's domain: (x, y) of shape (len(subnets), SEQ_LEN)."""
    pairs = [
        ByteBatches(corpora[s % len(corpora)][1], SEQ_LEN, 1, seed + 7 * j).sample() for j, s in enumerate(subnets)
    ]
    return torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])


def measure(n: int, g: int, bases, centroids, corpora, args, rcs: dict[str, RouterConfig]) -> dict:
    """Build an n-expert network on g subnets, run its validator and ledger epochs, then route with each config."""
    seed = 1000 * n + g
    models, subnet = build_network(n, g, bases, args.noise, seed)
    trust, shapley_s, ledger_s = validator_epoch(models, subnet, corpora, g, args, seed)
    log_trust = relative_log_trust(trust, set(models))
    D = len(bases)
    entries = [
        ExpertEntry(k, i, centroids[subnet[k] % D], f"s{subnet[k]}", log_trust.get(k, 0.0))
        for i, k in enumerate(models)
    ]
    seq_subnet = [j % g for j in range(args.sequences)]
    x, y = windows(corpora, seq_subnet, seed)

    def domain_of(key, row: bool = False) -> int:
        return (seq_subnet[key] if row else subnet[key]) % D

    torch.manual_seed(0)
    gate = Gate(RouterConfig().d_gate, max_experts=max(n, 256))
    out = {"experts": n, "subnets": g, "oracle_bpb": oracle_bpb(models, subnet, x, y, seq_subnet)}
    out |= {"validator_epoch_s": shapley_s, "ledger_epoch_ms": 1000 * ledger_s}
    # a cold router first learns its experts' profiles from its own probes, on other windows
    profiles = ExpertProfiles()
    wx, wy = windows(corpora, [j % g for j in range(args.warmup)], seed + 3)
    warm_domain = [j % g for j in range(args.warmup)]
    route(
        gate,
        wx,
        wy,
        entries,
        models,
        rcs["shortlist"],
        args.batch,
        profiles,
        lambda k, row=False: (warm_domain[k] if row else subnet[k]) % D,
    )
    for name, rc in rcs.items():
        r = route(gate, x, y, entries, models, rc, args.batch, copy.deepcopy(profiles), domain_of)
        out[name] = r | {"bpb_vs_oracle": r["bpb"] / out["oracle_bpb"]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="64 windows a size, up to 256 experts, no sweep")
    ap.add_argument("--sizes", default=",".join(f"{n}:{g}" for n, g in SIZES), help="experts:subnets,...")
    ap.add_argument("--domains", type=int, default=16, help="distinct corpora (one trained model each)")
    ap.add_argument("--train-steps", type=int, default=60)
    ap.add_argument("--noise", type=float, default=0.3, help="largest weight noise, in units of each tensor's std")
    ap.add_argument("--sequences", type=int, default=256, help="routed windows per size")
    ap.add_argument("--warmup", type=int, default=64, help="windows routed before measuring, to learn profiles")
    ap.add_argument("--batch", type=int, default=16, help="windows per serve_mix call")
    ap.add_argument("--val-windows", type=int, default=32, help="validator windows per epoch (spread over subnets)")
    ap.add_argument("--val-len", type=int, default=64)
    ap.add_argument("--permutations", type=int, default=64, help="sampled Shapley permutations per epoch")
    ap.add_argument("--shortlist", type=int, default=RouterConfig().shortlist)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (CPU time per sequence assumes 1)")
    args = ap.parse_args()
    if args.quick:
        args.sequences = 64
        args.sizes = (
            ",".join(f"{n}:{g}" for n, g in SIZES[:3]) if args.sizes == ap.get_default("sizes") else args.sizes
        )
    torch.set_num_threads(args.threads)
    sizes = [tuple(int(v) for v in s.split(":")) for s in args.sizes.split(",")]
    t_start = time.perf_counter()

    corpora = domain_corpora(args.domains)
    bases = [train_model(train, args.train_steps, d) for d, (train, _) in enumerate(corpora)]
    centroids = [domain_centroid(ByteBatches(train, SEQ_LEN, 64, 1).sample()[0].numpy()) for train, _ in corpora]
    print(f"trained {len(bases)} base models in {time.perf_counter() - t_start:.1f} s", flush=True)

    results = {}
    for n, g in sizes:
        rcs = {"shortlist": RouterConfig(shortlist=args.shortlist)}
        if (n, g) == BASELINE:
            rcs["probe_all"] = RouterConfig(shortlist=0)
        if not args.quick and (n, g) == sizes[-1]:
            rcs |= {f"shortlist={s}": RouterConfig(shortlist=s) for s in (4, 6, 12, 16) if s != args.shortlist}
            rcs |= {f"prefix={p}": RouterConfig(shortlist=args.shortlist, shortlist_prefix=p) for p in (4, 16)}
        t0 = time.perf_counter()
        results[n] = r = measure(n, g, bases, centroids, corpora, args, rcs)
        print(
            f"{n} experts on {g} subnets ({time.perf_counter() - t0:.0f} s): oracle {r['oracle_bpb']:.3f} bpb, "
            f"validator epoch {r['validator_epoch_s']:.3f} s, ledger epoch {r['ledger_epoch_ms']:.1f} ms",
            flush=True,
        )
        for name, v in r.items():
            if isinstance(v, dict):
                print(
                    f"  {name:14s} {v['calls_per_seq']:6.1f} calls/seq {v['positions_per_byte']:6.2f} pos/byte "
                    f"{v['cpu_ms_per_seq']:6.1f} cpu ms/seq  bpb {v['bpb']:.3f} = oracle x{v['bpb_vs_oracle']:.4f}  "
                    f"right domain {v['right_domain']:.3f}",
                    flush=True,
                )

    def rounded(d: dict) -> dict:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in d.items() if not isinstance(v, dict)}

    summary: dict = {"baseline": f"probe_all@{BASELINE[0]}", "shortlist": args.shortlist, "sizes": {}}
    for n, r in results.items():
        summary["sizes"][n] = rounded(r) | rounded(r["shortlist"])
    base = results.get(BASELINE[0], {}).get("probe_all")
    if base is not None:
        summary["baseline_figures"] = rounded(base)
        summary["ratios_vs_baseline"] = {
            n: {
                f"{k}_ratio": round(r["shortlist"][k] / base[k], 4) for k in ("calls_per_seq", "cpu_ms_per_seq", "bpb")
            }
            for n, r in results.items()
        }
    lo, hi = (64 if 64 in results else min(results)), max(results)
    summary["flatness"] = {
        "from_to": [lo, hi],
        **{
            f"{k}_ratio": round(results[hi]["shortlist"][k] / results[lo]["shortlist"][k], 4)
            for k in ("calls_per_seq", "positions_per_byte", "cpu_ms_per_seq", "ms_per_seq")
        },
    }
    sweep = {name: rounded(v) for name, v in results[hi].items() if isinstance(v, dict) and name != "shortlist"}
    if sweep:
        summary["sweep"] = {"experts": hi, **sweep}
    summary["seconds"] = round(time.perf_counter() - t_start, 1)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
