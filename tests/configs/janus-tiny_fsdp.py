# The tiny Janus STAGE/JPEG config trained sharded in fp32 (FSDP2, no activation checkpointing)
# when launched on several processes (tests/test_sharded.py); one process trains it unsharded.
_base_ = ['../../configs/stage/janus-tiny_stage_jpeg.py',
          '../../configs/_base_/sharding/fsdp_bf16.py']
model_wrapper_cfg = dict(mixed_precision=None, activation_checkpointing=False)
