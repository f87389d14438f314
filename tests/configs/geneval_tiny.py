# GenEval's protocol on the small random Janus (tests): the GenEval reward base with the file
# paths replaced by the test's tiny random files (tests/test_rewards_geneval_tools.py), 64 px.
_base_ = [
    '../../configs/_base_/policies/janus-tiny.py', '../../configs/_base_/rewards/geneval.py',
    '../../configs/_base_/algorithms/grpo.py', '../../configs/_base_/schedules/grpo_cpu_short.py',
    '../../configs/_base_/default_runtime.py'
]
rewards = dict(geneval=dict(image_scale=(64, 64), clip_weights_tag=None,
                            clip_arch=dict(_delete_=True, embed_dim=16,
                                           vision_cfg=dict(image_size=32, layers=1, width=32,
                                                           patch_size=8, head_width=16),
                                           text_cfg=dict(context_length=16, vocab_size=49408,
                                                         width=32, heads=2, layers=1))))
sampler = dict(cfg_scale=1.0)
