"""Read-only snapshots of a subvolume in a snapshot directory: naming, listing, create, delete."""
