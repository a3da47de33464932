"""Secrets handed over by systemd: ``LoadCredential=`` puts each in ``$CREDENTIALS_DIRECTORY``.

Units (``btrsync systemd generate``, the NixOS module) pass the key as ``key`` (on the command line
as ``--key-file %d/key``) and each target's secret file as ``target-NAME`` (S3 credentials) or
``ssh-NAME`` (the ssh identity).  ``App.config`` applies them for every command, so ``run``,
``verify``, ``list`` or ``receive`` started by a unit read the copies systemd made readable to
it, not the configured paths (which the sandbox may hide).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from btrsync.config.model import Config


def apply_credentials(config: Config, directory: str | None) -> Config:
    """The configuration with the targets' secret files replaced by the unit's credentials
    (``$CREDENTIALS_DIRECTORY/target-NAME``, ``ssh-NAME``) where systemd provided them."""
    if not directory:
        return config
    creds = Path(directory)
    targets = {}
    for name, settings in config.targets.items():
        updated = dict(settings)
        for cred, key in ((f"target-{name}", "credentials_file"), (f"ssh-{name}", "identity_file")):
            if key in updated and (creds / cred).is_file():
                updated[key] = str(creds / cred)
        targets[name] = updated
    return dataclasses.replace(config, targets=targets)
