"""Manifests: per-shard counts and hashes, verification, the mixture audit and Croissant export."""
