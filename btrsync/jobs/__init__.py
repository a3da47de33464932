"""Jobs: the unattended path a nightly timer runs, and what an operator watches.

``hooks``        pre/post/on_success/on_failure commands: argv lists, timeouts, process groups
``coordination`` the job lock, the host-wide push slots (max_parallel_jobs), waiting locks
``records``      what each run leaves in state_dir/jobs/<job>.json (the input of status and metrics)
``runner``       ``btrsync run``: lock, window, hooks, snapshot, push, prune, verify, record, metrics
``status``       verdicts per job and target; monitoring-plugin codes for ``status --check``
``metrics``      the node_exporter textfile, rendered from the records with prometheus_client
``systemd``      the units ``btrsync systemd generate`` writes

Layering: ``jobs`` sits beside ``ops`` (it calls push, prune and snapshot use cases) and below
``cli``.  What a job *is* (``[jobs.NAME]``: the dataclasses, their pydantic schema, windows,
target schedules, durations) is configuration, in ``btrsync.config`` (``jobs``, ``schema``,
``windows``, ``timespan``, ``effective``); nothing below imports this package.
"""
