"""The VQGAN-transformer family of the Shapes benchmark (CompVis/taming-transformers): the VQGAN
tokenizer (``vqgan``) and the class-conditional minGPT over its codes (``vqgan-c2i``) of
``configs/_base_/policies/vqgan_shapes_c2i.py``."""
from __future__ import annotations

import torch
from torch import Tensor

from .common import DATA_SEED_OFFSET
from .generator import GeneratorPretrainer
from .loop import register
from .tokenizer import TokenizerPretrainer

CONFIG_VQGAN_C2I = 'configs/_base_/policies/vqgan_shapes_c2i.py'
POLICY_TYPE = 'VQGANTransformerPolicy'


@register
class VQGANPretrainer(TokenizerPretrainer):
    """taming-transformers' VQGAN (``policy.tokenizer`` of a VQGAN-transformer config;
    :class:`~vargo.components.tokenizers.vqgan.VQGAN`, official ``VQModel`` keys: taming's
    ``Encoder`` / ``Decoder`` with attention at ``attn_resolutions`` and in the middle blocks,
    ``VectorQuantizer2`` with a Euclidean, *not* L2-normalised, codebook).

    Trained with the quantizer loss of ``VectorQuantizer2`` (``legacy=False``): nearest code by
    ``|z|^2 + |e|^2 - 2 z e``, ``codebook = ||z_q - sg(z)||^2``, ``commit = ||sg(z_q) - z||^2``,
    ``loss = rec + codebook + beta * commit``, ``beta = 0.25``, straight-through decoding of
    ``z + sg(z_q - z)``. ``VQLPIPSWithDiscriminator``'s perceptual and GAN terms are left out
    (an ImageNet LPIPS and a patch discriminator are pointless at 32 px, as for the other Shapes
    tokenizers): ``rec`` is the foreground-weighted L2 (or L1) of the VQ trainer on images in
    [-1, 1]. Dead codes (unused for ``--restart-every`` steps) are re-initialised to encoder
    outputs of the current batch (our addition; taming relies on ImageNet's size instead).
    Evaluated as ``vq``: ShapesEval of the reconstructions of ground-truth 'eval' images.
    """

    name = 'vqgan'
    help = "taming-transformers' VQGAN (policy.tokenizer of a VQGAN-transformer config)"
    default_config = CONFIG_VQGAN_C2I
    policy_type = POLICY_TYPE
    card_title = ("The Shapes VQGAN tokenizer (taming-transformers' `VQModel` architecture and "
                  "key names: `Encoder` / `Decoder` with attention, `VectorQuantizer2`), trained "
                  "without its LPIPS and GAN terms.")
    card_noun = 'VQGAN'
    # the shipped vqgan_shapes: c2i reconstructions strict 0.97 at step 1000, 1.00 at 1500
    defaults = dict(steps=2000, batch_size=32, lr=2e-3, warmup=100, lr_schedule='cosine',
                    weight_decay=0.0, beta2=0.99)
    c2i_fraction_default = 0.5

    def _build_vqgan(self):
        from vargo.components.tokenizers.vqgan import build_vqgan
        tok = self.cfg.policy.get('tokenizer')
        if not isinstance(tok, dict):
            raise ValueError(f'{self.args.config}: policy.tokenizer={tok!r} is a preset name; the '
                             f'vqgan subcommand trains a dict of VQGAN arguments (e.g. '
                             f'{CONFIG_VQGAN_C2I})')
        vq = build_vqgan(dict(tok))
        size = self.cfg.policy.get('image_size')
        if vq.ddconfig['resolution'] != size:
            raise ValueError(f'{self.args.config}: policy.tokenizer resolution='
                             f'{vq.ddconfig["resolution"]} differs from policy.image_size={size}; '
                             f'set tokenizer resolution={size} (it places the attention levels)')
        return vq

    def build(self):
        self.vq = self._build_vqgan().train()
        for p in self.vq.parameters():
            p.requires_grad_(True)
        self.make_streams(self.vq.codebook_size)
        self._z = None
        return list(self.vq.parameters())

    def _forward(self, x: Tensor):
        """``x`` in [-1, 1] -> (reconstruction, z [N, C], ids [N], z_q [N, C]), raster order."""
        vq = self.vq
        h = vq.quant_conv(vq.encoder(x))                                 # [B, C, h, w]
        b, c, hh, ww = h.shape
        z = h.permute(0, 2, 3, 1).reshape(-1, c)
        with torch.no_grad():
            _, ids = vq.quantize.quantize(h)                            # official distance
        ids = ids.reshape(-1)
        z_q = vq.quantize.embedding(ids)
        z_st = z + (z_q - z).detach()
        rec = vq.decode_latent(z_st.view(b, hh, ww, c).permute(0, 3, 1, 2))
        return rec, z, ids, z_q

    def step(self, s):
        a = self.args
        images = self.batch(s)
        x = images * 2 - 1
        rec, z, ids, z_q = self._forward(x)
        rec_loss = self.reconstruction_loss(rec, x, images)
        codebook = (z_q - z.detach()).pow(2).mean()
        commit = (z_q.detach() - z).pow(2).mean()
        loss = rec_loss + codebook + a.beta * commit
        self._z = z.detach()
        return loss, {'loss': loss.item(), 'rec': rec_loss.item(), 'codebook': codebook.item(),
                      'commit': commit.item(), **self.code_statistics(ids, s, rec, x)}

    def after_update(self, s):
        return self.restart_dead_codes(self.vq.quantize.embedding.weight, self._z, s,
                                       normalize=False)

    def weights(self):
        return self.vq.state_dict()

    def card_details(self):
        tok = dict(self.cfg.policy.tokenizer)
        size = self.cfg.policy.image_size
        return {'architecture': {'tokenizer': tok, 'downsample': self.vq.downsample,
                                 'tokens': (size // self.vq.downsample) ** 2,
                                 'parameters': sum(p.numel() for p in self.vq.parameters())},
                'data': self.data_description(),
                'loss': f'{self.recon_loss_description()} + codebook + {self.args.beta:g} * '
                        f'commitment (VectorQuantizer2, legacy=False; Euclidean codebook); no '
                        f'LPIPS, no discriminator'}

    @torch.no_grad()
    def evaluate(self, path, quick=False):
        from vargo.components.policies.vqgan import load_first_stage, read_official_state_dict
        vq = self._build_vqgan().eval()
        load_first_stage(vq, read_official_state_dict(path, what='VQGAN tokenizer'),
                         source=f'VQGAN tokenizer file {path!r}')
        return self.reconstruction_eval(vq, vq.codebook_size, quick)


@register
class VQGANC2IPretrainer(GeneratorPretrainer):
    """taming's class-conditional minGPT (``policy`` of a VQGAN-transformer config) trained with
    :meth:`VQGANTransformerPolicy.pretrain_loss` -- the official ``Net2NetTransformer.
    shared_step`` with ``pkeep=1``: next-token cross-entropy of the raster VQGAN codes after the
    class token (no label dropout: the model has no null class, so no guidance) -- on freshly
    rendered Shapes c2i images, encoded on the fly by the config's frozen VQGAN. Evaluated by
    sampling every class with the config's ``sampler`` (``cfg_scale=1``)."""

    name = 'vqgan-c2i'
    help = ('the class-conditional VQGAN transformer (policy of a VQGAN-transformer config; its '
            'vqgan must exist)')
    task = 'c2i'
    default_config = CONFIG_VQGAN_C2I
    policy_type = POLICY_TYPE
    tokenizer_noun = 'VQGAN'
    card_title = ("The Shapes class-conditional VQGAN transformer base model (taming-transformers' "
                  "minGPT over VQGAN codes, the class as its first token; no guidance).")
    # taming's Net2NetTransformer.configure_optimizers: AdamW betas (0.9, 0.95), weight decay
    # 0.01. The shipped vqgan_shapes_c2i: 2400 constant-LR steps at lr 2e-3 (strict 0.47
    # unguided, loss still falling; model card); at lr 1e-3, 1600 steps reached strict 0.36
    defaults = dict(steps=2400, batch_size=64, lr=2e-3, warmup=50, lr_schedule='constant',
                    weight_decay=0.01, beta2=0.95)

    def build(self):
        if self.args.cfg_scales and any(c != 1 for c in self.args.cfg_scales):
            raise ValueError(f'--cfg-scales {self.args.cfg_scales}: the VQGAN transformer has no '
                             f'null class to guide with; drop --cfg-scales (or pass 1)')
        return super().build()

    def step(self, s):
        from vargo.core.types import Conditions
        images, conds = self.stream.batch(s)
        tokens = self.policy.vq.encode(images)                          # [B, T]
        loss = self.policy.pretrain_loss(tokens, Conditions(
            class_ids=torch.tensor(conds, dtype=torch.long)))
        return loss, {'loss': loss.item()}

    def weights(self):
        return self.policy.transformer.state_dict()

    def card_details(self):
        pol = self.policy
        tokenizer = self.args.tokenizer_checkpoint or self.cfg.policy.tokenizer_checkpoint
        return {'architecture': {
                    'arch': dict(self.cfg.policy.arch), 'task': self.task,
                    'tokens': pol.num_actions, 'block_size': pol.cfg.block_size,
                    'condition': 'class id as token id c of the shared embedding (Labelator)',
                    'vocab_size': pol.cfg.vocab_size, 'num_classes': pol.num_classes,
                    'parameters': sum(p.numel() for p in pol.transformer.parameters())},
                'notes': 'weights: the bare minGPT keys of the official transformer.* (no '
                         'causal-mask buffers, recomputed at load); weight decay on every '
                         'parameter of >= 2 dimensions (the shared loop: tok_emb and pos_emb '
                         'included, which taming exempts)',
                'data': f'ShapesImageDataset(split=train, task=c2i, seed={self.args.seed} + '
                        f'{DATA_SEED_OFFSET}) images, fresh every step, VQGAN-encoded on the fly '
                        f'by the frozen tokenizer ({tokenizer})'}
