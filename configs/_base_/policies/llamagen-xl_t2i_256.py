# LlamaGen GPT-XL text-to-image, stage 1 (256 px, 16 x 16 tokens), on the official weights:
# 120 FLAN-T5-XL caption features (left-padded as sample_t2i.py), the t2i release's VQ-16.
# Files (download yourself; nothing is downloaded at run time):
#   checkpoints/llamagen/t2i_XL_stage1_256.pt  https://huggingface.co/peizesun/llamagen_t2i
#   checkpoints/llamagen/vq_ds16_t2i.pt        https://huggingface.co/peizesun/llamagen_t2i
#   checkpoints/flan-t5-xl/  (directory: config.json, tokenizer, weights)
#                                              https://huggingface.co/google/flan-t5-xl
policy = dict(
    type='LlamaGenPolicy',
    arch='GPT-XL',
    task='t2i',
    image_size=256,
    downsample=16,
    vocab_size=16384,
    checkpoint='checkpoints/llamagen/t2i_XL_stage1_256.pt',
    tokenizer='VQ-16',
    tokenizer_checkpoint='checkpoints/llamagen/vq_ds16_t2i.pt',
    # bf16 as the official T5Embedder (sample_t2i.py --precision bf16); 'float32' on CPU
    text_encoder=dict(type='flan-t5', path='checkpoints/flan-t5-xl', dtype='bfloat16'))
# LlamaGen's t2i sampling defaults (sample_t2i.py: cfg 7.5, top-k 1000, top-p 1.0, temperature
# 1.0); log-probs from conditional logits, as the papers train (docs/methods/grpo.md).
sampler = dict(type='ARSampler', cfg_scale=7.5, temperature=1.0, top_k=1000, top_p=1.0,
               logprob_cfg='none')
