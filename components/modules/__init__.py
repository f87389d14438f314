"""Building blocks that no model family owns and every family may import: the categorical
sampling distribution (:mod:`.categorical`), diffusion schedules and Gaussian transitions
(:mod:`.diffusion`), the static key/value cache (:mod:`.kv_cache`) and the schedules and
rollout record of masked generation (:mod:`.masked`), and CPU kernels for linear layers:
packed weights for grad-free decoding (:mod:`.packed_linear`) and oneDNN products for the
training forward and backward (:mod:`.onednn_linear`). A family package never
imports another family; what two families share lives here."""
