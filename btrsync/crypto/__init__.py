"""Keys, key derivation and the authenticated framing of chunks and manifests (AES-256-GCM)."""
