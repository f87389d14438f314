# LlamaGen GPT-XL class-conditional 384 px (24 x 24 tokens) on the official weights.
# Files (download yourself): https://huggingface.co/FoundationVision/LlamaGen
_base_ = ['./llamagen-b_c2i_256.py']
policy = dict(arch='GPT-XL', image_size=384, checkpoint='checkpoints/llamagen/c2i_XL_384.pt')
