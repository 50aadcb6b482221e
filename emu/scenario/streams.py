"""Every random stream of a run, from its seed, in one place.

Each role and each link draws from a stream of its own, keyed by what it is for and by the
user, so the simulation and the emulation (where each node is its own process) draw the same
numbers for the same thing: the same radio trace, the same prompts, the same drafts and the same
acceptances, whatever order the nodes happen to run in.

Layer: emu (scenario): what a scenario's ``sim.seed`` gives every runner.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Streams"]


@dataclass(frozen=True, slots=True)
class Streams:
    seed: int

    def _stream(self, purpose: int, *key: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, purpose, *key])

    def radio(self) -> np.random.Generator:
        """The radio model's trace (placement, mobility, shadowing, fading)."""
        return self._stream(1)

    def acceptance(self, user: int) -> np.random.Generator:
        """A synthetic verifier's draws for one user."""
        return self._stream(2, user)

    def prompts(self, user: int) -> np.random.Generator:
        """A user's synthetic prompts."""
        return self._stream(3, user)

    def drafter(self, user: int) -> np.random.Generator:
        """A user's synthetic drafts."""
        return self._stream(4, user)

    def link(self, user: int) -> np.random.Generator:
        """A user's simulated link: jitter and loss per message."""
        return self._stream(5, user)

    def redial(self, user: int) -> np.random.Generator:
        """A user's redial backoff."""
        return self._stream(6, user)
