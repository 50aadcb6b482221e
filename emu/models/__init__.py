"""Real and profiled models: the embedded pair (``embedded``), profiling a model on this machine
(``profile``), compute time from profiles (``timing``) and the backends a run's nodes use
(``build``)."""
