"""Byte-stream stages for one backup: seal (compress, encrypt, hash) and segment on the way out,
fetch and unseal (verify, decrypt, decompress) on the way back."""
