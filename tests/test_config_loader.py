"""Tests for moe/config_loader.py and moe/roles/run_config.py: YAML + key=value into dataclasses, errors by key."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from moe.config_loader import ConfigError, build, load_yaml, parse_args, to_dict
from moe.net.client import ClientConfig
from moe.roles.run_config import RunConfig
from moe.routing.remote import RouterConfig
from moe.training.loop import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Inner:
    n: int = 1
    """An int."""
    lr: float = 0.1
    """A float."""
    flag: bool = False
    """A bool."""
    name: str = "x"
    """A string."""


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    """A section."""
    peers: list[str] = field(default_factory=list)
    """A list of strings."""
    sizes: list[int] = field(default_factory=list)
    """A list of ints."""
    limit: int | None = None
    """An optional int."""


@dataclass
class Mid:
    inner: Inner = field(default_factory=lambda: Inner(n=7, name="mid"))
    """A section whose own default differs from Inner's class defaults."""
    k: int = 0
    """An int."""


@dataclass
class Deep:
    mid: Mid = field(default_factory=lambda: Mid(inner=Inner(n=9, lr=0.5), k=3))
    """A section of a section, each level with a non-class default."""


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_defaults_without_arguments():
    """No arguments give the dataclass defaults."""
    assert parse_args(Outer, []) == Outer()


def test_nested_override_and_coercion():
    """Dotted overrides reach nested fields and coerce int, float and bool text."""
    cfg = parse_args(Outer, ["inner.n=3", "inner.lr=1e-3", "inner.flag=true", "limit=7"])
    assert (cfg.inner.n, cfg.inner.lr, cfg.inner.flag, cfg.limit) == (3, 1e-3, True, 7)
    assert isinstance(cfg.inner.lr, float)
    assert parse_args(Outer, ["inner.flag=no"]).inner.flag is False
    assert parse_args(Outer, ["inner.lr=2"]).inner.lr == 2.0


def test_list_parsing():
    """`a,b` and `[a, b]` both give lists, an empty value gives [], and list items are coerced."""
    assert parse_args(Outer, ["peers=a,b"]).peers == ["a", "b"]
    assert parse_args(Outer, ["peers=[a, b]"]).peers == ["a", "b"]
    assert parse_args(Outer, ["peers="]).peers == []
    assert parse_args(Outer, ["sizes=1,2,3"]).sizes == [1, 2, 3]
    multiaddrs = "/ip4/10.0.0.1/tcp/31337/p2p/QmA,/ip6/::1/tcp/5/p2p/QmB"
    assert parse_args(Outer, [f"peers={multiaddrs}"]).peers == multiaddrs.split(",")
    with pytest.raises(ConfigError, match=r"sizes\[1\]"):
        parse_args(Outer, ["sizes=1,x"])


def test_string_fields_keep_raw_text():
    """A string override keeps its text verbatim, even where YAML would read a number (octal, hex, 2024.10)."""
    for text in ("0123", "0x1f", "2024.10", "#tag", "true", "null"):
        assert parse_args(Outer, [f"inner.name={text}"]).inner.name == text


def test_unknown_key_names_dotted_key():
    """An unknown key, nested or not, is a ConfigError naming the full dotted key."""
    with pytest.raises(ConfigError, match=r"'inner\.nn'"):
        parse_args(Outer, ["inner.nn=3"])
    with pytest.raises(ConfigError, match=r"'bogus'"):
        parse_args(Outer, ["bogus=1"])


@pytest.mark.parametrize(
    "arg, key",
    [
        ("inner.n=abc", "inner.n"),
        ("inner.n=1.5", "inner.n"),
        ("inner.n=true", "inner.n"),
        ("inner.lr=fast", "inner.lr"),
        ("inner.flag=maybe", "inner.flag"),
        ("inner=3", "inner"),
        ("limit=x", "limit"),
    ],
)
def test_wrong_type_names_dotted_key(arg, key):
    """A value of the wrong type (no lossless conversion) is a ConfigError starting with the dotted key."""
    with pytest.raises(ConfigError) as e:
        parse_args(Outer, [arg])
    assert str(e.value).startswith(f"{key}:")


