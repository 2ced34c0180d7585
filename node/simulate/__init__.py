"""What a demo or a test plays against the roles: dishonest workers (adversary) and injected crashes (faults)."""
