"""meaning-transform: learn compact, meaning-preserving codes of agent states."""
