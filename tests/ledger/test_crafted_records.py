"""Crafted records and blocks never crash the ledger: `submit` refuses them, `verify_ledger` names the bad block.

Every signed kind is attacked field by field with wrong types (bool or float for an int, a string for a list),
non-finite and huge numbers, 100000-deep lists, missing and extra keys, both as sent and re-signed by the acting
key (so the forgery also reaches the checks behind the signature). Stored blocks are forged the same way, with
their hashes recomputed, as someone who controls the file would. A seeded random-mutation fuzz closes the file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import shutil
import sqlite3
from pathlib import Path

import pytest

from moe.identity import Hotkey
from moe.ledger.chain import Ledger, LedgerError, block_hash_from_json, genesis_block
from moe.ledger.records import (
    distill_record,
    registration_record,
    signing_bytes,
    stake_record,
    transfer_record,
    weights_record,
)
from moe.ledger.verify import VerifyReport, verify_ledger
from moe.ledger.weights import WeightSubmission

TAO = 10**9
DEPTH = 100_000
SIGNER = {"register": 6, "stake": 2, "transfer": 3, "weights": 0, "distill": 5}
"""Index in `keys` of the hotkey that signs each kind's valid record."""


def nested(depth: int = DEPTH) -> list:
    """[[[...]]] `depth` lists deep: too deep for any recursive encoder or decoder."""
    x: list = []
    for _ in range(depth):
        x = [x]
    return x


def crafted_values(valid: object) -> dict[str, object]:
    """Wrong values for a field whose valid value is `valid`, by name."""
    out: dict[str, object] = {
        "none": None,
        "infinity": math.inf,
        "nan": math.nan,
        "huge_int": 10**400,
        "negative_huge_int": -(10**400),
        "deep_list": nested(),
        "object": {"a": 1},
    }
    if type(valid) is int:
        out |= {"float_for_int": float(valid), "string_for_int": str(valid), "list_for_int": [valid]}
        out |= {"bool_for_int": bool(valid) if valid in (0, 1) else True, "negative": -1}
    if type(valid) is str:
        out |= {"int_for_string": 5, "list_for_string": [valid], "uppercase": valid.upper(), "truncated": valid[:-2]}
    if type(valid) is list:
        out |= {
            "string_for_list": json.dumps(valid),
            "digits_for_list": "".join(str(v) for v in valid),
            "object_for_list": {str(v): v for v in valid},
            "bools_in_list": [True for _ in valid],
            "huge_in_list": [10**400 for _ in valid],
            "deep_in_list": [nested() for _ in valid],
            "empty_list": [],
        }
        if all(type(v) is int for v in valid):
            out["floats_in_list"] = [float(v) for v in valid]
    return out


def resign(record: dict, key: Hotkey) -> dict:
    """`record` signed anew by `key`, so a forgery is not stopped by its signature alone; unsignable ones as is."""
    try:
        record["signature"] = key.sign(signing_bytes(record)).hex()
    except Exception:  # whatever signing_bytes raises on it, the forgery then goes out with its old signature
        pass
    return record


def valid_records(led: Ledger, keys: list[Hotkey], block_hash: str | None = None) -> dict[str, dict]:
    """One valid signed record of each kind for `led`'s next block (none of them submitted); the registration
    names `block_hash` (default: the head's)."""
    sub = WeightSubmission.create(keys[SIGNER["weights"]], 1, led.current_epoch, [2, 3], [1.0, 2.0])
    block_hash = led.head_hash if block_hash is None else block_hash
    return {
        "register": registration_record(keys[SIGNER["register"]], 1, block_hash, burn=2 * TAO),
        "stake": stake_record(keys[SIGNER["stake"]], 5 * TAO, nonce=0),
        "transfer": transfer_record(keys[SIGNER["transfer"]], keys[4].address, TAO, nonce=0),
        "weights": weights_record(sub),
        "distill": distill_record(keys[SIGNER["distill"]], 1, {keys[2].address: 10}, {keys[2].address: 6.5}),
    }


