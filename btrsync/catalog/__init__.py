"""What lives on a target, built on the Target interface only: key layout, manifests, repository."""
