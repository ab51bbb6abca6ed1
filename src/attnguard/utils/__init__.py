"""Small shared helpers (device choice, seeding)."""
