# Runtime shared by every vargo config: scope, hooks, logging, visualizer, randomness.
default_scope = 'vargo'

# Hooks keyed by name: a child config replaces one or disables it with None.
default_hooks = dict(
    runtime_info=dict(type='RuntimeInfoHook'),
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=1, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='AtomicCheckpointHook', interval=50, by_epoch=False, max_keep_ckpts=3,
                    save_last=True, backend_args=dict(backend='vargo_atomic')),
    rl_state=dict(type='RLStateHook'),
    image_grid=dict(type='ImageGridHook', interval=10, max_images=64, preview_conditions=4),
    curves=dict(type='CurvesHook', interval=10),
    # report.html at the end of the run (tools/report.py rebuilds it from the work dir)
    report=dict(type='RunReportHook'),
)

env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method='fork'),
               dist_cfg=dict(backend='nccl'))
log_processor = dict(by_epoch=False, window_size=1)
log_level = 'INFO'
# tensorboard=True (or --cfg-options visualizer.tensorboard=True) also writes TensorBoard event
# files to <timestamp>/vis_data/; it needs `pip install -e ".[tensorboard]"` (vargo.core.visualizer).
visualizer = dict(type='VargoVisualizer', vis_backends=[dict(type='LocalVisBackend')],
                  tensorboard=False)
randomness = dict(seed=0, deterministic=False)
load_from = None
resume = False