def crafted_records(base: dict, key: Hotkey) -> list[tuple[str, object]]:
    """(name, record) for every crafted variant of the valid signed record `base`, as sent and re-signed by `key`."""
    out: list[tuple[str, object]] = []
    for field, valid in base.items():
        for name, value in crafted_values(valid).items():
            out.append((f"{field}={name}", {**base, field: value}))
            if field != "signature":
                out.append((f"{field}={name} re-signed", resign({**base, field: value}, key)))
        missing = {k: v for k, v in base.items() if k != field}
        out.append((f"missing {field}", missing if field == "signature" else resign(missing, key)))
    out.append(("extra key", {**base, "extra": 1}))
    out.append(("extra key re-signed", resign({**base, "extra": 1}, key)))
    return out


def snapshot(led: Ledger) -> dict:
    """What a rejected record must not change: the committed state and the head."""
    st = led.state
    return {
        "head": (led.height, led.head_hash),
        "balances": dict(st.balances),
        "stakes": dict(st.stakes),
        "nonces": dict(st.nonces),
        "uids": {n: dict(s.registry._by_hotkey) for n, s in st.subnets.items()},
        "weights": {n: dict(s.weights) for n, s in st.subnets.items()},
    }


def network(led: Ledger, keys: list[Hotkey]) -> None:
    """Register keys 0..5 on netuid 1 (blocks 1) and stake keys 0 and 1 as validators (block 2)."""
    for k in keys[:6]:
        assert led.register(k, 1)
    led.produce_block(1001.0)
    for k in keys[:2]:
        assert led.add_stake(k, 100 * TAO)
    led.produce_block(1002.0)


@pytest.fixture
def led(tmp_path, keys, genesis):
    """A live ledger at height 2 with six registered uids and two staked validators."""
    ledger = Ledger.open(tmp_path / "live.db", genesis)
    network(ledger, keys)
    yield ledger
    ledger.close()


def assert_all_refused(led: Ledger, keys: list[Hotkey], attacks: list[tuple[str, object]], caplog) -> None:
    """Each attack is refused with one warning line and changes nothing; an honest record queued first survives."""
    honest = transfer_record(keys[5], keys[4].address, 7, nonce=0)
    assert led.submit(honest)
    before = snapshot(led)
    for name, attack in attacks:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="moe.ledger"):
            accepted = led.submit(attack)
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert accepted is False, f"{name} was accepted"
        assert len(warnings) == 1 and "rejected" in warnings[0] and "\n" not in warnings[0], (name, warnings)
        assert snapshot(led) == before, f"{name} changed the state"
    blk = led.produce_block(1003.0)
    assert blk.records[0] == honest and blk.height == 3
    assert verify_ledger(led.path).ok


def test_valid_records_are_accepted(led, keys):
    """Control: the valid record of each kind that the attacks start from is accepted and verifies."""
    records = valid_records(led, keys)
    for record in records.values():
        assert led.submit(record)
    assert led.produce_block(1003.0).records[: len(records)] == list(records.values())
    assert verify_ledger(led.path).ok


@pytest.mark.parametrize("kind", sorted(SIGNER))
def test_crafted_signed_records_are_refused(led, keys, kind, caplog):
    """Every wrong-typed, non-finite, huge, deep, missing or extra field of a signed record is a clean rejection."""
    attacks = crafted_records(valid_records(led, keys)[kind], keys[SIGNER[kind]])
    assert_all_refused(led, keys, attacks, caplog)


NOT_RECORDS = {
    "list": [1, 2],
    "string": "stake",
    "int": 5,
    "none": None,
    "deep_list": nested(),
    "deep_object": {"kind": "stake", "amount": nested()},
    "kind_is_list": {"kind": ["stake"]},
    "kind_is_object": {"kind": {"stake": 1}},
    "kind_is_none": {"kind": None},
    "int_key": {1: 2},
    "mixed_keys": {1: 2, "kind": "stake"},
    "genesis": {"kind": "genesis", "chain_id": "x", "config": {}, "balances": {}, "stakes": {}},
    "emission": {"kind": "emission", "minted": 1, "subnets": {}},
    "epoch": {"kind": "epoch"},
    "unknown_kind": {"kind": "mint", "amount": 5},
    "object_value": {"kind": "stake", "amount": object()},
}


