"""MAR-GRPO's KL penalty: k3 on the difference of the reference's and the policy's Gaussian means."""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from vargo.core.context import IterationContext
from vargo.core.interfaces import Regularizer
from vargo.core.objective import aggregate, kl_estimate, masked_mean
from vargo.core.registry import REGULARIZERS
from vargo.core.types import PolicyEval, Rollout, TokenWeights

from .kl import check_kl_settings

__all__ = ['GaussianMeanKLRegularizer']


@REGULARIZERS.register_module()
class GaussianMeanKLRegularizer(Regularizer):
    """``beta * aggregate(mean_d [exp(D_d) - D_d - 1])`` with ``D = mu_ref - mu_theta`` per action.

    For policies whose actions are Gaussian transitions (MAR's diffusion-head steps), the
    penalty MAR-GRPO trains with (arXiv 2604.06966; official ``grpo_trainer_{harmon,nova}_v1_2.py``:
    ``per_token_kl = exp(ref_mean - mean) - (ref_mean - mean) - 1`` per latent element, averaged
    over the elements): the k3 function applied to the difference of the two means of each
    evaluated transition, channel by channel, then averaged over the ``D`` channels into one
    value per action and reduced with the objective's aggregation, weighted by ``weights.kl``.
    It is 0 iff the means agree and grows like ``|D|^2 / 2`` for small differences.

    Why not k3 on the transition log-probs (:class:`KLRegularizer`): a DDPM head's late steps
    have standard deviations of ~1e-3, so a mean shift of 1e-2 already changes the log-ratio of a
    16-channel action by ~100 and ``exp`` overflows; the mean difference does not see the
    variance.

    The policy and reference evaluations must return ``extras['mean'] [B, A, D]``
    (:meth:`MARPolicy.evaluate` does; zero on actions outside its selection, where the KL is
    therefore 0 as well).

    Args:
        beta: coefficient, finite and >= 0 (MAR-GRPO: 0.01).
        aggregation: a name in :data:`~vargo.core.objective.AGGREGATIONS` (the official code:
            a mean over all evaluated elements, ``'token_mean'``).
    """

    needs_reference = True

    def __init__(self, *, beta: float, aggregation: str) -> None:
        check_kl_settings(self, beta, aggregation, typical='0.01 as MAR-GRPO')
        self.beta, self.aggregation = float(beta), aggregation

    def __repr__(self) -> str:
        return f'{type(self).__name__}(beta={self.beta}, aggregation={self.aggregation!r})'

    def __call__(self, policy_eval: PolicyEval, ref_eval: Optional[PolicyEval], rollout: Rollout,
                 weights: TokenWeights, *, progress: float,
                 ctx: Optional[IterationContext] = None) -> dict[str, Tensor]:
        """KL term of one (micro-)batch: ``{'loss', 'mean'}`` (``mean`` detached, unweighted)."""
        if ref_eval is None:
            raise ValueError('GaussianMeanKLRegularizer needs the reference evaluation (ref_eval '
                             'is None): the runner must evaluate the frozen reference')
        for name, ev in (('policy', policy_eval), ('reference', ref_eval)):
            if 'mean' not in ev.extras:
                raise KeyError(f"GaussianMeanKLRegularizer needs the {name} evaluation's "
                               f"extras['mean'] (the Gaussian mean of each action); this policy "
                               f"does not return it: use KLRegularizer on log-probs instead")
        mu, mu_ref = policy_eval.extras['mean'], ref_eval.extras['mean'].detach()
        # kl_estimate(l, l_ref, 'k3') = exp(l_ref - l) - (l_ref - l) - 1, here on the means
        kl = kl_estimate(mu, mu_ref, 'k3').mean(dim=-1)                       # [B, A]
        mask = rollout.action_mask
        loss = self.beta * aggregate(kl, mask, weights.kl, self.aggregation, ctx)
        return {'loss': loss, 'mean': masked_mean(kl.detach(), mask & (weights.kl > 0))}
