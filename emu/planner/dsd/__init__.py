"""The third system, distributed speculative decoding for edge-cloud serving (DSD,
../shared/systems/dsd.md): its acceptance model, window policies and routers.

Layer: pure (emu.planner): no I/O, no clock; randomness from a ``numpy.random.Generator``
passed in.
"""
