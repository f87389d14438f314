# Shapes base model in Janus-Pro's architecture (transformers' JanusForConditionalGeneration): a
# 4-layer Llama language model of width 128 reading the prompt in Janus-Pro's chat template
# through a word-level tokenizer over the Shapes vocabulary, then 8 x 8 image tokens of a small
# Janus VQ (LlamaGen's VQ architecture as transformers builds it: 512 L2-normalised codes x 8,
# 32 px) through the generation embedding, aligner and head; CFG from the pad-token prompt, as
# Janus-Pro. Same size class and images as the LlamaGen t2i base (llamagen_shapes_t2i.py), so
# runs on the two compare the conditioning (prompt in the sequence vs a T5 prefix), not the
# model size. Pretrained by tools/pretrain_shapes.py janus-vq / janus-t2i, which read the
# architecture from this file; the understanding encoder is a tiny random one (image
# generation never reads it). Model cards: components/benchmarks/weights/janus_shapes*.md.
policy = dict(
    type='JanusPolicy',
    arch=dict(
        text=dict(vocab_size=32, hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128),
        # transformers sets the VQ's token grid to image_size // patch_size (384 // 16 = 24 in
        # Janus-Pro): patch_size is the VQ's downsampling, 4
        vision=dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                    patch_size=4, mlp_ratio=2.0),
        vq=dict(num_embeddings=512, embed_dim=8, base_channels=32, channel_multiplier=[1, 1, 2],
                num_res_blocks=1, latent_channels=64)),
    # SHAPES_VOCABULARY (vargo.components.datasets.shapes), in its order
    tokenizer=dict(vocabulary=['a', 'two', 'three', 'and', 'left', 'right', 'of', 'above',
                               'below', 'red', 'green', 'blue', 'yellow', 'magenta', 'cyan',
                               'circle', 'square', 'triangle', 'circles', 'squares',
                               'triangles']),
    checkpoint='components/benchmarks/weights/janus_shapes_t2i.safetensors',
    tokenizer_checkpoint='components/benchmarks/weights/janus_vq_shapes.safetensors')
# The sampling setting the model card's ShapesEval and FID are measured with (Janus-Pro's
# sampler: plain multinomial, no top-k / top-p; conditional log-probs as STAGE).
sampler = dict(type='ARSampler', cfg_scale=2.0, temperature=1.0, top_k=0, top_p=1.0,
               logprob_cfg='none')
