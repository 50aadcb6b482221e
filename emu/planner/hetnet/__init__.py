"""The heterogeneous-edge system (issue 17): small-cell drafting for batches of uploaded
tasks, macro-cell verification over a fronthaul (``../shared/systems/hetnet.md``).

``model`` (the problem and its cost templates), ``bandwidth`` (the uplink band's split),
``evaluate`` (the event-driven ground truth), ``dp`` (the planner's dynamic programme, as
reconstructed), ``refine`` (a local search on the evaluator that improves on it),
``baselines`` (the exact plan over contiguous batchings and the paper's baselines),
``workload`` (random task sets).
"""
