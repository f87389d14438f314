"""exclude_frozen_submodules: frozen tokenizers / text encoders stay out of policy state dicts
(components/policies/frozen.py), so RL checkpoints hold only what is trained."""
import torch
from torch import nn

from vargo.components.policies.frozen import exclude_frozen_submodules


class Toy(nn.Module):
    def __init__(self, with_text=True):
        super().__init__()
        self.body = nn.Linear(2, 2)
        self.vq = nn.Linear(2, 3)
        self.text_encoder = nn.Linear(3, 1) if with_text else None
        exclude_frozen_submodules(self, ('vq', 'text_encoder'))


def test_state_dict_omits_the_frozen_modules_and_loading_keeps_them():
    torch.manual_seed(0)
    a, b = Toy(), Toy()
    sd = a.state_dict()
    assert sorted(sd) == ['body.bias', 'body.weight']
    vq_before = b.vq.weight.clone()
    b.load_state_dict(sd, strict=True)                 # strict: the frozen keys are filled in
    assert torch.equal(b.body.weight, a.body.weight) and torch.equal(b.vq.weight, vq_before)


def test_absent_modules_are_skipped_and_nested_prefixes_work():
    outer = nn.Sequential(Toy(with_text=False))
    assert sorted(outer.state_dict()) == ['0.body.bias', '0.body.weight']
    outer.load_state_dict(outer.state_dict(), strict=True)
