"""btrsync: btrfs send/receive incremental replication.

Layers (an arrow means "may import"; DESIGN.md §1 draws them whole):

    cli ─► jobs ─► ops ─► {config, state} ─► {planner, retention, verify, snapshots, pipeline,
        sendstream, fileindex, restore, read, btrfs, catalog} ─► {targets, crypto}
        ─► {errors, fdio, units, procs, locking, audit, secretfile, signals, memory, progress}

- ``btrfs/``      the only code that runs ``btrfs`` or issues btrfs ioctls
- ``snapshots/``  naming and listing of read-only snapshots in a snapshot directory
- ``planner/``    pure: which snapshots to send, on which parent, and why
- ``sendstream/`` the send-stream format: parser, checks, change statistics
- ``crypto/``     keys, HKDF, AES-256-GCM frames
- ``pipeline/``   chunk sealing/unsealing, ordered parallel map, segments, throttle
- ``targets/``    the narrow Target interface and its implementations
- ``catalog/``    what lives on a target: layout, manifests, repository
- ``ops/``        use cases: push, receive, list, demo
- ``cli/``        click commands; the only place errors become exit codes
"""

__version__ = "0.1.0"
