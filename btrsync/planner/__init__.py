"""Pure planning: local snapshots + a target's catalog -> ordered push steps with reasons."""
