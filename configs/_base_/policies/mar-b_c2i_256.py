# MAR-B class-conditional 256 px (208M, DiffLoss MLP 6 x 1024) on the official weights, and its
# masked sampler. Files (download yourself; links in the LTH14/mar README / util/download.py, the
# README also points to a Hugging Face mirror, https://huggingface.co/jadechoghari/mar):
#   checkpoints/mar/mar_base.pth  MAR-B "checkpoint-last.pth" (renamed)
#     https://www.dropbox.com/scl/fi/f6dpuyjb7fudzxcyhvrhk/checkpoint-last.pth?rlkey=a6i4bo71vhfo4anp33n9ukujb&dl=0
#   checkpoints/mar/kl16.ckpt     KL-16 VAE
#     https://www.dropbox.com/scl/fi/hhmuvaiacrarfg28qxhwz/kl16.ckpt?rlkey=l44xipsezc8atcffdp4q7mwmh&dl=0
policy = dict(
    type='MARPolicy',
    arch='mar_base',
    image_size=256,
    num_classes=1000,
    buffer_size=64,
    checkpoint='checkpoints/mar/mar_base.pth',
    checkpoint_key='model_ema',          # the weights the official evaluation samples with
    tokenizer='kl16',
    tokenizer_checkpoint='checkpoints/mar/kl16.ckpt',
    fix_head=False)
# The README's MAR-B FID setting is num_iter=256, 100 head steps, cfg 2.9 (linear); MAR-GRPO
# samples with 64 AR steps and 25 head steps (docs/methods/mar_grpo.md). Log-probs of the guided
# transitions actually sampled.
sampler = dict(type='MaskedSampler', num_iter=64, num_sampling_steps=25, cfg_scale=2.9,
               cfg_schedule='linear', temperature=1.0, logprob_cfg='rollout')
