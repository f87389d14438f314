# STAGE (arXiv 2509.25027) on Janus-Pro-7B with the HPS run's settings (official
# scripts/run_training_hps.py of krennic999/STAGE): the GenEval config's settings except lr 1e-6,
# beta 0.01, entropy reward off, 2 gradient-accumulation steps (8 GPUs x 2 prompts x G=8 = 128
# images per optimizer step).
# Reward: HPSv2.1 alone, a documented subset. The official run sums HPS with T2I-R1's GIT-VQA and
# GroundingDINO rewards (--reward_funcs hps git gdino), which need the per-prompt noun and
# attribute annotations of STAGE's data file and are not in vargo.
# Files (download yourself; nothing is downloaded at run time; a missing one fails at start):
#   checkpoints/Janus-Pro-7B/   https://huggingface.co/deepseek-community/Janus-Pro-7B
#   checkpoints/hps/HPS_v2.1_compressed.pt   https://huggingface.co/xswu/HPSv2
_base_ = ['./janus-pro-7b_stage_geneval.py']
rewards = dict(
    _delete_=True,
    hps=dict(type='HPSv2Reward', checkpoint='checkpoints/hps/HPS_v2.1_compressed.pt'))
# The HPS run's prompts: a prompt file (configs/stage/README.md converts the official
# data/geneval_and_t2i_data_final.json); evaluated with HPS on the same file.
_prompts = 'configs/stage/prompts_example.txt'
train_dataloader = dict(dataset=dict(_delete_=True, type='PromptFileDataset', path=_prompts))
eval_cfg = dict(_delete_=True, splits=dict(prompts=dict(type='PromptFileDataset', path=_prompts)),
                samples_per_condition=4, max_conditions=None, seed=42)
regularizers = dict(kl=dict(beta=0.01))
train_cfg = dict(samples_per_rank=16)
optim_wrapper = dict(optimizer=dict(lr=1e-6))
