# HPSv3 (arXiv 2508.03789; MizzenAI/HPSv3) as the reward: the mean mu of the HPSv3-tuned
# Qwen2-VL-7B-Instruct, read at its <|Reward|> token after the package's evaluation instruction
# with the prompt; images resized to 256 x 28 x 28 pixels (448 x 448 when square), bf16 as the
# package. Its uncertainty exp(log_sigma) is logged as reward/hpsv3/sigma.
# Files (download them yourself; nothing is downloaded at run time; a missing one stops the
# build with one line naming it and where it is published):
#   checkpoints/hpsv3/HPSv3.safetensors
#     https://huggingface.co/MizzenAI/HPSv3/resolve/main/HPSv3.safetensors (every weight)
#   checkpoints/Qwen2-VL-7B-Instruct/{config.json,vocab.json,merges.txt,tokenizer.json,
#                                     tokenizer_config.json,chat_template.json,
#                                     preprocessor_config.json}
#     https://huggingface.co/Qwen/Qwen2-VL-7B-Instruct (its model-*.safetensors are not needed)
rewards = dict(hpsv3=dict(
    type='HPSv3Reward', checkpoint='checkpoints/hpsv3/HPSv3.safetensors',
    backbone_dir='checkpoints/Qwen2-VL-7B-Instruct', dtype='bfloat16', image_batch_size=4))
