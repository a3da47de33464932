"""The btrfs send-stream format: enough structure to prove a stream is complete and well formed."""
