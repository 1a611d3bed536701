"""tuneloop: shared settings, database plumbing and the command line."""
