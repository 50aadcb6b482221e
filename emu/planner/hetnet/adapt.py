"""A batch's speculation length chosen again every round from the acceptance learned so far
(deliverable 4 of the heterogeneous-edge system; the paper fixes each batch's length when it
plans, from acceptance it is told).

Layer: pure (emu.planner).

The small cell learns each task's acceptance from its verdicts (``nodes.core.hetnet``: a Beta
posterior from the planner's prior) and, before each round of a speculative batch, takes the
length that minimises the batch's expected time to finish: a round's time at that length times
the expected rounds of its slowest task (``expected_max_rounds``, each task with the tokens it
still wants and its learned acceptance). A round's time is its stages in series (drafting, the
fronthaul up, verifying, the fronthaul down) when the batch runs alone, and the longer of its
two sides (drafting and the way up; verifying and the way down) while other batches share the
servers (``pipelined``): then each server serves one batch while the other serves another, and
the busier one sets the pace. Alone, a batch of 12 at acceptance 0.75 is fastest at 2 draft
tokens; pipelined, at 4. The plan's order and batches stay.
"""

from __future__ import annotations

from collections.abc import Sequence

from emu.planner.hetnet.model import HetnetProblem, expected_max_rounds

__all__ = ["next_length"]


def next_length(
    problem: HetnetProblem,
    cell: int,
    n: int,
    context: int,
    members: Sequence[tuple[int, float]],
    *,
    pipelined: bool,
) -> int:
    """The length (1..l_max) for a batch of ``n`` tasks at KV length ``context`` in small cell
    ``cell``, whose unfinished ``members`` still want (tokens, learned acceptance), alone or
    ``pipelined`` with other batches."""
    tau = problem.fronthaul(cell)[1]
    down = float(problem.fronthaul_transfer_ms(problem.fronthaul_down_bits(n), cell))
    # Acceptance to two places: the rounds' distributions are cached by it.
    wanted = [(max(1, w), round(min(max(a, 0.01), 0.99), 2)) for w, a in members]

    def cost(length: int) -> float:
        up = float(problem.fronthaul_transfer_ms(problem.fronthaul_up_bits(n, length), cell))
        drafting = problem.draft_ms(n, context, length) + up + tau
        verifying = problem.verify_ms(n, context, length) + down + tau
        round_ms = max(drafting, verifying) if pipelined else drafting + verifying
        return round_ms * expected_max_rounds(wanted, length)

    return min(range(1, problem.max_draft_len + 1), key=cost)
