# Shapes base model, text-conditional: the c2i base's VQ with a tiny LlamaGen GPT conditioned on
# a tiny frozen word-level T5 (random weights from a seeded T5Config, shipped). The vocabulary is
# SHAPES_VOCABULARY in this fixed order (token ids 3..), captions are 12 tokens (</s> included).
_base_ = ['./llamagen_shapes_c2i.py']
policy = dict(
    task='t2i',
    checkpoint='components/benchmarks/weights/llamagen_shapes_t2i.safetensors',
    # the shipped weights' null caption has one row per caption position (12), not the
    # official 120 (LlamaGenPolicy.uncond_rows); CFG uses its first cls_token_num = 12 rows
    uncond_rows=12,
    text_encoder=dict(
        type='word-t5',
        vocabulary=['a', 'two', 'three', 'and', 'left', 'right', 'of', 'above', 'below',
                    'red', 'green', 'blue', 'yellow', 'magenta', 'cyan',
                    'circle', 'square', 'triangle', 'circles', 'squares', 'triangles'],
        d_model=64, num_layers=2, num_heads=4, d_ff=128, max_length=12, seed=0,
        checkpoint='components/benchmarks/weights/t5_shapes.safetensors'))
sampler = dict(cfg_scale=2.0)
