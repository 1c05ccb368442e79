"""Tests for moe/roles/summary.py: summary.json of a run, built from a run directory written result by result."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from rich.console import Console

from moe.config_loader import to_dict
from moe.fileio import write_json
from moe.roles.layout import RESULT, RunLayout
from moe.roles.run_config import RunConfig
from moe.roles.summary import build_summary, print_summary

HK = {"english": "aa" * 32, "code": "bb" * 32, "math": "cc" * 32, "noise": "dd" * 32, "copycat": "ee" * 32}


@dataclass
class Run:
    cfg: RunConfig
    layout: RunLayout


def expert_result(subnet: str, uid: int, bpb: dict[str, float], **extra) -> dict:
    """An expert's result.json as run_lm_job and run_expert write it."""
    return {
        "name": f"expert-{subnet}",
        "uid": uid,
        "hotkey": HK[subnet],
        "subnet": subnet,
        "netuid": uid + 1,
        "peer_id": f"peer-{subnet}",
        "params": 1000,
        "train_steps": 30,
        "train_flops": 2.0e9,
        "tokens": 15360,
        "eval_bpb": {**bpb, "all": sum(bpb.values()) / len(bpb)},
        "branched_from": "local seed",
        **extra,
    }


def adversary_result(kind: str, uid: int, eval_bpb: dict | None = None) -> dict:
    """An adversary's result.json as run_adversary writes it (it trains and scores nothing)."""
    return {
        "uid": uid,
        "hotkey": HK[kind],
        "subnet": "code",
        "peer_id": f"peer-{kind}",
        "params": 1000,
        "train_steps": 0,
        "train_flops": 0.0,
        "eval_bpb": eval_bpb or {},
        "adversary": kind,
    }


@pytest.fixture
def run(tmp_path) -> Run:
    """A finished run on english, code and math whose math expert never finished, with a noise and a copycat
    adversary, a router and both baselines: every figure chosen by hand."""
    cfg = RunConfig(subnets=["english", "code", "math"], run_id="r1", out_dir=str(tmp_path))
    layout = RunLayout.create(tmp_path, "r1")
    seed = {"eval_bpb": {"english": 3.0, "code": 3.0, "all": 3.0}, "train_steps": 30, "train_flops": 1.0e9}
    write_json(layout.seed / RESULT, seed)
    write_json(layout.expert("english") / RESULT, expert_result("english", 0, {"english": 2.0, "code": 3.0}))
    write_json(layout.expert("code") / RESULT, expert_result("code", 1, {"english": 3.2, "code": 1.8}))
    write_json(layout.adversary("noise") / RESULT, adversary_result("noise", 2))
    write_json(layout.adversary("copycat") / RESULT, adversary_result("copycat", 3))
    write_json(layout.router / RESULT, {"eval_bpb": {"english": 2.01, "code": 1.83, "all": 1.92}, "gate_steps": 10})
    for kind, all_bpb, flops in (("solo", 2.2, 2.0e9), ("dense", 1.9, 4.0e9)):
        b = {"eval_bpb": {"english": all_bpb, "code": all_bpb, "all": all_bpb}, "params": 1000, "train_flops": flops}
        write_json(layout.baseline(kind) / RESULT, b)
    return Run(cfg, layout)


def test_summary_collects_every_result(run):
    """The summary names the run and its config, and holds the seed, each finished expert (in subnet order, the
    unfinished one left out), then the adversaries by kind, the mixture and both baselines."""
    s = build_summary(run.cfg, run.layout, wall_seconds=12.345)
    assert s["run_id"] == "r1" and s["config"] == to_dict(run.cfg) and s["wall_seconds"] == 12.3
    seed = {"eval_bpb": {"english": 3.0, "code": 3.0, "all": 3.0}, "train_steps": 30, "train_flops": 1e9}
    assert s["seed"] == {
        **seed,
        "shifted_bpb": {},
        "worst_window_bpb": None,
    }  # no shifted scores in these hand-written results
    assert [(e["subnet"], e["adversary"]) for e in s["experts"]] == [
        ("english", None),
        ("code", None),
        ("code", "copycat"),
        ("code", "noise"),
    ]
    english = s["experts"][0]
    want = {"shifted_bpb": {}, "flags": [], "miner": "english"}
    want |= expert_result("english", 0, {"english": 2.0, "code": 3.0})
    assert english == {k: want.get(k) for k in english}
    mix = {"eval_bpb": {"english": 2.01, "code": 1.83, "all": 1.92}, "calls_per_byte": {}}
    assert s["mixture"] == {**mix, "shifted_bpb": {}, "worst_window_bpb": None, "routing": {}}
    assert json.loads(json.dumps(s)) == s  # what network.py writes to summary.json


