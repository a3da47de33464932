"""The only code that runs ``btrfs`` or issues btrfs ioctls: subvolumes, snapshots, send, receive."""
