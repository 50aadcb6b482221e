"""draftnet topologies: see ARCHITECTURE.md (layers)."""
