# GenEval (Ghosh et al., arXiv 2310.11513; djghosh13/geneval) as the reward and as the evaluation
# protocol: per image GenEval's strict correctness (1/0), per prompt tag the fraction correct;
# tools/eval.py samples every prompt of the metadata file 4 times with seed 42 (GenEval's
# generation/diffusers_generate.py: --n_samples 4 --seed 42) and prints GenEval's summary table.
# Detector: transformers' Mask2Former with the Hugging Face Swin-S COCO instance release, not
# GenEval's mmdet checkpoint (another training run; scores differ by an unmeasured amount:
# components/rewards/geneval.py says why). Colours: OpenCLIP ViT-L-14, OpenAI weights.
# Files (download them yourself; nothing is downloaded at run time; a missing one stops the
# build with one line naming it and where it is published):
#   data/geneval/evaluation_metadata.jsonl
#     https://github.com/djghosh13/geneval/blob/main/prompts/evaluation_metadata.jsonl (or your
#     own prompts in its format)
#   checkpoints/geneval/mask2former-swin-small-coco-instance/{config.json,model.safetensors}
#     https://huggingface.co/facebook/mask2former-swin-small-coco-instance
#   checkpoints/clip/open_clip_model.safetensors
#     https://huggingface.co/timm/vit_large_patch14_clip_224.openai
_geneval_metadata = 'data/geneval/evaluation_metadata.jsonl'
rewards = dict(geneval=dict(
    type='GenEvalReward', metadata_file=_geneval_metadata,
    detector_dir='checkpoints/geneval/mask2former-swin-small-coco-instance',
    clip_checkpoint='checkpoints/clip/open_clip_model.safetensors', clip_arch='ViT-L-14',
    clip_weights_tag='openai'))
train_dataloader = dict(
    dataset=dict(type='GenEvalPromptDataset', path=_geneval_metadata),
    sampler=dict(type='ContiguousInfiniteSampler', shuffle=True),
    collate_fn=dict(type='default_collate'),
    num_workers=0)
# GenEval's protocol: every prompt, 4 samples each, fixed seed; no FID.
eval_cfg = dict(
    splits=dict(geneval=dict(type='GenEvalPromptDataset', path=_geneval_metadata)),
    samples_per_condition=4, max_conditions=None, seed=42)