def test_baselines_count_the_seed_once(run):
    """Each baseline's FLOPs are its own training plus the seed's, as the mixture's compute counts the seed."""
    s = build_summary(run.cfg, run.layout, 0.0)
    solo = {
        "eval_bpb": {"english": 2.2, "code": 2.2, "all": 2.2},
        "params": 1000,
        "train_flops": 3.0e9,
        "shifted_bpb": {},
        "worst_window_bpb": None,
    }
    assert s["solo_baseline"] == solo
    assert s["dense_baseline"]["train_flops"] == 5.0e9


def test_checks_of_a_good_run(run):
    """A mixture below every expert, within 2% of each specialist on its own subnet, and below solo passes every
    check; the gaps are the hand-computed ratios and differences."""
    c = build_summary(run.cfg, run.layout, 0.0)["checks"]
    assert c["mixture_beats_every_expert"] is True
    assert c["gap_to_specialist"] == {"english": round(2.01 / 2.0 - 1, 4), "code": round(1.83 / 1.8 - 1, 4)}
    assert c["within_2pct_of_specialists"] is True
    assert c["gap_to_solo"] == round(1.92 - 2.2, 4) and c["gap_to_dense"] == round(1.92 - 1.9, 4)
    assert c["mixture_beats_solo"] is True


def test_adversaries_are_left_out_of_honest_checks(run):
    """An adversary claiming a better score than the mixture neither fails mixture_beats_every_expert nor becomes
    the best single expert, and gets no gap to specialist."""
    write_json(run.layout.adversary("copycat") / RESULT, adversary_result("copycat", 3, {"code": 0.5, "all": 0.5}))
    s = build_summary(run.cfg, run.layout, 0.0)
    assert s["checks"]["mixture_beats_every_expert"] is True
    assert set(s["checks"]["gap_to_specialist"]) == {"english", "code"}
    assert s["best_single"] == {"eval_bpb": s["experts"][0]["eval_bpb"], "subnet": "english", "hotkey": HK["english"]}


def test_best_single_is_the_lowest_mean(run):
    """best_single is the honest expert with the lowest mean bits per byte over subnets (ties: the first)."""
    write_json(run.layout.expert("code") / RESULT, expert_result("code", 1, {"english": 2.4, "code": 1.5}))
    s = build_summary(run.cfg, run.layout, 0.0)
    assert s["best_single"]["subnet"] == "code" and s["best_single"]["hotkey"] == HK["code"]


def test_checks_fail_when_the_mixture_falls_behind(run):
    """A mixture above one expert's mean, more than 2% behind a specialist and above solo fails those checks."""
    write_json(run.layout.router / RESULT, {"eval_bpb": {"english": 2.1, "code": 2.9, "all": 2.5}})
    write_json(run.layout.expert("code") / RESULT, expert_result("code", 1, {"english": 3.0, "code": 1.8}))
    c = build_summary(run.cfg, run.layout, 0.0)["checks"]
    assert c["mixture_beats_every_expert"] is False  # code's expert averages 2.4 < 2.5
    assert c["gap_to_specialist"]["english"] == 0.05 and c["within_2pct_of_specialists"] is False
    assert c["mixture_beats_solo"] is False and c["gap_to_solo"] == 0.3


def test_partial_run_has_no_checks(tmp_path):
    """A run whose router and baselines never finished has an empty mixture, no baselines and no checks; one with
    no expert results has no best single expert."""
    cfg = RunConfig(subnets=["english", "code"], run_id="r2")
    layout = RunLayout.create(tmp_path, "r2")
    s = build_summary(cfg, layout, 0.0)
    assert s["experts"] == [] and s["best_single"] is None and s["mixture"]["eval_bpb"] == {}
    assert s["solo_baseline"] is None and s["dense_baseline"] is None and s["checks"] == {}
    write_json(layout.expert("code") / RESULT, expert_result("code", 1, {"english": 3.0, "code": 2.0}))
    s = build_summary(cfg, layout, 0.0)
    assert s["best_single"]["subnet"] == "code" and s["checks"] == {}
    assert "rewards" not in s and "contribution" not in s  # no validators, no validation part


