"""draftnet nodes.protocol: see ARCHITECTURE.md (layers)."""
