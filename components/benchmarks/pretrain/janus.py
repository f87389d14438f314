"""The Janus family of the Shapes benchmark (Janus-Pro's architecture through transformers'
``JanusForConditionalGeneration``): the Janus VQ (``janus-vq``) and the text-to-image model over
its codes (``janus-t2i``) of ``configs/_base_/policies/janus_shapes_t2i.py``."""
from __future__ import annotations

import torch
from torch import Tensor

from .common import DATA_SEED_OFFSET
from .generator import GeneratorPretrainer
from .loop import register
from .tokenizer import L2VQPretrainer

CONFIG_JANUS_T2I = 'configs/_base_/policies/janus_shapes_t2i.py'
POLICY_TYPE = 'JanusPolicy'


def _janus_config(cfg, path: str):
    """The ``JanusConfig`` of a Janus config's ``policy.arch`` (built from ``arch``, no
    ``model_path``), with its word-level tokenizer's special ids."""
    from vargo.components.policies.janus import build_janus_config, word_level_tokenizer
    pol = cfg.policy
    if pol.get('model_path') or not isinstance(pol.get('arch'), dict) \
            or not isinstance(pol.get('tokenizer'), dict):
        raise ValueError(f'{path}: the janus subcommands train a model built from policy.arch '
                         f'and policy.tokenizer=dict(vocabulary=...) (e.g. {CONFIG_JANUS_T2I}), '
                         f'not a model_path')
    tok = word_level_tokenizer(pol.tokenizer['vocabulary'],
                               roles=tuple(pol.get('roles', ('<|User|>', '<|Assistant|>'))))
    return build_janus_config(dict(pol.arch), token_ids=dict(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id))


@register
class JanusVQPretrainer(L2VQPretrainer):
    """Janus-Pro's image tokenizer at Shapes size: transformers' ``JanusVQVAE`` (LlamaGen's VQ
    architecture, which Janus-Pro uses: encoder and decoder with attention at the lowest
    resolution, an L2-normalised codebook; transformers' key names) of ``policy.arch.vq``,
    trained with the loss of :class:`~.tokenizer.L2VQPretrainer` (LlamaGen's ``vq_loss``
    without its GAN and perceptual terms). Quantised as the official Janus VQ quantises
    (:class:`~vargo.components.policies.janus.JanusImageTokenizer`: nearest code by cosine),
    which is also how ``janus-t2i`` encodes its training images. Evaluated as ``vq``."""

    name = 'janus-vq'
    help = "Janus-Pro's VQ tokenizer (transformers' JanusVQVAE; policy.arch.vq of a Janus config)"
    default_config = CONFIG_JANUS_T2I
    policy_type = POLICY_TYPE
    card_title = ("The Shapes Janus VQ tokenizer (transformers' `JanusVQVAE`: LlamaGen's VQ "
                  "architecture as Janus-Pro uses it, L2-normalised codebook).")
    card_noun = 'Janus VQ'
    defaults = dict(steps=2000, batch_size=32, lr=2e-3, warmup=100, lr_schedule='cosine',
                    weight_decay=0.0, beta2=0.99)

    def _build_vq(self):
        from transformers.models.janus.modeling_janus import JanusVQVAE
        from vargo.components.policies.janus import JanusImageTokenizer
        config = _janus_config(self.cfg, self.args.config).vq_config
        size = int(self.cfg.policy.arch.get('vision', {}).get('image_size', 0))
        if size != 32:
            raise ValueError(f'{self.args.config}: policy.arch.vision.image_size={size}; Shapes '
                             f'images are 32 px (it also sets the VQ token grid with patch_size)')
        return JanusImageTokenizer(JanusVQVAE(config))

    def build(self):
        self.tok = self._build_vq().train()
        for p in self.tok.parameters():
            p.requires_grad_(True)
        self.make_streams(self.tok.codebook_size)
        self._z = None
        return list(self.tok.parameters())

    def _forward(self, x: Tensor):
        """``x`` in [-1, 1] -> (reconstruction, z [N, C] normalised, ids [N], z_q [N, C])."""
        tok = self.tok
        z = tok.latent(x)                                                  # [B, n, C]
        emb = tok.codebook()
        with torch.no_grad():
            ids = tok.nearest(z)                                           # [B, n]
        z_q = emb[ids]
        rec = tok.decode_latent(z + (z_q - z).detach())
        return rec, z.flatten(0, 1), ids.flatten(), z_q.flatten(0, 1)

    def codebook_weight(self) -> Tensor:
        return self.tok.vq.quantize.embedding.weight

    def weights(self):
        return self.tok.vq.state_dict()

    def card_details(self):
        vq = dict(self.cfg.policy.arch.vq)
        return {'architecture': {'tokenizer': {'type': 'JanusVQVAE', **vq},
                                 'tokens': self.tok.grid_size ** 2,
                                 'parameters': sum(p.numel() for p in self.tok.parameters())},
                'data': self.data_description(),
                'loss': f'{self.recon_loss_description()} + codebook + {self.args.beta:g} * '
                        f'commitment (L2-normalised codes)'}

    @torch.no_grad()
    def evaluate(self, path, quick=False):
        from vargo.components.policies.janus import JanusPolicy
        tok = self._build_vq().eval()
        JanusPolicy._load_part(tok.vq, path, 'Janus VQ tokenizer')
        return self.reconstruction_eval(tok, tok.codebook_size, quick)