def test_print_summary_shows_every_row(run):
    """The printed table has a row per expert (adversaries' unscored cells left blank), the seed, both baselines
    and the mixture, with bits per byte to three decimals, then the checks."""
    s = build_summary(run.cfg, run.layout, 0.0)
    console = Console(record=True, width=160, color_system=None)
    print_summary(s, console)
    text = console.export_text()
    for label in ("expert english", "expert code", "seed", "solo baseline", "dense baseline", "mixture"):
        assert label in text
    assert "2.010" in text and "1.830" in text and "1.920" in text
    assert "mixture_beats_every_expert: True" in text
    cells = lambda line: [c.strip() for c in line.replace("┃", "│").split("│")[1:-1]]
    header = cells(next(line for line in text.splitlines() if "model" in line))
    row = dict(zip(header, cells(next(line for line in text.splitlines() if "mixture" in line)), strict=True))
    assert row == {"model": "mixture", "english": "2.010", "code": "1.830", "all": "1.920"}
    noise = [cells(line) for line in text.splitlines() if "noise code" in line][-1]
    assert noise[1:] == ["", "", ""]  # an adversary's row, named by its attack: nothing scored


SEED_SHIFTED = {"english": 4.0, "code": 3.6, "all": 3.8}


def write_shifted(run: Run, mix_all: float = 2.9, mix_worst: float | None = 5.2, dense: tuple = (1.9, 2.8)) -> None:
    """Give the seed, both experts, the router and both baselines hand-picked shifted scores: the mixture's mean
    `mix_all` (english 3.1) with worst window `mix_worst`, solo at 3.3 on shifted text, dense at (eval, shifted)."""
    seed = {"eval_bpb": {"english": 3.0, "code": 3.0, "all": 3.0}, "train_steps": 30, "train_flops": 1.0e9}
    write_json(run.layout.seed / RESULT, {**seed, "shifted_bpb": SEED_SHIFTED, "worst_window_bpb": 7.5})
    for subnet, uid, bpb, shifted, worst in (
        ("english", 0, {"english": 2.0, "code": 3.0}, {"english": 3.0, "code": 4.2, "all": 3.6}, 6.8),
        ("code", 1, {"english": 3.2, "code": 1.8}, {"english": 4.4, "code": 2.6, "all": 3.5}, 6.9),
    ):
        r = expert_result(subnet, uid, bpb, shifted_bpb=shifted, worst_window_bpb=worst)
        write_json(run.layout.expert(subnet) / RESULT, r)
    router = {
        "eval_bpb": {"english": 2.01, "code": 1.83, "all": 1.92},
        "shifted_bpb": {"english": 3.1, "code": 2 * mix_all - 3.1, "all": mix_all},
        "worst_window_bpb": mix_worst,
        "calls_per_byte": {"eval": 2.25, "shifted": 2.5},
    }
    write_json(run.layout.router / RESULT, router)
    for kind, (ev, sh), flops in (("solo", (2.2, 3.3), 2.0e9), ("dense", dense, 4.0e9)):
        b = {
            "eval_bpb": {"english": ev, "code": ev, "all": ev},
            "shifted_bpb": {"english": sh, "code": sh, "all": sh},
            "worst_window_bpb": sh + 2.0,
            "params": 1000,
            "train_flops": flops,
        }
        write_json(run.layout.baseline(kind) / RESULT, b)


def test_summary_copies_shifted_scores(run):
    """Shifted bits per byte and worst windows of the seed, each expert, the mixture (with its calls per byte) and
    both baselines are copied as the results hold them."""
    write_shifted(run)
    s = build_summary(run.cfg, run.layout, 0.0)
    assert s["seed"]["shifted_bpb"] == SEED_SHIFTED and s["seed"]["worst_window_bpb"] == 7.5
    english, code = s["experts"][:2]
    assert english["shifted_bpb"] == {"english": 3.0, "code": 4.2, "all": 3.6} and english["worst_window_bpb"] == 6.8
    assert code["shifted_bpb"]["all"] == 3.5 and code["worst_window_bpb"] == 6.9
    assert all("shifted_bpb" not in e for e in s["experts"][2:])  # adversaries score nothing
    assert s["mixture"]["shifted_bpb"] == {"english": 3.1, "code": 2 * 2.9 - 3.1, "all": 2.9}
    assert s["mixture"]["worst_window_bpb"] == 5.2
    assert s["mixture"]["calls_per_byte"] == {"eval": 2.25, "shifted": 2.5}
    assert s["solo_baseline"]["shifted_bpb"]["all"] == 3.3 and s["solo_baseline"]["worst_window_bpb"] == 5.3
    assert s["dense_baseline"]["shifted_bpb"]["all"] == 2.8
    assert json.loads(json.dumps(s)) == s


