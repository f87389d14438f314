# VAR RL Done Right's text-rendering setting (arXiv 2601.02256: CVTG-2K word accuracy and NED,
# HPSv3) with the paper's rewards, OCR + HPSv3, on the closest text-to-image policy vargo has:
# Janus-Pro-7B. The paper's policy, NextFlow-7B (next-scale, text-to-image), is not released, and
# vargo's next-scale VAR family is class-conditional, so this is a raster model: of the paper's
# three mechanisms VMR and mask propagation apply (PANW reweights scales, which a raster model
# does not have; configs/var_rl/var-d16_var-rl_c2i.py runs all three on VAR).
#
# Paper settings: G=16, 16 prompts per update, AdamW (0.9, 0.95), weight decay 0.05, lr 1e-5, up
# to 1200 updates, rollout CFG 5, top-k 2, top-p 0.9, conditional-only training log-probs; VMR
# with K=2, eta=1, 3 prefix : 1 suffix updates.
# Not given by the paper (ours, docs/methods/var_rl.md): the sum of the raw OCR score (1 - NED,
# in [0, 1]) and HPSv3's mu with weight 1 each; the split after 144 of the 576 tokens (the first
# 6 of 24 rows, a quarter of the image); the mask of mask propagation = the text boxes the OCR
# head detects (its regions), background weight 0.05, renormalised per sample; vanilla GRPO's
# token mean and k3 KL beta 0.04.
#
# Prompts: a text file, one prompt per line with the text to render in double quotes (e.g.
# CVTG-2K's prompts, https://github.com/NJU-PCALab/TextCrafter; OcrReward(quotes='all') joins
# every quoted span, as CVTG-2K's multi-region prompts need).
# Files (download yourself; nothing is downloaded at run time; a missing one fails at start):
#   checkpoints/Janus-Pro-7B/   https://huggingface.co/deepseek-community/Janus-Pro-7B
#   checkpoints/ocr/PP-OCRv5_mobile_{det,rec}_safetensors/   as configs/_base_/rewards/ocr.py
#   checkpoints/hpsv3/HPSv3.safetensors, checkpoints/Qwen2-VL-7B-Instruct/   as
#       configs/_base_/rewards/hpsv3.py
#   data/cvtg/prompts.txt   your prompt file
_base_ = [
    '../_base_/policies/janus-pro-7b.py', '../_base_/algorithms/grpo.py',
    '../_base_/schedules/grpo_gpu_8xb16.py', '../_base_/default_runtime.py'
]
_prompts = 'data/cvtg/prompts.txt'
train_dataloader = dict(
    dataset=dict(type='PromptFileDataset', path=_prompts),
    sampler=dict(type='ContiguousInfiniteSampler', shuffle=True),
    collate_fn=dict(type='default_collate'),
    num_workers=0)
eval_cfg = dict(splits=dict(prompts=dict(type='PromptFileDataset', path=_prompts)),
                samples_per_condition=4, max_conditions=None, seed=0)
group_size = 16
train_cfg = dict(max_iters=1200, samples_per_rank=32)
optim_wrapper = dict(optimizer=dict(lr=1e-5, betas=(0.9, 0.95), weight_decay=0.05))
sampler = dict(_delete_=True, type='VMRSampler', split_step=144, prefix_updates=3,
               suffix_updates=1,
               sampler=dict(type='ARSampler', cfg_scale=5.0, temperature=1.0, top_k=2,
                            top_p=0.9, logprob_cfg='none'))
rewards = dict(
    text=dict(type='VMRReward', num_completions=2, eta=1.0, include_rollout=True,
              head=dict(type='CompositeReward', mode='sum_then_normalize',
                        weights=dict(ocr=1.0, hpsv3=1.0),
                        heads=dict(
                            ocr=dict(type='OcrReward', quotes='all', regions=True,
                                     det_checkpoint='checkpoints/ocr/'
                                                    'PP-OCRv5_mobile_det_safetensors',
                                     rec_checkpoint='checkpoints/ocr/'
                                                    'PP-OCRv5_mobile_rec_safetensors'),
                            hpsv3=dict(type='HPSv3Reward',
                                       checkpoint='checkpoints/hpsv3/HPSv3.safetensors',
                                       backbone_dir='checkpoints/Qwen2-VL-7B-Instruct',
                                       dtype='bfloat16', image_batch_size=4)))))
token_selectors = dict(
    mp=dict(type='MaskPropagationSelector', source='regions', head='text', background=0.05,
            renormalize='per_sample'))
_shapes_alternative = 'python tools/train.py configs/var_rl/var_var-rl_shapes.py'
