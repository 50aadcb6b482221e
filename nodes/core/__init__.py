"""The roles' pure cores: what the verifier decides (its plan in user ids, the batch
scheduler, the length controller, the re-plan rule) and what it learns of each user
(``estimate``) and checks of each peer (``guard``). No I/O and no clock: times are passed in,
so each piece is tested without trio and runs alike in the simulation and the emulation.

Layer: pure.
"""