def test_shifted_checks(run):
    """On shifted text the mixture beats seed and solo but not dense (gaps are the differences of the means), with
    no window above 6 bits; mixture_beats_dense compares the in-distribution means."""
    write_shifted(run)
    c = build_summary(run.cfg, run.layout, 0.0)["checks"]
    assert c["shifted_mixture_beats_seed"] is True and c["shifted_gap_to_seed"] == round(2.9 - 3.8, 4)
    assert c["shifted_mixture_beats_solo"] is True and c["shifted_gap_to_solo"] == round(2.9 - 3.3, 4)
    assert c["shifted_mixture_beats_dense"] is False and c["shifted_gap_to_dense"] == round(2.9 - 2.8, 4)
    assert c["shifted_no_window_above_6"] is True
    assert c["mixture_beats_dense"] is False  # 1.92 in distribution against dense's 1.9


def test_shifted_checks_flip(run):
    """A mixture above the seed on shifted text with a 6.5-bit window fails those checks, while one below dense in
    and out of distribution passes theirs; a worst window of exactly 6 bits is allowed."""
    write_shifted(run, mix_all=3.9, mix_worst=6.5, dense=(2.0, 4.0))
    c = build_summary(run.cfg, run.layout, 0.0)["checks"]
    assert c["shifted_mixture_beats_seed"] is False and c["shifted_gap_to_seed"] == round(3.9 - 3.8, 4)
    assert c["shifted_mixture_beats_solo"] is False
    assert c["shifted_mixture_beats_dense"] is True and c["shifted_gap_to_dense"] == round(3.9 - 4.0, 4)
    assert c["shifted_no_window_above_6"] is False
    assert c["mixture_beats_dense"] is True and c["gap_to_dense"] == round(1.92 - 2.0, 4)
    write_shifted(run, mix_worst=6.0)
    assert build_summary(run.cfg, run.layout, 0.0)["checks"]["shifted_no_window_above_6"] is True


def test_shifted_checks_need_shifted_scores(run):
    """Without shifted scores for the mixture there is no shifted check; a baseline or worst window without them
    gets none of its own."""
    assert not any(k.startswith("shifted") for k in build_summary(run.cfg, run.layout, 0.0)["checks"])
    write_shifted(run, mix_worst=None)
    b = json.loads((run.layout.baseline("solo") / RESULT).read_text())
    write_json(run.layout.baseline("solo") / RESULT, {k: v for k, v in b.items() if k != "shifted_bpb"})
    c = build_summary(run.cfg, run.layout, 0.0)["checks"]
    assert "shifted_mixture_beats_solo" not in c and "shifted_gap_to_solo" not in c
    assert "shifted_no_window_above_6" not in c
    assert c["shifted_mixture_beats_seed"] is True and c["shifted_mixture_beats_dense"] is False


def test_print_summary_shows_shifted_table(run):
    """With shifted scores a second table, titled for shifted text, lists every model with a worst-window column,
    and the mixture's expert calls per byte are printed."""
    write_shifted(run)
    s = build_summary(run.cfg, run.layout, 0.0)
    console = Console(record=True, width=160, color_system=None)
    print_summary(s, console)
    lines = console.export_text().splitlines()
    start = next(i for i, line in enumerate(lines) if "shifted" in line and "bits per byte" in line)
    assert not any("worst window" in line for line in lines[:start])  # the held-out table has no such column
    cells = lambda line: [c.strip() for c in line.replace("┃", "│").split("│")[1:-1]]
    table = lines[start:]
    header = cells(next(line for line in table if "model" in line))
    assert header[0] == "model" and header[-1] == "worst window" and set(header[1:-1]) == {"english", "code", "all"}
    rows = {r[0]: dict(zip(header, r, strict=True)) for r in map(cells, table) if len(r) == len(header)}
    assert rows["mixture"] == {"model": "mixture", "english": "3.100", "code": "2.700", "all": "2.900",
                               "worst window": "5.20"}  # fmt: skip
    assert rows["seed"]["all"] == "3.800" and rows["seed"]["worst window"] == "7.50"
    assert rows["expert english"]["worst window"] == "6.80" and rows["dense baseline"]["all"] == "2.800"
    assert rows["noise code"]["all"] == "" and rows["noise code"]["worst window"] == ""
    assert any("mixture expert calls per byte: eval 2.25, shifted 2.50" in line for line in lines)
    assert any("shifted_no_window_above_6: True" in line for line in lines)
