# Sharded training (PyTorch FSDP2, vargo.core.sharding.VargoFSDP): the policy's shard units
# (Policy.shard_units: its transformer blocks, token embedding, final norm) and the same units of
# the frozen reference are split over the processes; parameters are gathered and computed in
# bf16 inside the units, gradients reduced and weights and AdamW states kept in fp32; each
# block's activations are recomputed in backward; the policy stays gathered (bf16) for a whole
# rollout instead of being gathered at each of its decoding steps. Checkpoints hold the full
# state, the same file a single process writes (a sharded run resumes on any number of
# processes).
#   torchrun --nproc_per_node=8 tools/train.py CONFIG --launcher pytorch
# One process trains the same config unsharded. Use this instead of --amp.
model_wrapper_cfg = dict(type='VargoFSDP', mixed_precision='bf16', activation_checkpointing=True,
                         reshard_after_forward=True, gather_for_rollout=True)
