"""Runners: the simulation on a virtual clock (``sim``, ``simlink``), the emulation over
Mininet (``emulate``, ``network``, ``shapers``, ``node``, ``timescale``, ``manifest``) and the
radio model written out (``channel``)."""
