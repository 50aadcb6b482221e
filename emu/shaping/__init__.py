"""Link shaping backends: the userspace (TUN) shaper, and its per-packet scheduler."""
