# taming-transformers' class-conditional ImageNet VQGAN transformer (the 1.4B "cin" model, 256 px,
# 16 x 16 VQGAN f16 codes over a 16384-entry codebook) on the official weights, and its sampler.
# File (download yourself): the 2021-04-03T19-39-50_cin_transformer folder, https://k00.fr/s511rwcv
# (taming-transformers README); its checkpoints/last.ckpt holds the transformer and the VQGAN
# (first_stage_model.*), both loaded strictly; keep the folder whole: its configs/*-project.yaml is
# checked against these settings at load (arch='cin': n_layer=48, n_head=24, n_embd=1536).
policy = dict(
    type='VQGANTransformerPolicy',
    arch='cin',
    image_size=256,
    num_classes=1000,
    vocab_size=16384,
    block_size=256,
    checkpoint='checkpoints/taming/2021-04-03T19-39-50_cin_transformer/checkpoints/last.ckpt',
    tokenizer='f16-16384',
    tokenizer_checkpoint=None)
# scripts/sample_fast.py as the README runs it for ImageNet (-k 600 -t 1.0 -p 0.92); the model has
# no null class, so no guidance (cfg_scale=1). Log-probs of the sampled distribution.
sampler = dict(type='ARSampler', cfg_scale=1.0, temperature=1.0, top_k=600, top_p=0.92,
               logprob_cfg='rollout')
