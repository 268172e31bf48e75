"""Model registry (versions, aliases, history), the promotion gate, and rollback."""
