"""Verification building blocks: which segments to read (selection), when each was last read
intact (the coverage ledger), and how a restored tree is compared (``treecompare`` with another
tree, ``treecheck`` with the chain's file indexes).  The use cases are ``btrsync.ops.verify`` and
``btrsync.ops.drill``."""
