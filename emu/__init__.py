"""draftnet orchestration layer: scenarios, runners, results, and the command line.

This package's ``__init__`` imports nothing so that the pure subpackage ``emu.planner`` and the
leaf module ``emu.errors`` can be imported by lower layers without pulling in orchestration code.
"""