def test_things_that_are_not_signed_records_are_refused(led, keys, caplog):
    """Non-objects, unhashable or unknown kinds, non-JSON values and derived kinds are refused, never raised."""
    assert_all_refused(led, keys, list(NOT_RECORDS.items()), caplog)


def crafted_submissions(keys: list[Hotkey], epoch: int) -> list[tuple[str, WeightSubmission]]:
    """WeightSubmission objects with wrong-typed fields, as a careless or hostile caller might build them."""
    good = WeightSubmission.create(keys[0], 1, epoch, [2, 3], [1.0, 2.0])
    out = []
    for field in ("netuid", "epoch", "validator", "uids", "weights", "signature"):
        for name, value in crafted_values(getattr(good, field)).items():
            sub = WeightSubmission(**{**vars(good), field: value})
            out.append((f"{field}={name}", sub))
    return out


def test_crafted_weight_submission_objects_are_refused(led, keys, caplog):
    """A WeightSubmission object with an infinite, string, float or deep field is refused, not raised."""
    assert_all_refused(led, keys, crafted_submissions(keys, led.current_epoch), caplog)


# ---- forged files -----------------------------------------------------------------------------------------------


@pytest.fixture
def chain(tmp_path, keys, genesis) -> Path:
    """A 13-block file: epochs end at blocks 3, 7 and 11; block 12 holds one valid record of each signed kind
    (the registration names block 10, so forging block 11 leaves block 12 valid)."""
    path = tmp_path / "chain.db"
    with Ledger.open(path, genesis) as ledger:
        network(ledger, keys)
        for k in keys[:2]:
            assert ledger.set_weights(k, 1, [2, 3, 4], [1.0, 2.0, 3.0])
        t = 1003.0
        while ledger.height < 11:
            ledger.produce_block(t)
            t += 1
        block_10 = next(ledger.blocks(10)).hash
        for record in valid_records(ledger, keys, block_10).values():
            assert ledger.submit(record)
        ledger.produce_block(t)
    return path


def stored_records(path: Path, height: int) -> list:
    conn = sqlite3.connect(path)
    try:
        return json.loads(conn.execute("SELECT records FROM blocks WHERE height=?", (height,)).fetchone()[0])
    finally:
        conn.close()


def forge(path: Path, height: int, records_text: str) -> None:
    """Store `records_text` as block `height`'s records and re-hash it and every later block, as a forger would."""
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT height, prev_hash, timestamp, records FROM blocks WHERE height >= ? ORDER BY height", (height,)
        ).fetchall()
        prev = rows[0][1]
        for h, _, ts, text in rows:
            text = records_text if h == height else text
            new = block_hash_from_json(h, prev, ts, text.encode())
            conn.execute("UPDATE blocks SET prev_hash=?, hash=?, records=? WHERE height=?", (prev, new, text, h))
            prev = new
        conn.commit()
    finally:
        conn.close()


def assert_named(report: VerifyReport, height: int, name: str) -> None:
    """`report` names block `height` as bad, for its own reason (not the accounts table), in one line."""
    assert isinstance(report, VerifyReport), name
    assert not report.ok, f"{name}: forged block {height} verified"
    assert report.bad_height == height, f"{name}: {report}"
    assert "accounts table" not in report.reason and "\n" not in report.reason, f"{name}: {report}"


def assert_forgeries_named(chain: Path, tmp_path: Path, height: int, forgeries: list[tuple[str, str]]) -> None:
    """Each (name, records text) stored as block `height` makes verify name that block and open refuse the file."""
    for i, (name, text) in enumerate(forgeries):
        path = tmp_path / f"forged{i}.db"
        shutil.copy(chain, path)
        forge(path, height, text)
        assert_named(verify_ledger(path), height, name)
        with pytest.raises(LedgerError):
            Ledger.open(path).close()


