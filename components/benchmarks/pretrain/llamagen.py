"""The LlamaGen family of the Shapes benchmark: the VQ tokenizer (``vq``), the frozen T5 text
encoder (``text-encoder``) and the class- and text-conditional GPTs (``llamagen-c2i``,
``llamagen-t2i``) of ``configs/_base_/policies/llamagen_shapes_{c2i,t2i}.py``."""
from __future__ import annotations

import os
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .common import DATA_SEED_OFFSET, command_line, load_cfg, rel, save_weights, stem
from .generator import GeneratorPretrainer
from .loop import register
from .records import write_card, write_json
from .tokenizer import L2VQPretrainer

CONFIG_C2I = 'configs/_base_/policies/llamagen_shapes_c2i.py'
CONFIG_T2I = 'configs/_base_/policies/llamagen_shapes_t2i.py'
POLICY_TYPE = 'LlamaGenPolicy'


@register
class VQPretrainer(L2VQPretrainer):
    """LlamaGen's ``VQModel`` (:mod:`vargo.components.tokenizers.vq`, official key names)
    trained as LlamaGen's ``vq_loss`` without its GAN and perceptual terms (pointless at 32 px):
    the loss of :class:`~.tokenizer.L2VQPretrainer` (L2-normalised codes and encoder outputs,
    straight-through gradients, dead-code restarts)."""

    name = 'vq'
    help = 'the VQ tokenizer (policy.tokenizer of --config)'
    default_config = CONFIG_C2I
    policy_type = POLICY_TYPE
    card_title = 'The Shapes VQ tokenizer (LlamaGen `VQModel`, L2-normalised codebook).'
    defaults = dict(steps=4000, batch_size=32, lr=2e-3, warmup=100, lr_schedule='cosine',
                    weight_decay=0.0, beta2=0.99)

    def build(self):
        from vargo.components.tokenizers.vq import build_vq
        tok = dict(self.cfg.policy.tokenizer)
        if not tok.get('codebook_l2_norm', True):
            raise ValueError('the Shapes VQ trainer implements the L2-normalised codebook '
                             '(codebook_l2_norm=True) only')
        self.vq = build_vq(tok).train()
        self.make_streams(self.vq.codebook_size)
        self._z = None
        return [p for p in self.vq.parameters()]

    def _forward(self, x: Tensor):
        """``x`` in [-1, 1] -> (reconstruction, z [N, C] normalised, ids [N], z_q [N, C])."""
        vq, q = self.vq, self.vq.quantize
        h = vq.quant_conv(vq.encoder(x))                              # [B, C, h, w]
        b, c, hh, ww = h.shape
        z = F.normalize(h.permute(0, 2, 3, 1).reshape(-1, c), dim=-1)  # [B*h*w, C] raster
        emb = q.codebook()                                            # [V, C] normalised
        with torch.no_grad():
            ids = (z @ emb.t()).argmax(dim=1)          # nearest on the sphere = max cosine
        z_q = emb[ids]
        z_st = z + (z_q - z).detach()
        rec = vq.decode_latent(z_st.view(b, hh, ww, c).permute(0, 3, 1, 2))
        return rec, z, ids, z_q

    def codebook_weight(self) -> Tensor:
        return self.vq.quantize.embedding.weight

    def weights(self):
        return self.vq.state_dict()

    def card_details(self):
        tok = dict(self.cfg.policy.tokenizer)
        return {'architecture': {'tokenizer': tok,
                                 'parameters': sum(p.numel() for p in self.vq.parameters())},
                'data': self.data_description(),
                'loss': f'{self.args.rec_loss} reconstruction on [-1, 1] + codebook + '
                        f'{self.args.beta} * commitment (L2-normalised codes)'}

    @torch.no_grad()
    def evaluate(self, path, quick=False):
        from vargo.components.policies.llamagen import load_official
        from vargo.components.tokenizers.vq import build_vq
        vq = build_vq(dict(self.cfg.policy.tokenizer)).eval()
        load_official(vq, path, what='VQ tokenizer')
        return self.reconstruction_eval(vq, vq.codebook_size, quick)


class LlamaGenPretrainer(GeneratorPretrainer):
    """The LlamaGen GPT trained with :meth:`LlamaGenPolicy.pretrain_loss` (next-token
    cross-entropy, condition dropped to the null one with ``class_dropout_prob``, for CFG) on
    the VQ tokens of freshly rendered training images, encoded on the fly by the config's frozen
    VQ; evaluated by sampling with the config's ``sampler`` (ShapesEval of the 'train'
    conditions, and for t2i of the held-out 'eval' prompts; FID when the feature extractor is
    available)."""

    task = 'c2i'
    policy_type = POLICY_TYPE
    tokenizer_noun = 'VQ'
    per_condition_help = ('samples per condition in the final evaluation (default: c2i 32 per '
                          'class, t2i 4 per prompt)')
    defaults = dict(steps=600, batch_size=64, lr=1e-3, warmup=50, lr_schedule='cosine',
                    weight_decay=0.05, beta2=0.95)

    @classmethod
    def add_evaluation_arguments(cls, p):
        p.add_argument('--eval-prompts', type=int, default=192,
                       help='t2i: kind-balanced prompts per split in the final evaluation')

    def check_task(self):
        p = self.cfg.policy
        if p.get('task') != self.task:
            raise ValueError(f'{self.name} needs a {self.task} config, {self.args.config} has '
                             f'task={p.get("task")!r}')

    def conditions(self, conds):
        from vargo.core.types import Conditions
        if self.task == 'c2i':
            return Conditions(class_ids=torch.tensor(conds, dtype=torch.long))
        return Conditions(prompts=list(conds))

    def step(self, s):
        images, conds = self.stream.batch(s)
        with torch.no_grad():
            tokens = self.policy.vq.encode(images)                       # [B, T]
        loss = self.policy.pretrain_loss(tokens, self.conditions(conds))
        return loss, {'loss': loss.item()}

    def weights(self):
        return self.policy.gpt.state_dict()

    def card_details(self):
        pol = self.policy
        tokenizer = self.args.tokenizer_checkpoint or self.cfg.policy.tokenizer_checkpoint
        return {'architecture': {
                    'arch': dict(self.cfg.policy.arch), 'task': self.task,
                    'tokens': pol.num_actions, 'condition_positions': pol.cls_token_num,
                    'vocab_size': pol.cfg.vocab_size,
                    'class_dropout_prob': pol.class_dropout_prob,
                    'parameters': sum(p.numel() for p in pol.gpt.parameters())},
                'data': f'ShapesImageDataset(split=train, task={self.task}, seed='
                        f'{self.args.seed} + {DATA_SEED_OFFSET}) images, fresh every step, '
                        f'VQ-encoded on the fly by the frozen tokenizer '
                        f'({tokenizer})'}


