"""Emission split between subnets from validators' root weights: pure math, no state and no SQL.

With `emission_split` "contribution" or "root", validators weigh subnets on the root netuid 0 with ordinary weights
records whose uids are netuids. At every epoch end the top `max_validators` staked hotkeys with root weights give
the new split, which the ledger records (kind "split") and mints by from the next block on:

- "contribution": the stake-weighted mean of their normalised rows. Validators report each subnet's Shapley share
  of the mixture's loss reduction, so the split follows measured value; no chain does this.
- "root": the incentive of `yuma_epoch` on (validators x subnets), so a stake minority cannot inflate a subnet.
  Subtensor's root network (root_epoch, before dynamic TAO in Feb 2025) instead multiplied each subnet's
  stake-weighted rank by a sigmoid of the stake that weighs it at all; Yuma's consensus clipping serves the same
  purpose and reuses the subnets' own consensus code.

Root dividends (subtensor paid root validators through their subnet stake) are not modelled: root weights here
only steer emission; validators earn on the subnets they validate.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from moe.ledger.fields import RecordError, describe, exactly_equal
from moe.ledger.yuma import yuma_epoch

logger = logging.getLogger(__name__)

FLOAT_TOLERANCE = 1e-9
"""Recorded split shares may differ from replay by this much (as epoch floats may)."""


def split_shares(
    mode: str, stakes: list[int], rows: list[dict[int, int]], netuids: list[int], kappa: float
) -> list[float]:
    """Each netuid's share of emission from validators' `stakes` and root `rows` ({netuid: u16 weight}).

    Shares sum to 1, or are all 0 when no staked validator weighs any of `netuids` (the caller keeps the old split).
    A netuid nobody weighs gets 0. Raises ValueError for an unknown `mode`.
    """
    col = {n: j for j, n in enumerate(netuids)}
    W = np.zeros((len(rows), len(netuids)))  # (V, K)
    for i, row in enumerate(rows):
        for n, w in row.items():
            if n in col:
                W[i, col[n]] = w
    S = np.array([float(s) for s in stakes])  # (V,)
    if mode == "contribution":
        t = W.sum(axis=1, keepdims=True)  # (V, 1)
        Wn = np.divide(W, t, out=np.zeros_like(W), where=t > 0)  # (V, K)
        counted = S * (t[:, 0] > 0)  # (V,) a validator with no weight on these subnets does not dilute the mean
        shares = counted @ Wn / counted.sum() if counted.sum() > 0 else np.zeros(len(netuids))
    elif mode == "root":
        shares = yuma_epoch(W, S, None, kappa=kappa).incentive if len(rows) else np.zeros(len(netuids))
    else:
        raise ValueError(f"no split mode {mode!r}")
    total = float(shares.sum())
    return [float(x) / total for x in shares] if total > 0 else [0.0] * len(netuids)


def check_split(got: object, want: dict[str, Any]) -> dict[str, Any]:
    """The recorded split `got` if it matches the recomputed `want`; raises RecordError naming the first mismatch.

    Shares may differ by FLOAT_TOLERANCE, but a share replay computes as 0 must be recorded as exactly 0.0 (a subnet
    nobody weighs mints nothing) and recorded shares must be non-negative with a positive sum, so minting by them
    cannot fail.
    """
    if type(got) is not dict or got.keys() != want.keys():
        raise RecordError(f"split record has the wrong fields ({describe(got)})")
    for key in want:
        if key != "shares" and not exactly_equal(got[key], want[key]):
            raise RecordError(f"split record field {key!r} differs from replay")
    shares = got["shares"]
    if type(shares) is not list or len(shares) != len(want["shares"]):
        raise RecordError("split record field 'shares' differs from replay")
    for x, y in zip(shares, want["shares"], strict=True):
        if type(x) is not float or not math.isfinite(x) or x < 0 or abs(x - y) > FLOAT_TOLERANCE or (y == 0 and x):
            raise RecordError("split record field 'shares' differs from replay")
    if not sum(shares) > 0:
        raise RecordError("split record field 'shares' has no positive share")
    return got
