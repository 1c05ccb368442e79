"""Credit within a subnet: what each miner adds to the network as it stands, next to its own subnet's competitors.

Why. The network's Shapley value averages a miner's marginal value over every coalition, including the many where the
other subnets' specialists are missing. In those, the miner that forgot least of the seed covers the other domains
and collects credit for it; a miner that trained longer on its own domain, and so forgot more, collects less. That
credit is real in the game, but no user of the network ever sees those coalitions: the other subnets' miners are
there. Inside a subnet the question a market answers is narrower: given everyone else, which of these competitors
adds more? So a subnet's weights come from the Shapley game of its own miners played on top of a fixed background,
every other subnet's scored miners:

    v_s(S) = v(B_s ∪ S) − v(B_s),   B_s = the scored players outside subnet s,

which credits each miner for the windows where it beats what the rest of the network already does. The network's
own game still decides how much each subnet gets (moe.roles.validator_weights.root_weights); this only splits a
subnet's part among its miners. Cost: 2^k coalition values for a subnet of k miners (sampled above
`ShapleyConfig.exact_max_players`), each a memoized value of the network game.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from moe.poi.shapley import FunctionGame, ShapleyConfig, shapley
from moe.poi.value import MixtureGame


def subnet_credit(game: MixtureGame, markets: Sequence[int], config: ShapleyConfig | None = None) -> torch.Tensor:
    """(E,) each player's Shapley value in its own subnet's game over the background of every other subnet.

    `game` is the network's mixture game of E players and `markets[i]` the subnet of player i. A subnet with one
    player credits it with what it adds to all the others. Raises ValueError when `markets` does not name one subnet
    per player.
    """
    E = game.n_players
    if len(markets) != E:
        raise ValueError(f"{E} players but {len(markets)} subnets")
    credit = torch.zeros(E, dtype=torch.float64)
    everyone = (1 << E) - 1
    for market in sorted(set(markets)):
        members = [i for i in range(E) if markets[i] == market]
        background = everyone & ~sum(1 << i for i in members)
        base = game.value(background)

        def value(coalition: frozenset[int], members=members, background=background, base=base) -> float:
            return game.value(background | sum(1 << members[k] for k in coalition)) - base

        credit[members] = shapley(FunctionGame(value, len(members)), config).values
    return credit
