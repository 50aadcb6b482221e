"""The heterogeneous-edge system (issue 17): small-cell drafting for batches of uploaded
tasks, macro-cell verification over a fronthaul (``../shared/systems/hetnet.md``).

``model`` (the problem and its cost templates), ``bandwidth`` (the uplink band's split),
``evaluate`` (the event-driven ground truth), ``dp`` (the planner's dynamic programme).
"""