def test_valid_chain_verifies(chain):
    """Control: the file the forgeries start from verifies."""
    r = verify_ledger(chain)
    assert r.ok and r.blocks == 13


RAW_TEXTS = {
    "infinity": "[Infinity]",
    "negative_infinity": "[-Infinity]",
    "nan": "[NaN]",
    "overflowing_float": '[{"kind":"stake","amount":1e400}]',
    "five_thousand_digits": "[" + "9" * 5000 + "]",
    "deep_list": "[" * DEPTH + "]" * DEPTH,
    "deep_object": '[{"a":' * DEPTH + "1" + "}]" * DEPTH,
    "not_json": "[1,",
    "empty": "",
    "object": '{"kind":"emission"}',
    "duplicate_keys": '[{"kind":"emission","kind":"epoch"}]',
}


@pytest.mark.parametrize("height", [12, 2])
def test_unparseable_block_text_is_named(chain, tmp_path, height):
    """Records text with NaN/Infinity, 1e400, 5000-digit or 100000-deep values, or no JSON list names the block."""
    assert_forgeries_named(chain, tmp_path, height, list(RAW_TEXTS.items()))


@pytest.mark.parametrize("kind", sorted(SIGNER))
def test_crafted_signed_record_in_a_block_is_named(chain, tmp_path, keys, kind):
    """A block holding any crafted variant of a signed record, re-hashed, is named by verify and refused by open."""
    records = stored_records(chain, 12)
    index = next(i for i, r in enumerate(records) if r["kind"] == kind)
    forgeries = []
    for name, attack in crafted_records(records[index], keys[SIGNER[kind]]):
        if "deep" not in name:  # json.dumps itself cannot write those; RAW_TEXTS stores such text directly
            forgeries.append((name, json.dumps(records[:index] + [attack] + records[index + 1 :])))
    assert_forgeries_named(chain, tmp_path, 12, forgeries)


def derived_forgeries(valid: dict) -> list[tuple[str, dict]]:
    """Every field of a derived record replaced by a crafted value (or dropped), and an extra key added."""
    out = []
    for field, value in valid.items():
        for name, bad in crafted_values(value).items():
            if "deep" not in name:
                out.append((f"{field}={name}", {**valid, field: bad}))
        out.append((f"missing {field}", {k: v for k, v in valid.items() if k != field}))
    out.append(("extra key", {**valid, "extra": 1}))
    return out


@pytest.mark.parametrize("kind,height", [("emission", 12), ("epoch", 11)])
def test_crafted_derived_record_is_named(chain, tmp_path, kind, height):
    """An emission or epoch record with a float, bool, string, huge or missing field names its block."""
    records = stored_records(chain, height)
    index = next(i for i, r in enumerate(records) if r["kind"] == kind)
    forgeries = []
    for name, attack in derived_forgeries(records[index]):
        forged = records[:index] + [attack] + records[index + 1 :]
        forgeries.append((name, json.dumps(forged)))
    assert_forgeries_named(chain, tmp_path, height, forgeries)


