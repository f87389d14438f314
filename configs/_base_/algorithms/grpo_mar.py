# Vanilla GRPO on MAR's Gaussian head transitions (docs/methods/mar_grpo.md): the policy update
# recomputes only the subset of (AR step, diffusion step) pairs the sampler draws per rollout
# (MaskedSampler loss_ar_steps / loss_diffusion_steps), so both loss terms are restricted to it
# (EvaluatedActionsSelector); the KL is MAR-GRPO's k3 on the difference of the Gaussian means
# (k3 on the transition log-probs overflows at the head's late, tiny-variance steps).
_base_ = ['./grpo.py']
token_selectors = dict(_delete_=True, evaluated=dict(type='EvaluatedActionsSelector'))
regularizers = dict(kl=dict(_delete_=True, type='GaussianMeanKLRegularizer', beta=0.01,
                            aggregation='sample_mean_of_token_means'))
