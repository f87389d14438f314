# The tiny Janus STAGE/JPEG config with the shipped sharding settings (bf16 mixed precision,
# activation checkpointing; tests/test_sharded.py).
_base_ = ['../../configs/stage/janus-tiny_stage_jpeg.py',
          '../../configs/_base_/sharding/fsdp_bf16.py']
