"""draftnet nodes: see ARCHITECTURE.md (layers)."""