def test_null_only_for_optional():
    """null is accepted by an optional field and rejected by a required one."""
    assert parse_args(Outer, ["limit=null"]).limit is None
    with pytest.raises(ConfigError, match="inner.n"):
        build(Outer, {"inner": {"n": None}})


def test_later_files_and_overrides_win(tmp_path):
    """Files merge section by section in order, and key=value overrides beat every file, in order too."""
    a = write(tmp_path / "a.yaml", "inner:\n  n: 2\n  lr: 0.5\npeers: [p]\n")
    b = write(tmp_path / "b.yml", "inner:\n  n: 3\n")
    cfg = parse_args(Outer, [a, b])
    assert (cfg.inner.n, cfg.inner.lr, cfg.peers) == (3, 0.5, ["p"])
    cfg = parse_args(Outer, ["inner.n=9", a, "inner.n=4", "inner.n=5"])
    assert cfg.inner.n == 5
    cfg = parse_args(Outer, [a, "inner={flag: true}"])  # a mapping override merges like a file
    assert (cfg.inner.n, cfg.inner.lr, cfg.inner.flag) == (2, 0.5, True)


def test_invalid_yaml_is_one_line_error(tmp_path):
    """A file that is not YAML, not a mapping, or missing is a one-line ConfigError naming the file."""
    bad = write(tmp_path / "bad.yaml", "inner: [1, 2\n  n: :\n")
    for path, fragment in (
        (bad, "not valid YAML"),
        (write(tmp_path / "list.yaml", "- 1\n- 2\n"), "mapping"),
        (str(tmp_path / "missing.yaml"), "not found"),
    ):
        with pytest.raises(ConfigError) as e:
            parse_args(Outer, [path])
        assert fragment in str(e.value) and path in str(e.value)
        assert "\n" not in str(e.value)
    assert load_yaml(write(tmp_path / "empty.yaml", "")) == {}


