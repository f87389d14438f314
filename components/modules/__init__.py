"""Building blocks that no model family owns and every family may import: the categorical
sampling distribution (:mod:`.categorical`), diffusion schedules and Gaussian transitions
(:mod:`.diffusion`) and the static key/value cache (:mod:`.kv_cache`). A family package never
imports another family; what two families share lives here."""