def genesis_forgeries(valid: dict) -> list[tuple[str, dict]]:
    """Genesis records with wrong-typed, out-of-range or extra config values and allocations."""
    cfg, addr = valid["config"], next(iter(valid["balances"]))
    out = derived_forgeries(valid)
    out = [(n, r) for n, r in out if n not in ("chain_id=uppercase", "chain_id=truncated")]  # other valid names
    for field, value in cfg.items():
        for name, bad in crafted_values(value).items():
            if "deep" not in name:
                out.append((f"config {field}={name}", {**valid, "config": {**cfg, field: bad}}))
    for name, bad in crafted_values(valid["balances"][addr]).items():
        if "deep" not in name:
            out.append((f"balance={name}", {**valid, "balances": {**valid["balances"], addr: bad}}))
    out += [
        ("zero subnet shares", {**valid, "config": {**cfg, "subnet_shares": {"1": 0.0}}}),
        ("padded netuid", {**valid, "config": {**cfg, "subnet_shares": {"01": 1.0}}}),
        ("zero difficulty", {**valid, "config": {**cfg, "initial_difficulty": 0, "min_difficulty": 0}}),
        ("zero target", {**valid, "config": {**cfg, "target_registrations": 0}}),
        ("4097 uids", {**valid, "config": {**cfg, "max_uids": 4097}}),
        ("over the supply cap", {**valid, "balances": {addr: 21 * 10**15, "cd" * 32: 10**9}}),
        ("uppercase address", {**valid, "balances": {addr.upper(): 1}}),
        ("extra config key", {**valid, "config": {**cfg, "extra": 1}}),
    ]
    return out


def test_crafted_genesis_is_named(tmp_path, genesis):
    """A genesis record with a float tempo, infinite shares, a bool balance or an extra key names block 0."""
    chain = tmp_path / "genesis.db"
    Ledger.open(chain, genesis).close()
    (valid,) = stored_records(chain, 0)
    forgeries = [(name, json.dumps([g])) for name, g in genesis_forgeries(valid)]
    assert_forgeries_named(chain, tmp_path, 0, forgeries)


@pytest.mark.parametrize("column,value", [("timestamp", math.inf), ("timestamp", -math.inf), ("hash", 5)])
def test_crafted_block_header_is_named(chain, column, value):
    """An infinite timestamp or a non-text hash in the head block is named, not raised."""
    conn = sqlite3.connect(chain)
    with conn:
        conn.execute(f"UPDATE blocks SET {column}=? WHERE height=12", (value,))
    conn.close()
    assert_named(verify_ledger(chain), 12, f"{column}={value}")
    with pytest.raises(LedgerError):
        Ledger.open(chain).close()


# ---- genesis pinning --------------------------------------------------------------------------------------------


def test_pinned_genesis_accepts_its_own_chain(chain, genesis):
    """verify and open accept the file when pinned to its genesis config or its genesis block hash."""
    pin = genesis_block(genesis).hash
    assert verify_ledger(chain, genesis=genesis).ok and verify_ledger(chain, genesis_hash=pin).ok
    with Ledger.open(chain, genesis, genesis_hash=pin) as ledger:
        assert ledger.height == 12
    later = dataclasses.replace(genesis, timestamp=genesis.timestamp + 1)  # rebuilt at a later start
    with Ledger.open(chain, later) as ledger:
        assert ledger.height == 12


def test_other_genesis_is_caught_by_the_pin(tmp_path, keys, genesis):
    """A valid chain grown from a richer genesis verifies on its own, but is refused when pinned to the real one."""
    rich = dataclasses.replace(genesis, balances={**genesis.balances, keys[7].address: 10**6 * TAO})
    path = tmp_path / "rich.db"
    with Ledger.open(path, rich) as ledger:
        network(ledger, keys)
    assert verify_ledger(path).ok  # nothing inside the file can tell: the pin must come from outside
    for report in (
        verify_ledger(path, genesis=genesis),
        verify_ledger(path, genesis_hash=genesis_block(genesis).hash),
    ):
        assert_named(report, 0, "rich genesis")
        assert "genesis" in report.reason
    with pytest.raises(LedgerError, match="different genesis"):
        Ledger.open(path, genesis)
    with pytest.raises(LedgerError, match="different genesis"):
        Ledger.open(path, genesis_hash=genesis_block(genesis).hash)
    with pytest.raises(LedgerError, match="pinned hash"):
        Ledger.open(tmp_path / "new.db", rich, genesis_hash=genesis_block(genesis).hash)


