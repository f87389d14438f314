"""A toy policy family for testing the runner's mechanics in milliseconds.

``ToyPolicy``: ``A`` independent categorical tokens over ``V`` colours; logits come from a class
embedding through a linear layer. ``ToySampler``: samples them with :class:`BatchRNG` noise.
Images: each token paints one cell of a ``side x side`` grid.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vargo.core.interfaces import Policy, Sampler
from vargo.core.registry import POLICIES, SAMPLERS
from vargo.core.rng import BatchRNG
from vargo.core.types import LogprobSpec, PolicyEval, Rollout

PALETTE = torch.tensor([[0, 0, 0], [1, 1, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0],
                        [0, 1, 1], [1, 0, 1]], dtype=torch.float32)


@POLICIES.register_module(force=True)
class ToyPolicy(Policy):
    """Independent categorical tokens per cell (tests only)."""

    def __init__(self, *, num_classes: int = 4, side: int = 4, vocab_size: int = 8,
                 dim: int = 16):
        super().__init__()
        self.side, self.vocab_size = side, vocab_size
        self.num_actions = side * side
        self.embed = nn.Embedding(num_classes, dim)
        self.head = nn.Linear(dim, self.num_actions * vocab_size)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)

    def encode_conditions(self, cond):
        return cond

    def logits(self, class_ids):
        return self.head(self.embed(class_ids)).view(-1, self.num_actions, self.vocab_size)

    def evaluate(self, rollout: Rollout, *, spec: LogprobSpec, with_entropy: bool = True):
        logp_all = F.log_softmax(self.logits(rollout.cond.class_ids) / spec.temperature, -1)
        logp = logp_all.gather(-1, rollout.actions.unsqueeze(-1)).squeeze(-1)
        ent = -(logp_all.exp() * logp_all).sum(-1) if with_entropy else None
        return PolicyEval(logp=logp, entropy=ent)

    def decode(self, rollout: Rollout):
        colours = PALETTE[rollout.actions.cpu() % len(PALETTE)]  # [B, A, 3]
        b = colours.shape[0]
        img = colours.view(b, self.side, self.side, 3).permute(0, 3, 1, 2)
        return F.interpolate(img, scale_factor=4, mode='nearest')

    def embed_actions(self, rollout):
        return F.one_hot(rollout.actions, self.vocab_size).float()


@SAMPLERS.register_module(force=True)
class ToySampler(Sampler):
    """Samples ToyPolicy tokens by inverse CDF with BatchRNG uniforms (tests only)."""

    def __init__(self, *, temperature: float = 1.0, logprob_cfg: str = 'none'):
        self.spec = LogprobSpec(mode=logprob_cfg, temperature=temperature)

    def logprob_spec(self):
        return self.spec

    @torch.no_grad()
    def rollout(self, policy, cond, *, group_size, rng=None, prefix=None, stop_at_step=None,
                ctx=None):
        if ctx is not None:
            self.last_ctx = ctx      # the loop's iteration context (tests read it)
        cond = cond.repeat_interleave(group_size)
        b = len(cond)
        if rng is None:
            rng = BatchRNG(int(torch.randint(0, 2 ** 31, ())), 0, b, world_size=1, rank=0)
        probs = F.softmax(policy.logits(cond.class_ids) / self.spec.temperature, -1)
        u = rng.rand(policy.num_actions, 1)
        actions = (probs.cumsum(-1) < u).sum(-1).clamp_max(policy.vocab_size - 1)
        logp = probs.log().gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        a = policy.num_actions
        rollout = Rollout(
            cond=cond, group_ids=torch.arange(b) // group_size, actions=actions, logp_old=logp,
            action_mask=torch.ones(b, a, dtype=torch.bool), action_step=torch.arange(a),
            action_pos=torch.stack([torch.arange(a) // policy.side, torch.arange(a) % policy.side], -1),
            logp_old_cfg=self.spec.mode)
        rollout.images = policy.decode(rollout)
        return rollout


@POLICIES.register_module(force=True)
class ToyPolicyWithCheckpoint(ToyPolicy):
    """ToyPolicy that names an official-looking checkpoint file (tests of file checks)."""

    file_sources = {'c2i_B_256.pt': 'https://example.org/c2i_B_256.pt'}

    def __init__(self, *, checkpoint: str, **kwargs):
        super().__init__(**kwargs)
        self.checkpoint = checkpoint


from vargo.core.interfaces import RewardHead  # noqa: E402
from vargo.core.registry import REWARD_HEADS  # noqa: E402
from vargo.core.types import RewardOutput  # noqa: E402


@REWARD_HEADS.register_module(force=True)
class ToyBrightnessReward(RewardHead):
    """Mean pixel brightness of the image (tests only)."""

    def __call__(self, rollout, ctx):
        return RewardOutput(scores=rollout.images.float().mean(dim=(1, 2, 3)))


@REWARD_HEADS.register_module(force=True)
class ToyRegionReward(RewardHead):
    """Brightness, with per-action signals: ``regions`` (bright pixels) and ``weights`` (the
    action's token id / vocabulary size); records its context and one draw of a named stream of
    the iteration in ``ToyRegionReward.seen`` (tests only)."""

    seen: list = []

    def __call__(self, rollout, ctx):
        imgs = rollout.images.float()
        ToyRegionReward.seen.append(dict(ctx=ctx, noise=ctx.stream('rewards.r/noise').rand(2)))
        return RewardOutput(scores=imgs.mean(dim=(1, 2, 3)),
                            regions=imgs.mean(dim=1) > 0.5,
                            weights=rollout.actions.float() / 8.0)


from vargo.core.interfaces import TokenSelector  # noqa: E402
from vargo.core.registry import TOKEN_SELECTORS  # noqa: E402
from vargo.core.types import TokenWeights  # noqa: E402


@TOKEN_SELECTORS.register_module(force=True)
class RecordingSelector(TokenSelector):
    """All tokens; records what it was given (``RecordingSelector.seen``, tests only)."""

    seen: list = []

    def __call__(self, rollout, policy_eval, ref_eval, adv, *, policy, group_size, ctx=None):
        RecordingSelector.seen.append(dict(ctx=ctx, rewards=adv.rewards, rollout=rollout))
        m = rollout.action_mask.float()
        return TokenWeights(pg=m, kl=m)
