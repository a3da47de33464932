"""``btrsync mount``: a read-only FUSE view of every backup of a repository.

``namespace.py`` lays out ``<subvolume>/<snapshot>/...`` from the catalog and the file indexes
(trees replayed lazily, a few kept), ``extents.py`` tells a file's data ranges from its index
alone, ``content.py`` rebuilds a file's bytes on its first read through the selective-restore path
into a bounded on-disk cache (damage remembered only while the repository is there:
``catalog/reach.py``), ``fs.py`` answers the kernel (mfusepy over libfuse3), and
``session.py`` checks the mount point, runs the filesystem and unmounts on a signal.
"""
