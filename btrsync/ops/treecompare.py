"""Moved to ``btrsync/verify/treecompare.py`` (pure comparison, below ops/); this name is kept
only until the last importer is updated."""

from btrsync.verify.treecompare import describe_tree, diff_trees, xattrs_of

__all__ = ["describe_tree", "diff_trees", "xattrs_of"]
