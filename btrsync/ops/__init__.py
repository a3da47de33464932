"""Use cases, one module each: explicit dependencies in, a result out; no printing."""
