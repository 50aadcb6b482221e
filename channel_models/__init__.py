"""Radio channel models to link-state time series (pure: numpy, no I/O). See ARCHITECTURE.md."""

from channel_models.link import LinkState

__all__ = ["LinkState"]