def test_crafted_genesis_edit_is_named(chain):
    """Editing the stored genesis record without re-hashing (a rich allocation) names block 0 even unpinned."""
    (g,) = stored_records(chain, 0)
    g["balances"][next(iter(g["balances"]))] += 10**6 * TAO
    conn = sqlite3.connect(chain)
    with conn:
        conn.execute("UPDATE blocks SET records=? WHERE height=0", (json.dumps([g]),))
    conn.close()
    assert_named(verify_ledger(chain), 0, "edited genesis")
    with pytest.raises(LedgerError):
        Ledger.open(chain).close()


@pytest.mark.parametrize("row", [(b"\x00" * 32, 1, 1), ("ab" * 32, 1.5, 0), ("ab" * 32, "1", 0)])
def test_crafted_accounts_row_is_named(chain, row):
    """An accounts row with a blob address or a non-integer balance is reported against the head, not raised."""
    conn = sqlite3.connect(chain)
    with conn:
        conn.execute("INSERT INTO accounts (address, balance, stake) VALUES (?, ?, ?)", row)
    conn.close()
    report = verify_ledger(chain)
    assert not report.ok and report.bad_height == 12 and "accounts table" in report.reason


# ---- fuzz -------------------------------------------------------------------------------------------------------


def mutate(rng: random.Random, record: dict, keys: list[Hotkey]) -> object:
    """One random mutation of a copy of `record`: a field crafted, dropped or added, the kind swapped, or worse."""
    rec = json.loads(json.dumps(record))
    field = rng.choice(sorted(rec))
    op = rng.randrange(6)
    if op == 0:
        rec[field] = rng.choice(list(crafted_values(rec[field]).values()))
    elif op == 1:
        del rec[field]
    elif op == 2:
        rec[rng.choice(["extra", "kind2", field.upper()])] = rng.choice([1, "x", None, [1], {"a": 1}])
    elif op == 3:
        rec["kind"] = rng.choice(["register", "stake", "transfer", "weights", "genesis", "epoch", "emission"])
    elif op == 4:
        rec[field] = rng.choice([0, 1, 2, 2**16, 2**64, -(2**63), 10**9, "00" * 32, keys[rng.randrange(8)].address])
    else:
        return rng.choice([[rec], {"kind": rec}, nested(rng.randrange(1, DEPTH)), rec.get(field)])
    if rng.random() < 0.5:
        resign(rec, keys[rng.randrange(8)])
    return rec


def test_random_mutations_never_crash(led, keys):
    """300 seeded random mutations of valid records: no exception escapes, blocks keep coming, the file verifies."""
    rng = random.Random(0)
    honest = transfer_record(keys[5], keys[4].address, 7, nonce=0)
    assert led.submit(honest)
    t = 1003.0
    for i in range(300):
        bases = list(valid_records(led, keys).values())
        result = led.submit(mutate(rng, rng.choice(bases), keys))
        assert isinstance(result, bool)
        if i % 25 == 24:
            height = led.height
            blk = led.produce_block(t)
            t += 1
            assert blk.height == height + 1
            assert i != 24 or honest in blk.records
    led.produce_block(t)
    led.close()
    report = verify_ledger(led.path)
    assert report.ok, str(report)
    with Ledger.open(led.path) as again:
        assert again.height == report.blocks - 1


def test_random_mutations_of_stored_blocks_are_named(chain, tmp_path, keys):
    """60 seeded random mutations of stored records, re-hashed: verify never raises, and no block before is blamed."""
    rng = random.Random(1)
    for i in range(60):
        height = rng.randrange(0, 13)
        records = stored_records(chain, height)
        index = rng.randrange(len(records))
        forged = records[:index] + [mutate(rng, records[index], keys)] + records[index + 1 :]
        try:
            text = json.dumps(forged)
        except (ValueError, RecursionError):
            continue  # NaN-free encoders refuse it; RAW_TEXTS stores such text directly
        path = tmp_path / f"m{i}.db"
        shutil.copy(chain, path)
        forge(path, height, text)
        report = verify_ledger(path)
        assert isinstance(report, VerifyReport)
        assert report.ok or report.bad_height >= height, (height, str(report))  # blocks before it are untouched
        assert "\n" not in report.reason
