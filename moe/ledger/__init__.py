"""The reward ledger: a hash-chained SQLite block log with Yuma consensus and TAO emission, no network.

Typical use by nodes (all amounts are integer rao, 1 TAO = 10**9 rao)::

    from moe.ledger import GenesisConfig, Ledger, LedgerConfig

    ledger = Ledger.open("ledger.db", genesis=GenesisConfig(ledger=LedgerConfig(tempo=10), balances={...}))
    ledger.register(hotkey, netuid=1)                 # proof of work (or burn=rao); False if rejected
    ledger.add_stake(validator_key, 100 * RAO_PER_TAO)  # balance -> stake, signed
    ledger.set_weights(validator_key, 1, uids, scores)  # u16-normalized, signed, for ledger.current_epoch
    salt = ledger.commit_weights(validator_key, 2, uids, scores)  # commit-reveal subnet: only a hash now,
    ledger.reveal_weights(validator_key, 2, epoch, uids, scores, salt)  # the weights reveal_period_epochs later
    block = ledger.produce_block()                    # queued records + emission + epoch results, one transaction
    ledger.balance(hotkey.address), ledger.stake_of(addr), ledger.uid(1, addr)
    ledger.height, ledger.head_hash, ledger.total_issuance, ledger.state.subnets[1].latest_epoch

`submit` (and the helpers above) returns False and logs the reason for any record that is invalid (bad signature,
wrong netuid, unknown uid, stale epoch, rate limit, insufficient balance); rejected records are never stored.
Every `tempo` blocks each subnet runs `yuma_epoch` on the signed weights and stakes and pays its pending emission:
miners by incentive, validators by dividends. `verify_ledger(path)` (or `hivemoe ledger verify PATH`) re-derives
everything and names the first bad block (on long ledgers it checks signatures in one worker process per core);
crafted content (NaN, huge or deeply nested values, wrong types) is a named bad block or a rejected record, never an
exception. A file cannot vouch for its own genesis: pin it with `verify_ledger(path, genesis=...)` or
`genesis_hash=genesis_block(config).hash` (`Ledger.open` takes the same pins).
`ledger.state` is a live object updated in place by later blocks; `ledger.state.copy()` keeps a snapshot.
Subnet rules (Yuma version, commit-reveal, uid limits, owners and their cut) are per netuid
(`LedgerConfig.subnet_params`, `subnet_owners`), and `emission_split` lets validators' root weights on netuid 0 divide
emission between subnets (moe.ledger.root).
"""

from moe.ledger.chain import Block, Ledger, LedgerError, genesis_block
from moe.ledger.emission import BLOCK_TIME_SECONDS, MAX_SUPPLY_RAO, RAO_PER_TAO, block_emission, split_emission
from moe.ledger.genesis import GenesisConfig, LedgerConfig
from moe.ledger.records import RecordError
from moe.ledger.verify import VerifyReport, verify_ledger
from moe.ledger.weights import WeightSubmission, to_u16
from moe.ledger.yuma import YumaResult, yuma_epoch

__all__ = [
    "BLOCK_TIME_SECONDS",
    "MAX_SUPPLY_RAO",
    "RAO_PER_TAO",
    "Block",
    "GenesisConfig",
    "Ledger",
    "LedgerConfig",
    "LedgerError",
    "RecordError",
    "VerifyReport",
    "WeightSubmission",
    "YumaResult",
    "block_emission",
    "genesis_block",
    "split_emission",
    "to_u16",
    "verify_ledger",
    "yuma_epoch",
]
