"""btrsync: btrfs send/receive incremental replication.

Layers (an arrow means "may import"):

    cli ─► ops ─► {planner, retention, catalog, pipeline, btrfs, snapshots, sendstream}
                 ─► {targets, crypto} ─► {errors, config}

- ``btrfs/``      the only code that runs ``btrfs`` or issues btrfs ioctls
- ``snapshots/``  naming and listing of read-only snapshots in a snapshot directory
- ``planner/``    pure: which snapshots to send, on which parent, and why
- ``sendstream/`` the send-stream format (framing checks)
- ``crypto/``     keys, HKDF, AES-256-GCM frames
- ``pipeline/``   chunk sealing/unsealing, ordered parallel map, segments, throttle
- ``targets/``    the narrow Target interface and its implementations
- ``catalog/``    what lives on a target: layout, manifests, repository
- ``ops/``        use cases: push, receive, list, demo
- ``cli/``        click commands; the only place errors become exit codes
"""

__version__ = "0.1.0"
