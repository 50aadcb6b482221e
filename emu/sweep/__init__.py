"""Studies over the planner and the runners (``study``)."""
