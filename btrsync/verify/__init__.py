"""Verification building blocks: which segments to read (selection) and when each was last read
intact (the coverage ledger).  The use case itself is ``btrsync.ops.verify``."""
