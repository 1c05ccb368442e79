"""What adversaries cost the honest network: a run with `adversaries=...` against the same config without them.

    python benchmarks/adversary_impact.py RUN_WITH_ADVERSARIES RUN_WITHOUT

Reads both runs' summary.json. Honest experts are matched by subnet (keys differ between runs). Reports each honest
expert's TAO reward in both runs and their ratio (the bar: at least 0.9), the adversaries' share of the miners'
emission (the bar: under 1 %), the Spearman correlation of honest rewards with contributions in the adversarial run
(the bar: at least 0.9), the mixture's bits per byte in both runs (the bar: it moves by under 1 %), and every
adversary's flags. Last line: one JSON object; the baseline is the run without adversaries.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def honest_by_subnet(summary: dict) -> dict[str, dict]:
    return {e["subnet"]: e for e in summary["experts"] if not e["adversary"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("attacked", type=Path, help="run directory of the run with adversaries")
    ap.add_argument("baseline", type=Path, help="run directory of the same config without adversaries")
    args = ap.parse_args()
    attacked = json.loads((args.attacked / "summary.json").read_text())
    baseline = json.loads((args.baseline / "summary.json").read_text())
    a_honest, b_honest = honest_by_subnet(attacked), honest_by_subnet(baseline)
    ratios = {}
    print(f"{'subnet':<10}{'reward with':>14}{'without':>12}{'ratio':>8}")
    for subnet in sorted(set(a_honest) & set(b_honest)):
        with_ = attacked["rewards"].get(a_honest[subnet]["hotkey"], 0.0)
        without = baseline["rewards"].get(b_honest[subnet]["hotkey"], 0.0)
        ratios[subnet] = with_ / without if without > 0 else float("nan")
        print(f"{subnet:<10}{with_:>14.2f}{without:>12.2f}{ratios[subnet]:>8.3f}")
    mix_a, mix_b = attacked["mixture"]["eval_bpb"]["all"], baseline["mixture"]["eval_bpb"]["all"]
    shifted_a, shifted_b = attacked["mixture"]["shifted_bpb"]["all"], baseline["mixture"]["shifted_bpb"]["all"]
    print(f"mixture bpb {mix_a:.4f} with adversaries, {mix_b:.4f} without ({mix_a / mix_b - 1:+.2%})")
    print(f"shifted bpb {shifted_a:.4f} with adversaries, {shifted_b:.4f} without ({shifted_a / shifted_b - 1:+.2%})")
    flags = {e["adversary"]: e["flags"] for e in attacked["experts"] if e["adversary"]}
    for kind, why in sorted(flags.items()):
        print(f"adversary {kind:<10} flagged {', '.join(why) or 'NOT FLAGGED'}")
    checks = attacked["checks"]
    out = {
        "baseline": "the same config without adversaries",
        "honest_reward_ratio": {k: round(v, 4) for k, v in ratios.items()},
        "honest_reward_ratio_min": round(min(ratios.values()), 4) if ratios else None,
        "adversaries_emission_share": checks.get("adversaries_emission_share"),
        "rewards_spearman_honest": checks.get("rewards_spearman_honest"),
        "mixture_bpb": {"with": round(mix_a, 4), "without": round(mix_b, 4)},
        "mixture_bpb_ratio": round(mix_a / mix_b, 4),
        "shifted_bpb_ratio": round(shifted_a / shifted_b, 4),
        "every_adversary_flagged": checks.get("every_adversary_flagged"),
        "no_honest_expert_flagged": checks.get("no_honest_expert_flagged"),
        "wall_seconds": {"with": attacked.get("wall_seconds"), "without": baseline.get("wall_seconds")},
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
