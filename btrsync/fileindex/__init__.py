"""The per-backup file index: what each backup's stream does to which path, without its data."""