@register
class JanusT2IPretrainer(GeneratorPretrainer):
    """The Janus model of a Janus config (``JanusPolicy`` built from ``policy.arch``) trained
    with :meth:`JanusPolicy.pretrain_loss`: next-token cross-entropy of the image tokens from the
    generation head after the prompt in Janus-Pro's chat template, the prompt replaced by its
    pad-token twin (the sampler's unconditional prompt) with probability ``--prompt-dropout``
    for CFG. Trained: the language model and the generation embedding, aligner and head (what a
    ``checkpoint`` holds; in RL only the language model trains, as STAGE). Data: freshly
    rendered Shapes t2i images, encoded on the fly by the config's frozen Janus VQ. Evaluated by
    sampling train and held-out prompts with the config's ``sampler``."""

    name = 'janus-t2i'
    help = 'the Janus text-to-image model (policy of a Janus config; its janus-vq must exist)'
    task = 't2i'
    default_config = CONFIG_JANUS_T2I
    policy_type = POLICY_TYPE
    tokenizer_noun = 'Janus VQ'
    per_condition_help = 'samples per prompt in the final evaluation (default 4)'
    card_title = ("The Shapes text-to-image base model in Janus-Pro's architecture "
                  "(transformers' `JanusForConditionalGeneration`: prompt in the chat template, "
                  "image tokens through the generation embedding, aligner and head).")
    # as the LlamaGen t2i base (same size class, same data)
    defaults = dict(steps=3000, batch_size=64, lr=1e-3, warmup=50, lr_schedule='constant',
                    weight_decay=0.05, beta2=0.95)

    @classmethod
    def add_arguments(cls, p):
        super().add_arguments(p)
        p.add_argument('--prompt-dropout', type=float, default=0.1,
                       help='probability of training on the pad-token (unconditional) prompt, '
                            'for CFG (default 0.1)')

    @classmethod
    def add_evaluation_arguments(cls, p):
        p.add_argument('--eval-prompts', type=int, default=192,
                       help='kind-balanced prompts per split in the final evaluation')

    def check_task(self):
        _janus_config(self.cfg, self.args.config)
        if not 0.0 <= self.args.prompt_dropout < 1.0:
            raise ValueError(f'--prompt-dropout {self.args.prompt_dropout} must be in [0, 1)')

    def build(self):
        super().build()
        for part in ('generation_embeddings', 'generation_aligner', 'generation_head'):
            getattr(self.policy.janus.model, part).requires_grad_(True)
        self.dropout_rng = torch.Generator().manual_seed(self.args.seed + DATA_SEED_OFFSET + 7)
        return list(self.policy.generation_modules().parameters())

    def step(self, s):
        from vargo.core.types import Conditions
        images, prompts = self.stream.batch(s)
        tokens = self.policy.image_tokenizer.encode(images)                    # [B, T]
        loss = self.policy.pretrain_loss(tokens, Conditions(prompts=list(prompts)),
                                         null_prob=self.args.prompt_dropout,
                                         generator=self.dropout_rng)
        return loss, {'loss': loss.item()}

    def weights(self):
        return self.policy.generation_modules().state_dict()

    def card_details(self):
        pol = self.policy
        tokenizer = self.args.tokenizer_checkpoint or self.cfg.policy.tokenizer_checkpoint
        text = pol.janus.config.text_config
        return {'architecture': {
                    'arch': {k: dict(v) for k, v in dict(self.cfg.policy.arch).items()},
                    'task': self.task, 'tokens': pol.num_actions,
                    'vocab_size': int(text.vocab_size), 'tokenizer_words': len(pol.tokenizer),
                    'prompt': pol.format_prompt('{prompt}') + ' <begin_of_image>',
                    'prompt_dropout': self.args.prompt_dropout,
                    'parameters': sum(p.numel() for p in pol.generation_modules().parameters())},
                'notes': 'weights: the generation parts of JanusModel (language_model.*, '
                         'generation_embeddings.*, generation_aligner.*, generation_head.*); the '
                         'understanding encoder and the text head are not shipped (random at '
                         'build; image generation never reads them)',
                'data': f'ShapesImageDataset(split=train, task=t2i, seed={self.args.seed} + '
                        f'{DATA_SEED_OFFSET}) images, fresh every step, encoded on the fly by '
                        f'the frozen Janus VQ ({tokenizer})'}
