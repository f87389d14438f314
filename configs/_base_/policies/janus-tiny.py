# A small random Janus (the real transformers architecture: Llama language model, SigLIP-style
# understanding encoder, VQ tokenizer, generation embedding / aligner / head) for the quick start
# and tests: a 2-layer language model of width 64, 8 x 8 image tokens over a 256-code VQ (64 px),
# a word-level tokenizer built offline (unknown words map to <unk>). No files.
policy = dict(
    type='JanusPolicy',
    arch=dict(
        text=dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512),
        vision=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=64,
                    patch_size=8, mlp_ratio=2.0),
        vq=dict(num_embeddings=256, base_channels=32, channel_multiplier=[1, 1, 2, 2],
                num_res_blocks=1, latent_channels=32)),
    tokenizer=dict(vocabulary=[
        'a', 'an', 'the', 'of', 'on', 'in', 'and', 'to', 'at', 'photo', 'painting', 'two', 'three',
        'red', 'green', 'blue', 'yellow', 'black', 'white', 'left', 'right', 'above', 'below',
        'cat', 'cats', 'dog', 'car', 'house', 'apple', 'table', 'sofa', 'bicycle', 'lighthouse']))
# Janus-Pro's sampling (CFG 5, temperature 1, no top-k), conditional log-probs.
sampler = dict(type='ARSampler', cfg_scale=5.0, temperature=1.0, top_k=0, top_p=1.0,
               logprob_cfg='none')
