"""Background loops that drive instances towards what the database says."""