def test_yaml_unsafe_tags_rejected(tmp_path):
    """YAML object tags are not constructed: loading stays safe_load."""
    path = write(tmp_path / "evil.yaml", "inner: !!python/object/apply:os.system [echo hacked]\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(path)


def test_malformed_arguments():
    """An argument that is neither a .yaml file nor key=value, or has an empty key, is a ConfigError."""
    with pytest.raises(ConfigError, match="unexpected argument"):
        parse_args(Outer, ["config.json"])
    with pytest.raises(ConfigError, match="malformed"):
        parse_args(Outer, ["=3"])
    with pytest.raises(ConfigError, match="peers"):
        parse_args(Outer, ["peers=a", "peers.x=1"])


def test_run_config_validation_and_round_trip():
    """RunConfig's own checks (role, d_model % n_heads) surface as ConfigErrors; to_dict rebuilds the same config."""
    with pytest.raises(ConfigError, match="role"):
        parse_args(RunConfig, ["role=miner"])
    with pytest.raises(ConfigError, match="subnet"):
        parse_args(RunConfig, ["role=expert"])
    with pytest.raises(ConfigError, match="model: d_model=30 is not divisible"):
        parse_args(RunConfig, ["model.d_model=30"])
    cfg = parse_args(RunConfig, [str(ROOT / "configs" / "tiny.yaml"), "router.k_best=3", "initial_peers=a,b"])
    assert cfg.router.k_best == 3 and cfg.initial_peers == ["a", "b"] and cfg.model.d_model == 32
    assert build(RunConfig, to_dict(cfg)) == cfg


def test_shipped_configs_parse():
    """Every YAML file in configs/ builds a RunConfig."""
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        assert isinstance(parse_args(RunConfig, [str(path)]), RunConfig)


def run_train(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_train_py_rejects_typo_before_work(tmp_path):
    """`python train.py router.kbest=3` exits 2 with one stderr line naming router.kbest and creates no run dir."""
    out = tmp_path / "runs"
    proc = run_train(["router.kbest=3", f"out_dir={out}"])
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "router.kbest" in lines[0], proc.stderr
    assert not out.exists()


def test_train_py_rejects_bad_yaml_before_work(tmp_path):
    """A broken YAML file given to train.py is a one-line error with exit code 2 and no run dir."""
    bad = write(tmp_path / "bad.yaml", "router: {k_best: [\n")
    proc = run_train([bad, f"out_dir={tmp_path / 'runs'}"])
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "bad.yaml" in proc.stderr
    assert not (tmp_path / "runs").exists()


SEED_DEFAULTS = RunConfig().seed_train


def test_partial_section_keeps_the_fields_default_not_the_class_default(tmp_path):
    """Naming one field of seed_train (CLI or YAML) keeps its other fields at seed_train's default (700 steps,
    lr 3e-3), not TrainConfig's class defaults (400 steps, lr 2e-3); expert_train keeps its own (300 steps)."""
    assert (SEED_DEFAULTS.steps, SEED_DEFAULTS.lr) == (700, 3e-3)
    assert (TrainConfig().steps, TrainConfig().lr) == (400, 2e-3)  # else this test proves nothing
    from_cli = parse_args(RunConfig, ["seed_train.cpu_threads=2"])
    from_yaml = parse_args(RunConfig, [write(tmp_path / "a.yaml", "seed_train:\n  cpu_threads: 2\n")])
    from_mapping = parse_args(RunConfig, ["seed_train={cpu_threads: 2}"])
    for cfg in (from_cli, from_yaml, from_mapping):
        assert cfg.seed_train == TrainConfig(**{**vars(SEED_DEFAULTS), "cpu_threads": 2})
        assert cfg.expert_train == TrainConfig(steps=300)


def test_shipped_tiny_config_keeps_the_seeds_learning_rate():
    """configs/tiny.yaml sets some seed_train fields and not lr, so the tiny seed trains at seed_train's lr."""
    cfg = parse_args(RunConfig, [str(ROOT / "configs" / "tiny.yaml")])
    assert cfg.seed_train.steps == 30 and cfg.seed_train.lr == SEED_DEFAULTS.lr
    assert cfg.seed_train.warmup_steps == 5 and cfg.seed_train.grad_clip == SEED_DEFAULTS.grad_clip


def test_deep_override_keeps_every_level_default():
    """`router.client.wire_format=fp32` changes that one field and keeps the router's and the client's defaults."""
    cfg = parse_args(RunConfig, ["router.client.wire_format=fp32"])
    assert cfg.router == RouterConfig(client=ClientConfig(wire_format="fp32"))
    assert cfg == parse_args(RunConfig, ["router={client: {wire_format: fp32}}"])
    deep = parse_args(Deep, ["mid.inner.flag=true"])
    assert deep == Deep(mid=Mid(inner=Inner(n=9, lr=0.5, flag=True), k=3))
    assert parse_args(Deep, ["mid.k=4"]) == Deep(mid=Mid(inner=Inner(n=9, lr=0.5), k=4))


def test_later_yaml_merges_into_earlier_at_every_depth(tmp_path):
    """A later file changes only the fields it names, however deep; the earlier file's other fields and the
    remaining defaults survive, and key=value still wins over both."""
    a = write(tmp_path / "a.yaml", "seed_train:\n  steps: 50\nrouter:\n  k_best: 3\n  client:\n    k_min: 1\n")
    b = write(tmp_path / "b.yaml", "seed_train:\n  cpu_threads: 2\nrouter:\n  client:\n    wire_format: fp16\n")
    cfg = parse_args(RunConfig, [a, b, "router.client.k_min=2"])
    assert cfg.seed_train == TrainConfig(**{**vars(SEED_DEFAULTS), "steps": 50, "cpu_threads": 2})
    assert cfg.router == RouterConfig(k_best=3, client=ClientConfig(k_min=2, wire_format="fp16"))
    c = write(tmp_path / "c.yaml", "mid:\n  inner:\n    name: c\n")
    d = write(tmp_path / "d.yaml", "mid:\n  k: 5\n  inner:\n    lr: 0.25\n")
    assert parse_args(Deep, [c, d]) == Deep(mid=Mid(inner=Inner(n=9, lr=0.25, name="c"), k=5))
