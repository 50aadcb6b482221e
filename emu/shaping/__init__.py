"""Link shaping: the userspace (TUN) shaper and its pure per-packet schedule, the ``tc``
shaper, a link's typed spec (``spec``), what a shaped link follows over time (``sources``) and
the probes that measure a link (``probe``)."""
