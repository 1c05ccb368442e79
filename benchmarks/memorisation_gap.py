"""The memorisation gap on a finished run: how much better each model does on the val-origin windows of a salted pool
than on its route-origin ones, for the run's honest experts, its seed, and a memoriser of the val splits.

    python benchmarks/memorisation_gap.py [--run runs/default_final] [--salts 5] [--draws 4] [--windows 32]

For each of `--salts` salts (fixed, so reruns agree) it builds every subnet's salted pool as a default validator does
(moe.poi.eval_source, fraction 0.5), draws `--draws` epochs of `--windows` windows of `--seq-len` bytes from it (the
validator's draw, moe.poi.commit.draw_windows) and measures each model's gap (moe.poi.memorisation.memorisation_gap:
mean bpb on route-origin windows minus val-origin ones), both pooled over all windows and `by_domain` (within each
subnet, as the validator compares them). Models: every expert checkpoint of the run and its seed
(honest: never trained on val or route), `memoriser` (moe.roles.memorizer.MemorizerLM of every subnet's val split)
and `hedged` (an even probability mixture of that memoriser and the seed: a memoriser that falls back on a real
model). `max_gap_bits` should sit well above every honest gap and well below the memoriser's. Last line: one JSON
object. CPU only, one thread.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moe.config_loader import build, load_yaml  # noqa: E402
from moe.corpus.tokens import CorpusConfig, subnet_tokens  # noqa: E402
from moe.metrics import byte_log_probs  # noqa: E402
from moe.model.transformer import ByteLM, ModelConfig  # noqa: E402
from moe.poi.commit import draw_windows  # noqa: E402
from moe.poi.eval_source import salted_pools, salted_pools_origin  # noqa: E402
from moe.poi.memorisation import MemorisationConfig, memorisation_gap, public_windows, window_bpb  # noqa: E402
from moe.roles.memorizer import MemorizerLM  # noqa: E402
from moe.training.checkpoint import load_checkpoint  # noqa: E402
from subnets import get_subnet  # noqa: E402

HONEST_PREFIX = "expert/"


def load_models(run: Path, model_cfg: ModelConfig) -> dict[str, torch.nn.Module]:
    """The run's seed and every expert checkpoint, by name, in eval mode."""
    dirs = {"seed": run / "seed" / "checkpoint"}
    dirs |= {f"{HONEST_PREFIX}{d.name}": d / "checkpoint" for d in sorted((run / "experts").iterdir())}
    models = {}
    for name, d in dirs.items():
        model = ByteLM(model_cfg)
        load_checkpoint(d, model)
        models[name] = model.eval()
    return models


@torch.no_grad()
def log_probs(models: dict[str, torch.nn.Module], memoriser: MemorizerLM, x: torch.Tensor) -> torch.Tensor:
    """(E, W, T, 256) next-byte log-probs of every model, then the memoriser, then the hedged memoriser."""
    out = [byte_log_probs(m(x)) for m in models.values()]
    mem = byte_log_probs(memoriser(x))
    hedged = torch.logaddexp(mem, out[0]) - math.log(2.0)  # out[0] is the seed
    return torch.stack(out + [mem, hedged])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default="runs/default_final")
    p.add_argument("--salts", type=int, default=5)
    p.add_argument("--draws", type=int, default=4, help="epochs (seeds) drawn per salt")
    p.add_argument("--windows", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--fraction", type=float, default=0.5)
    args = p.parse_args()
    torch.set_num_threads(1)

    run = Path(args.run)
    cfg = load_yaml(run / "config.yaml")
    models = load_models(run, build(ModelConfig, cfg["model"]))
    corpus = build(CorpusConfig, cfg["data"])
    held_out = {s: [subnet_tokens(get_subnet(s), split, corpus) for split in ("val", "route")] for s in cfg["subnets"]}
    memoriser = MemorizerLM([val for val, _ in held_out.values()])
    names = list(models) + ["memoriser", "hedged"]
    print(f"models {names}; memoriser stores {memoriser.stored_contexts} contexts")

    gaps: dict[str, dict[str, list[float]]] = {kind: {n: [] for n in names} for kind in ("pooled", "by_domain")}
    for i in range(args.salts):
        salt = hashlib.sha256(f"memorisation-gap/salt/{i}".encode()).digest()
        pools = salted_pools(held_out, salt, args.fraction)
        origins = salted_pools_origin(held_out, salt, args.fraction)
        for j in range(args.draws):
            seed = hashlib.sha256(f"memorisation-gap/seed/{i}/{j}".encode()).digest()
            drawn = draw_windows(seed, {k: len(v) for k, v in pools.items()}, args.windows, args.seq_len + 1)
            rows = torch.from_numpy(np.stack([pools[s][o : o + args.seq_len + 1] for s, o in drawn]).astype(np.int64))
            x, y = rows[:, :-1], rows[:, 1:]  # (W, T)
            public = public_windows(origins, drawn, args.seq_len + 1)
            dists = log_probs(models, memoriser, x)
            bpb = window_bpb(dists, y, torch.ones(len(names), len(drawn), dtype=torch.bool))  # (E, W)
            domains = sorted(pools)
            groups = [domains.index(s) for s, _ in drawn]  # as the validator groups windows
            for kind, g in (("pooled", None), ("by_domain", groups)):
                gap = memorisation_gap(bpb, public, min_windows=1, groups=g).tolist()
                for n, v in zip(names, gap, strict=True):
                    gaps[kind][n].append(v)
                row = " ".join(f"{n.removeprefix(HONEST_PREFIX)}={v:+.2f}" for n, v in zip(names, gap, strict=True))
                print(f"salt {i} draw {j} {kind:<9}: {int(public.sum())}/{len(drawn)} public; gap {row}")

    summary = {"epochs": args.salts * args.draws, "windows": args.windows, "seq_len": args.seq_len}
    for kind, by_model in gaps.items():
        print(f"\n{kind:<18}{'min':>8}{'mean':>8}{'max':>8}   (bits/byte, route-origin minus val-origin)")
        for n in names:
            g = np.array(by_model[n])
            print(f"{n:<18}{np.nanmin(g):>8.2f}{np.nanmean(g):>8.2f}{np.nanmax(g):>8.2f}")
        honest = np.concatenate([by_model[n] for n in models])
        summary[kind] = {
            "honest_min": round(float(np.nanmin(honest)), 3),
            "honest_max": round(float(np.nanmax(honest)), 3),
            "honest_std": round(float(np.nanstd(honest)), 3),
            "memoriser_min": round(float(np.nanmin(by_model["memoriser"])), 3),
            "memoriser_mean": round(float(np.nanmean(by_model["memoriser"])), 3),
            "memoriser_std": round(float(np.nanstd(by_model["memoriser"])), 3),
            "hedged_max": round(float(np.nanmax(by_model["hedged"])), 3),
        }
    summary["max_gap_bits"] = MemorisationConfig().max_gap_bits
    by_domain = summary["by_domain"]
    summary["baseline"] = "honest experts and seed, by domain"
    summary["ratio_memoriser_min_to_honest_max"] = round(by_domain["memoriser_min"] / by_domain["honest_max"], 2)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
