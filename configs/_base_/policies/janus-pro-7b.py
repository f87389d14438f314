# Janus-Pro-7B (deepseek-ai/Janus; STAGE's system) through transformers' Janus classes, from a
# local directory in transformers' format (config.json, safetensors weights, tokenizer):
#   checkpoints/Janus-Pro-7B/   https://huggingface.co/deepseek-community/Janus-Pro-7B
# (download the whole directory yourself; nothing is downloaded at run time; a missing directory
# or file fails at start naming it and where it is published). The original release
# deepseek-ai/Janus-Pro-7B is custom code with other key names and is refused with that message.
# Only the language model trains (STAGE); the rest is frozen and left out of checkpoints.
# Weights in fp32: on a GPU train with --amp (bf16 autocast, STAGE's --bf16) so the optimizer
# keeps fp32 weights (AdamW on bf16 weights would round lr 5e-6 updates away). A 7B policy with
# AdamW and its frozen reference needs ~140 GB: train it sharded over several GPUs
# (../sharding/fsdp_bf16.py: bf16 compute, fp32 weights; no --amp) or on a GPU that large.
policy = dict(
    type='JanusPolicy',
    model_path='checkpoints/Janus-Pro-7B',
    dtype='float32')
# Janus-Pro's generation (generation_inference.py, STAGE's rollouts): CFG weight 5, temperature
# 1, no top-k / top-p; log-probs from the conditional logits (STAGE's _get_per_token_logps).
sampler = dict(type='ARSampler', cfg_scale=5.0, temperature=1.0, top_k=0, top_p=1.0,
               logprob_cfg='none')
