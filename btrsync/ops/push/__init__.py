"""Push: plan the snapshots a target lacks, then stream each one into the target and commit it.

Data flow of one backup::

    btrfs send ─► fixed-size chunks ─► [workers: xxh3(raw) → probe → zstd → AES-256-GCM frame → xxh3(frame)]
               │                                        ordered, bounded window
               │                              ─► token bucket ─► segments: target.put (atomic), each
               │                                 segment's index as soon as the segment is durable
               └► WatchThread: StreamWatch on its own thread (parser: CRC32C, commands, END; change
                  stats, tree summary, file index records); the main thread only moves buffers
    send exited 0 and stream ended with END ─► manifest committed (the only commit point)

One job per module (imports point down this list):

* :mod:`.run` -- ``push`` and ``push_step``: the plan's backups one after the other, their results;
* :mod:`.plan` -- which snapshots to send, on which parents (linear or retention-aware tree);
* :mod:`.aside` -- the progress estimate, made on a thread beside the send;
* :mod:`.attempt` -- one backup's transfer under its lease: resume point, send, seal, segments,
  the checks before the commit, the manifest, the temporaries of killed attempts;
* :mod:`.watch` -- the send stream through the parser, on a thread of its own;
* :mod:`.settings` -- ``PushSettings`` from the configuration and the command line.

This ``__init__`` imports nothing: a caller names the module it uses.
"""
