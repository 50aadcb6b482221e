"""draftnet channel_models: see ARCHITECTURE.md (layers)."""
