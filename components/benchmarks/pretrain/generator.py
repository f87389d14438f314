"""What the generator trainers share (LlamaGen's GPT, VAR, MAR): the config's policy trained on the
codes of its frozen tokenizer, evaluated by sampling with the config's sampler."""
from __future__ import annotations

import abc
from typing import Any, Optional

import torch

from .common import DATA_SEED_OFFSET, EVAL_SEED_OFFSET, ShapesStream, build_policy_from_config
from .evaluation import sampling_eval
from .loop import Pretrainer


class GeneratorPretrainer(Pretrainer):
    """The ``policy`` of a config trained on freshly rendered Shapes images of its ``task``,
    encoded on the fly by the config's frozen tokenizer (``--tokenizer-checkpoint`` overrides
    it); evaluated by :func:`~.evaluation.sampling_eval` of every condition of
    :meth:`eval_splits`.

    Subclasses implement :meth:`step`, :meth:`weights` and :meth:`card_details`.
    """

    task = 'c2i'
    card_kind = 'samples'
    #: what ``--tokenizer-checkpoint`` loads, for its help
    tokenizer_noun = ''
    per_condition_help = 'samples per class in the final evaluation (default 32)'

    @classmethod
    def add_arguments(cls, p):
        p.add_argument('--tokenizer-checkpoint', default=None,
                       help=f'{cls.tokenizer_noun} weights (default: policy.tokenizer_checkpoint '
                            f'of the config)')
        p.add_argument('--eval-per-condition', type=int, default=None,
                       help=cls.per_condition_help)
        cls.add_evaluation_arguments(p)
        p.add_argument('--cfg-scales', type=float, nargs='*', default=None,
                       help='also evaluate at these CFG scales (ShapesEval only), for choosing')

    @classmethod
    def add_evaluation_arguments(cls, p) -> None:
        """More options of the final evaluation (before ``--cfg-scales``)."""

    def default_out(self):
        return self.cfg.policy.checkpoint

    def policy_overrides(self, checkpoint: Optional[str]) -> dict:
        ov = {'checkpoint': checkpoint}
        if getattr(self.args, 'tokenizer_checkpoint', None):
            ov['tokenizer_checkpoint'] = self.args.tokenizer_checkpoint
        return ov

    def check_task(self) -> None:
        """Fail clearly when the config is not one this trains (beyond ``policy.type``)."""

    def build(self):
        self.check_task()
        torch.manual_seed(self.args.seed)
        self.policy = build_policy_from_config(self.cfg, overrides=self.policy_overrides(None))
        self.policy.train()
        self.stream = ShapesStream(self.task, self.args.seed + DATA_SEED_OFFSET,
                                   self.args.batch_size, self.args.steps)
        return self.policy.trainable_parameters()

    def eval_splits(self) -> tuple[str, ...]:
        """c2i: the 'train' classes; t2i: 'train' prompts and the held-out 'eval' ones."""
        return ('train', 'eval') if self.task == 't2i' else ('train',)

    def eval_conditions(self, split: str, quick: bool) -> tuple[list, int]:
        """``(conditions of ``split``, samples per condition)`` of the evaluation. c2i: every
        class, 2 samples each when ``quick``, else ``--eval-per-condition`` (default 32). t2i:
        ``--eval-prompts`` kind-balanced prompts of the split (48 when ``quick``), 1 sample each
        when ``quick``, else ``--eval-per-condition`` (default 4)."""
        if self.task == 't2i':
            from vargo.components.datasets.shapes import ShapesPromptDataset
            n = 48 if quick else self.args.eval_prompts
            ds = ShapesPromptDataset(split=split, num_prompts=n, seed=0)
            k = 1 if quick else (self.args.eval_per_condition or 4)
            return list(ds.prompts), k
        from vargo.components.datasets.shapes import NUM_CLASSES
        k = 2 if quick else (self.args.eval_per_condition or 32)
        return list(range(NUM_CLASSES)), k

    @abc.abstractmethod
    def card_details(self) -> dict[str, Any]:
        """Architecture / data facts for the card."""

    @torch.no_grad()
    def evaluate(self, path, quick=False):
        policy = build_policy_from_config(self.cfg, overrides=self.policy_overrides(path))
        policy.eval()
        return sampling_eval(policy, dict(self.cfg.sampler), task=self.task,
                             seed=self.args.seed + EVAL_SEED_OFFSET, splits=self.eval_splits(),
                             conditions=lambda split: self.eval_conditions(split, quick),
                             cfg_scales=self.args.cfg_scales, quick=quick)
