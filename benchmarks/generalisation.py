"""Generalisation of a finished run: every model and mixing setting, in distribution and on the shifted sets.

    python benchmarks/generalisation.py runs/<run_id>                 # the run's own checkpoints, offline
    python benchmarks/generalisation.py runs/<run_id> --alphas 0.002,0.005,0.01 --windows 256

For each subnet it scores `--windows` windows of the run's sequence length from the validation split (in
distribution) and from the shifted set (same domain, another source, never trained on), then prints bits per byte per
subnet, their mean, the worst single window, and the remote expert calls per byte each setting costs:

- every model alone: the experts, the seed, the solo and dense baselines;
- `per_sequence`: the run's gate choosing the top-k once per sequence after the probe (the router before switching);
- `bayes_experts`: every expert on every byte, per-sequence Bayesian weights, no generalist;
- `switch_all@a`: every expert plus the seed on every byte, fixed-share switching at rate a;
- `switch_candidates@a`: the gate's top-k after the probe plus the seed, switching at a with a uniform prior;
- `live@a`: the live router's default: as above, the weight shared back following the gate for
  `router.switch_gate_weight` of it (see moe.routing.switching.gate_prior);
- `escalate@a`: as above, and a sequence whose last 16 bytes cost more than 5 bits a byte also calls the experts
  it left out (from then on, weights restarted from the last 16 bytes' likelihood).

Last line: one JSON object with those figures and `ratio_vs_dense`, the live setting's shifted mean over the equal-
compute dense baseline's (below 1 means the mixture generalises better than one model holding all the compute).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moe.config_loader import parse_args  # noqa: E402
from moe.corpus.batches import iter_eval_windows  # noqa: E402
from moe.corpus.tokens import shifted_tokens, subnet_tokens  # noqa: E402
from moe.metrics import byte_log_probs, window_bits  # noqa: E402
from moe.model.transformer import ByteLM, config_dict  # noqa: E402
from moe.roles.layout import CHECKPOINT, RESULT, RunLayout  # noqa: E402
from moe.roles.run_config import RunConfig  # noqa: E402
from moe.routing.gate import Gate  # noqa: E402
from moe.routing.mixing import ExpertEntry, local_caller, route_and_mix  # noqa: E402
from moe.routing.switching import first_loss_jump, gate_prior, switching_mixture  # noqa: E402
from moe.training.checkpoint import load_checkpoint, load_model_bytes  # noqa: E402
from subnets import all_subnets  # noqa: E402

ESCALATE_WINDOW, ESCALATE_BITS = 16, 5.0


def load_run(layout: RunLayout, cfg: RunConfig):
    """(experts {hotkey: (subnet, model, centroid)}, seed, baselines {kind: model}, gate entries, gate)."""
    expect = config_dict(cfg.model)

    def from_checkpoint(folder: Path) -> ByteLM:
        model = ByteLM(cfg.model)
        load_checkpoint(folder / CHECKPOINT, model, expect_config=expect)
        return model.eval()

    experts = {}
    for s in cfg.subnets:
        r = json.loads((layout.expert(s) / RESULT).read_text())
        experts[r["hotkey"]] = (s, from_checkpoint(layout.expert(s)), r["signature_centroid"])
    seed = ByteLM(cfg.model)
    load_model_bytes(seed, layout.seed_blob.read_bytes(), expect, source=str(layout.seed_blob))
    baselines = {k: from_checkpoint(layout.baseline(k)) for k in ("solo", "dense") if layout.baseline(k).is_dir()}
    gate = Gate(cfg.router.d_gate)
    gate.load_state_dict(load_file(layout.router / "gate.safetensors"))
    slots = json.loads((layout.router / "gate.json").read_text())["slots"]
    entries = [ExpertEntry(key=k, slot=int(slots[k]), centroid=c, subnet=s) for k, (s, _, c) in experts.items()]
    return experts, seed.eval(), baselines, entries, gate


@torch.no_grad()
def model_logp(model: ByteLM, x: torch.Tensor, batch: int = 64) -> torch.Tensor:
    return torch.cat([byte_log_probs(model(x[i : i + batch])) for i in range(0, len(x), batch)])


def per_window_bpb(logp: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    bits, n = window_bits(logp.detach(), y)
    return bits / n.clamp(min=1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--alphas", default="0.002,0.005,0.01")
    p.add_argument("--windows", type=int, default=256, help="windows per subnet and split")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    alphas = [float(a) for a in args.alphas.split(",")]
    layout = RunLayout(Path(args.run_dir))
    cfg = parse_args(RunConfig, [str(layout.config)])
    subnets = all_subnets()
    experts, seed, baselines, entries, gate = load_run(layout, cfg)
    keys = [e.key for e in entries]
    rc, T = cfg.router, cfg.expert_train.seq_len
    P, J, k = min(rc.probe_len, T), len(keys), min(rc.k_best, len(keys))
    t0 = time.perf_counter()

    scores: dict[str, dict[str, dict[str, torch.Tensor]]] = {"eval": {}, "shifted": {}}
    calls: dict[str, list[float]] = {}
    for split in scores:
        for s in cfg.subnets:
            sub = subnets[s]
            tokens = subnet_tokens(sub, "val", cfg.data) if split == "eval" else shifted_tokens(sub, cfg.data)
            if tokens is None:
                continue
            xy = list(iter_eval_windows(np.asarray(tokens), T, 64, args.windows))
            x, y = torch.cat([a for a, _ in xy]), torch.cat([b for _, b in xy])
            W = len(x)
            L = {key: model_logp(experts[key][1], x) for key in keys}
            row = {f"expert {experts[key][0]}": per_window_bpb(L[key], y) for key in keys}
            seed_lp = model_logp(seed, x)
            row["seed"] = per_window_bpb(seed_lp, y)
            for kind, model in baselines.items():
                row[kind] = per_window_bpb(model_logp(model, x), y)
            served = route_and_mix(gate, x, entries, local_caller({key: experts[key][1] for key in keys}), k, P)
            row["per_sequence"] = per_window_bpb(served.logp, y)
            calls.setdefault("per_sequence", []).append(served.calls_per_byte)
            E = torch.stack([L[key] for key in keys], 2)  # (W, T, J, 256)
            ES = torch.cat([E, seed_lp[:, :, None]], 2)  # (W, T, J+1, 256): the seed last
            nxt = y  # each position's target is the byte that follows it
            row["bayes_experts"] = per_window_bpb(
                switching_mixture(E, nxt, torch.ones(W, T, J, dtype=torch.bool), 0.0).logp, y
            )
            calls.setdefault("bayes_experts", []).append(float(J))
            cand = torch.ones(W, T, J + 1, dtype=torch.bool)
            cand[:, P:, :J] = served.chosen[:, None, :]  # after the probe only the chosen experts (and the seed)
            for a in alphas:
                everyone = torch.ones(W, T, J + 1, dtype=torch.bool)
                row[f"switch_all@{a}"] = per_window_bpb(switching_mixture(ES, nxt, everyone, a).logp, y)
                calls.setdefault(f"switch_all@{a}", []).append(float(J))
                live = switching_mixture(ES, nxt, cand, a)
                row[f"switch_candidates@{a}"] = per_window_bpb(live.logp, y)
                calls.setdefault(f"switch_candidates@{a}", []).append(served.calls_per_byte)
                jump = first_loss_jump(live.target_bits, ESCALATE_WINDOW, ESCALATE_BITS, start=P)
                more = cand.clone()
                for i in torch.nonzero(jump >= 0).flatten().tolist():
                    more[i, jump[i] + 1 :, :] = True  # the left-out experts are called on the whole window
                row[f"escalate@{a}"] = per_window_bpb(switching_mixture(ES, nxt, more, a, reset_at=jump).logp, y)
                escalated = float((jump >= 0).float().mean())  # those rows call the J - k left-out experts too
                calls.setdefault(f"escalate@{a}", []).append(served.calls_per_byte + escalated * (J - k))
                prior = gate_prior(served.gate_logits, rc.switch_gate_weight, rc.generalist_share)
                live = switching_mixture(ES, nxt, cand, a, prior_logits=prior)
                row[f"live@{a}"] = per_window_bpb(live.logp, y)
                calls.setdefault(f"live@{a}", []).append(served.calls_per_byte)
            scores[split][s] = row
            print(f"# {split} {s}: {W} windows, {time.perf_counter() - t0:.0f}s", flush=True)

    figures: dict[str, dict] = {}
    names = list(next(iter(scores["eval"].values())))
    for split, by_subnet in scores.items():
        if not by_subnet:
            continue
        print(f"\n{split}: bits per byte ({', '.join(by_subnet)}), mean, worst window, remote calls per byte")
        for n in names:
            per = {s: float(row[n].detach().mean()) for s, row in by_subnet.items()}
            mean = float(np.mean(list(per.values())))
            worst = max(float(row[n].max()) for row in by_subnet.values())
            c = float(np.mean(calls[n])) if n in calls else 0.0
            figures.setdefault(n, {})[split] = {**per, "mean": round(mean, 4), "worst_window": round(worst, 3)}
            figures[n]["calls_per_byte"] = round(c, 3)
            print(f"{n:>26} " + " ".join(f"{v:7.3f}" for v in per.values()) + f" {mean:8.3f} {worst:7.2f} {c:6.2f}")
    live = f"live@{rc.switch_alpha}"
    live = live if live in figures else f"live@{alphas[0]}"
    dense = figures.get("dense", {}).get("shifted", {}).get("mean")
    ratio = None if dense is None else round(figures[live]["shifted"]["mean"] / dense, 4)
    out = {"run": layout.root.name, "live_setting": live, "ratio_vs_dense": ratio, "baseline": "dense", **figures}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
