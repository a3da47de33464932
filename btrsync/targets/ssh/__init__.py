"""The rsync-over-ssh target, ``ssh://[user@]host[:port]/path``.

One job per module (imports point down this list):

* :mod:`.target` -- ``SshTarget``: the storage logic (spool, rsync, remote commit; get, list,
  delete, leftovers for ``btrsync clean``);
* :mod:`.settings` -- the target's settings (each name listed in ``btrsync.targets.settings``)
  and the remote root from a URL;
* :mod:`.connection` -- one OpenSSH ``ControlMaster`` connection per target and the processes
  run through it;
* :mod:`.parsers` -- parsing what the remote snippets and rsync answer;
* :mod:`.scripts` -- the remote shell snippets (pure string building) and their exit statuses;
* :mod:`.errors` -- ssh, rsync and remote-shell failures to target errors.
"""
