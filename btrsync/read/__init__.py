"""The one read path of backups: which links a backup needs (``chains``), and their chunks,
fetched, authenticated and checked in order with bounded memory (``chunks``).  Every reader
uses it: receive, whole and selective restore, ``index``, verify and restore drills."""
