"""Configuration: TOML file -> frozen dataclasses; validation only, no side effects."""