@register
class LlamaGenC2IPretrainer(LlamaGenPretrainer):
    name = 'llamagen-c2i'
    help = 'the class-conditional LlamaGen GPT (policy of a c2i config)'
    task = 'c2i'
    default_config = CONFIG_C2I
    card_title = 'The Shapes class-conditional LlamaGen base model.'
    # the shipped model: ShapesEval strict rose to ~0.5 by step 800 and stayed (model card)
    defaults = {**LlamaGenPretrainer.defaults, 'steps': 1200, 'lr_schedule': 'constant'}


@register
class LlamaGenT2IPretrainer(LlamaGenPretrainer):
    name = 'llamagen-t2i'
    help = 'the text-conditional LlamaGen GPT (policy of a t2i config; its T5 must exist)'
    task = 't2i'
    default_config = CONFIG_T2I
    card_title = 'The Shapes text-conditional LlamaGen base model.'
    # the shipped model: 3000 constant-LR steps (strict 0.35 on train prompts; model card)
    defaults = {**LlamaGenPretrainer.defaults, 'steps': 3000, 'lr_schedule': 'constant'}


@register
class TextEncoderWriter:
    """The frozen word-level T5 of a t2i config (``policy.text_encoder``): random weights from
    ``T5Config`` under the config's ``seed``, not trained, written to the config's
    ``text_encoder.checkpoint`` so the t2i model never depends on transformers' init code."""

    name = 'text-encoder'
    help = 'write the seeded frozen T5 of a t2i config'
    card_title = ('The frozen word-level T5 text encoder of the Shapes t2i models (random '
                  'weights from a seeded `T5Config`, not trained).')
    card_kind = 'text-encoder'

    @staticmethod
    def add_arguments(p) -> None:
        p.add_argument('--config', default=CONFIG_T2I)
        p.add_argument('--out', default=None)
        p.add_argument('--threads', type=int, default=2)

    @classmethod
    def run(cls, args, argv) -> dict[str, Any]:
        """Build the config's word-level T5 from its seed and write it (no training)."""
        from vargo.components.tokenizers.text import build_text_encoder
        cfg = load_cfg(args.config)
        tcfg = dict(cfg.policy.get('text_encoder') or {})
        if tcfg.get('type') != 'word-t5':
            raise ValueError(f'{args.config}: policy.text_encoder must be a word-t5 dict, got '
                             f'{tcfg.get("type")!r}')
        out = args.out or tcfg.get('checkpoint')
        if not out:
            raise ValueError('no --out and no policy.text_encoder.checkpoint in the config')
        tcfg.pop('checkpoint', None)
        t0 = time.time()
        enc = build_text_encoder(tcfg)
        state = enc.model.state_dict()
        dtype = save_weights(state, out, dtype='float32', max_fp32_mb=1e9,
                             metadata={'subcommand': 'text-encoder', 'config': rel(args.config),
                                       'seed': str(tcfg.get('seed', 0)),
                                       'command': command_line(argv)})
        # the written file must rebuild the same encoder through the config
        check = build_text_encoder({**tcfg, 'checkpoint': out})
        probe = ['a red circle', 'two blue squares', 'a cyan triangle left of a yellow square']
        e1, m1 = enc(probe)
        e2, m2 = check(probe)
        assert torch.equal(e1, e2) and torch.equal(m1, m2)
        record = {
            'name': os.path.basename(stem(out)), 'subcommand': 'text-encoder',
            'command': command_line(argv), 'config': rel(args.config),
            'seed': int(tcfg.get('seed', 0)), 'steps': 0,
            'weights': dict(file=os.path.basename(out), stored_dtype=dtype,
                            bytes=os.path.getsize(out)),
            'train_wall_time_s': round(time.time() - t0, 1),
            'architecture': {'text_encoder': {k: v for k, v in tcfg.items() if k != 'vocabulary'},
                             'vocabulary': list(tcfg['vocabulary']),
                             'token_ids': {k: v for k, v in enc.vocab.items()},
                             'parameters': sum(p.numel() for p in enc.model.parameters())},
            'evaluation': {'features': f'[B, {enc.max_length}, {enc.dim}] float32, right-padded',
                           'feature_rms': round(float(e1[m1].pow(2).mean().sqrt()), 4)},
            'log': [],
        }
        write_json(record, stem(out) + '.json')
        write_card(record, stem(out) + '.md', cls)
        return record
