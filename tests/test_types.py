"""The Rollout's action axis fits all three families (docs/design.md, "The action axis")."""
from dataclasses import dataclass
from typing import ClassVar

import torch

from vargo.core.types import Conditions, FamilyExtras, Rollout

PATCH_NUMS = (1, 2, 3, 4)


@dataclass
class VARExtras(FamilyExtras):
    """Per-scale ids of a next-scale rollout; patch_nums is shared by the batch."""
    scale_ids: list  # per scale: [B, h, w]
    patch_nums: tuple = PATCH_NUMS
    batch_fields: ClassVar[tuple] = ()

    def index(self, idx):
        return VARExtras([s.index_select(0, idx) for s in self.scale_ids], self.patch_nums)


@dataclass
class MARExtras(FamilyExtras):
    """MAR: commit step of every token, the AR latent of every step, chain states."""
    commit_step: torch.Tensor      # [B, N]
    z: torch.Tensor                # [B, S_ar, N, C]
    x_t: torch.Tensor              # [B, A, D] state before each transition
    diffusion_step: torch.Tensor   # [A] (shared)
    batch_fields: ClassVar[tuple] = ('commit_step', 'z', 'x_t')


def _var_rollout(b=4):
    steps, pos = [], []
    for s, n in enumerate(PATCH_NUMS):
        r, c = torch.meshgrid(torch.arange(n), torch.arange(n), indexing='ij')
        steps.append(torch.full((n * n,), s))
        pos.append(torch.stack([torch.full((n * n,), s), r.flatten(), c.flatten()], -1))
    a = sum(n * n for n in PATCH_NUMS)  # 30 actions
    ids = [torch.randint(0, 4096, (b, n, n)) for n in PATCH_NUMS]
    return Rollout(
        cond=Conditions(class_ids=torch.tensor([3, 3, 7, 7])), group_ids=torch.tensor([0, 0, 1, 1]),
        actions=torch.cat([i.flatten(1) for i in ids], 1), logp_old=torch.randn(b, a),
        action_mask=torch.ones(b, a, dtype=torch.bool), action_step=torch.cat(steps),
        action_pos=torch.cat(pos), extras=VARExtras(ids))


def _mar_rollout(b=4, n=4, k=3, d=16, s_ar=2):
    # A = n tokens x k diffusion transitions; random orders: per-sample AR step
    commit = torch.stack([torch.randperm(n) % s_ar for _ in range(b)])  # [B, N]
    step = commit.repeat_interleave(k, dim=1)                           # [B, A]
    pos = torch.stack([torch.arange(n) // 2, torch.arange(n) % 2], -1).repeat_interleave(k, 0)
    return Rollout(
        cond=Conditions(class_ids=torch.tensor([1, 1, 2, 2])), group_ids=torch.tensor([0, 0, 1, 1]),
        actions=torch.randn(b, n * k, d), logp_old=torch.randn(b, n * k),
        action_mask=torch.ones(b, n * k, dtype=torch.bool), action_step=step, action_pos=pos,
        extras=MARExtras(commit, torch.randn(b, s_ar, n, 8), torch.randn(b, n * k, d),
                         torch.arange(k).repeat(n)))


def test_var_rollout_fits_the_action_axis():
    r = _var_rollout()
    assert r.num_actions == 30 and not r.is_continuous
    assert r.steps().shape == (4, 30) and r.steps()[0, -16:].eq(3).all()
    sub = r.index(torch.tensor([2, 3]))
    assert sub.actions.shape == (2, 30) and sub.action_pos.shape == (30, 3)
    assert torch.equal(sub.extras.scale_ids[3], r.extras.scale_ids[3][2:])
    # per-scale weights (PANW) are [B, A] tensors on the same axis
    w = (torch.tensor([n * n for n in PATCH_NUMS], dtype=torch.float) ** -0.7)[r.steps()]
    assert w.shape == r.logp_old.shape


def test_mar_rollout_fits_the_action_axis():
    r = _mar_rollout()
    assert r.is_continuous and r.actions.shape == (4, 12, 16)
    assert r.steps().shape == (4, 12)
    sub = r.index(torch.tensor([1, 3]))
    assert torch.equal(sub.action_step, r.action_step[[1, 3]])   # per-sample steps indexed
    assert torch.equal(sub.extras.z, r.extras.z[[1, 3]])
    assert torch.equal(sub.extras.diffusion_step, r.extras.diffusion_step)  # shared kept
    cat = Rollout.cat([sub, sub])
    assert cat.batch_size == 4 and cat.extras.commit_step.shape == (4, 4)


def test_partial_rollout_masks_given_prefix():
    r = _var_rollout()
    r.prefix_steps = 2
    r.action_mask = r.steps() >= r.prefix_steps
    assert r.action_mask.sum(1).eq(30 - 1 - 4).all()


def test_shape_errors_name_the_field():
    import pytest
    with pytest.raises(ValueError, match='action_mask has shape'):
        Rollout(cond=Conditions(class_ids=torch.zeros(2, dtype=torch.long)),
                group_ids=torch.zeros(2, dtype=torch.long), actions=torch.zeros(2, 5, dtype=torch.long),
                logp_old=torch.zeros(2, 5), action_mask=torch.ones(2, 4, dtype=torch.bool),
                action_step=torch.arange(5), action_pos=torch.zeros(5, 2))


def test_conditions_group_layout():
    c = Conditions(class_ids=torch.tensor([5, 9]), prompts=['a', 'b'])
    g = c.repeat_interleave(3)
    assert g.class_ids.tolist() == [5, 5, 5, 9, 9, 9] and g.prompts == ['a'] * 3 + ['b'] * 3
