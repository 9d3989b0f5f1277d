"""The `labhub` command: server-side admin commands and a client for a running hub."""
