# LlamaGen GPT-L class-conditional 256 px on the official weights (LOO-FID's base model).
# Files (download yourself): https://huggingface.co/FoundationVision/LlamaGen
_base_ = ['./llamagen-b_c2i_256.py']
policy = dict(arch='GPT-L', checkpoint='checkpoints/llamagen/c2i_L_256.pt')
