"""The VAR family of the Shapes benchmark: the multi-scale residual VQVAE (``msvq``) and the
class-conditional VAR transformer (``var-c2i``) of ``configs/_base_/policies/var_shapes_c2i.py``."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .common import DATA_SEED_OFFSET
from .generator import GeneratorPretrainer
from .loop import register
from .tokenizer import TokenizerPretrainer

CONFIG_VAR_C2I = 'configs/_base_/policies/var_shapes_c2i.py'
POLICY_TYPE = 'VARPolicy'


@register
class MSVQPretrainer(TokenizerPretrainer):
    """VAR's multi-scale residual VQVAE (``policy.tokenizer`` and ``policy.patch_nums`` of a
    VAR config), trained with VAR's quantizer loss (``VectorQuantizer2.forward`` of
    FoundationVision/VAR) without its GAN and perceptual terms:

    * residual quantisation over the scales as in inference (area-downsampled residual, nearest
      code, bicubic upsampling, the scale's Phi), on the *detached* latent ``f``;
    * ``vq = mean over scales s of [beta * ||sg(f_hat_s) - f||^2 + ||f_hat_s - sg(f)||^2]``
      (``f_hat_s`` the partial sum after scale s: the second term trains the codebook and the
      Phi convs, the first commits the encoder), ``beta = 0.25``;
    * straight-through decoding ``decoder(post_quant_conv(sg(f_hat) - sg(f) + f))``;
    * reconstruction L2 (or L1) on images in [-1, 1], foreground-weighted as the VQ trainer.

    Dead codes (unused for ``--restart-every`` steps) are re-initialised to residual vectors of
    the current batch (our addition, as the VQ trainer; VAR relies on its large data instead).
    """

    name = 'msvq'
    help = "VAR's multi-scale residual VQVAE (policy.tokenizer of a VAR config)"
    default_config = CONFIG_VAR_C2I
    policy_type = POLICY_TYPE
    card_title = ('The Shapes multi-scale residual VQVAE of VAR (`MultiScaleVQVAE`, official key '
                  'names).')
    # the shipped msvq_shapes: c2i reconstructions 0.92 strict at step 1000, 1.00 at 2500
    defaults = dict(steps=2500, batch_size=32, lr=2e-3, warmup=100, lr_schedule='cosine',
                    weight_decay=0.0, beta2=0.99)

    c2i_fraction_default = 0.5

    def _build_vae(self):
        from vargo.components.tokenizers.msvq import build_msvq
        return build_msvq(dict(self.cfg.policy.tokenizer), patch_nums=self.cfg.policy.patch_nums)

    def build(self):
        self.vae = self._build_vae()
        self.vae.train()
        for p in self.vae.parameters():
            p.requires_grad_(True)
        self.make_streams(self.vae.vocab_size)
        self._rest = None
        return [p for p in self.vae.parameters()]

    def _forward(self, x: Tensor):
        """``x`` in [-1, 1] -> (reconstruction, vq loss, ids [N], residual vectors [N, C])."""
        vae, q = self.vae, self.vae.quantize
        f = vae.quant_conv(vae.encoder(x))                                # [B, C, h, w]
        b, c, hh, ww = f.shape
        f_nog = f.detach()
        f_rest = f_nog.clone()
        f_hat = torch.zeros_like(f_nog)
        vq = f.new_zeros(())
        ids, rests = [], []
        num_scales = q.num_scales
        for si, pn in enumerate(q.patch_nums):
            z = f_rest if si == num_scales - 1 else F.interpolate(f_rest, size=(pn, pn),
                                                                 mode='area')
            z = z.permute(0, 2, 3, 1).reshape(-1, c)
            with torch.no_grad():
                idx = q._nearest(z)
            ids.append(idx)
            rests.append(z)
            h = q._h(idx.view(b, pn * pn), si, (hh, ww))                  # Phi(upsampled codes)
            f_hat = f_hat + h
            f_rest = f_rest - h.detach()
            vq = vq + self.args.beta * F.mse_loss(f_hat.detach(), f) + F.mse_loss(f_hat, f_nog)
        vq = vq / num_scales
        f_st = (f_hat.detach() - f_nog) + f                               # straight-through
        rec = vae.decoder(vae.post_quant_conv(f_st))
        return rec, vq, torch.cat(ids), torch.cat(rests)

    def step(self, s):
        images = self.batch(s)
        x = images * 2 - 1
        rec, vq, ids, rests = self._forward(x)
        rec_loss = self.reconstruction_loss(rec, x, images)
        loss = rec_loss + vq
        self._rest = rests
        return loss, {'loss': loss.item(), 'rec': rec_loss.item(), 'vq': vq.item(),
                      **self.code_statistics(ids, s, rec, x)}

    def after_update(self, s):
        return self.restart_dead_codes(self.vae.quantize.embedding.weight, self._rest, s,
                                       normalize=False)

    def weights(self):
        return self.vae.state_dict()

    def card_details(self):
        tok = dict(self.cfg.policy.tokenizer)
        return {'architecture': {'tokenizer': tok,
                                 'patch_nums': list(self.cfg.policy.patch_nums),
                                 'tokens': self.vae.num_tokens,
                                 'parameters': sum(p.numel() for p in self.vae.parameters())},
                'data': self.data_description(),
                'loss': f'{self.recon_loss_description()} + VAR\'s multi-scale VQ loss (mean '
                        f'over scales of {self.args.beta} * commitment + codebook/Phi term)'}

    @torch.no_grad()
    def evaluate(self, path, quick=False):
        from vargo.components.policies.var import load_var_file
        vae = self._build_vae().eval()
        load_var_file(vae, path, what='VAR VQVAE')
        return self.reconstruction_eval(vae, vae.vocab_size, quick)


@register
class VARC2IPretrainer(GeneratorPretrainer):
    """The class-conditional VAR transformer (``policy`` of a VAR config) trained with
    :meth:`VARPolicy.pretrain_loss` (teacher-forced cross-entropy over all scales' tokens,
    labels dropped to the null class with ``class_dropout_prob``, for CFG) on the multi-scale
    tokens of freshly rendered Shapes c2i images, encoded on the fly by the config's frozen
    VQVAE. Evaluated by sampling every class with the config's ``sampler``."""

    name = 'var-c2i'
    help = 'the class-conditional VAR transformer (policy of a VAR config; its msvq must exist)'
    task = 'c2i'
    default_config = CONFIG_VAR_C2I
    policy_type = POLICY_TYPE
    tokenizer_noun = 'VQVAE'
    card_title = 'The Shapes class-conditional VAR base model (next-scale prediction).'
    defaults = dict(steps=1200, batch_size=32, lr=1e-3, warmup=50, lr_schedule='constant',
                    weight_decay=0.05, beta2=0.95)

    def step(self, s):
        from vargo.core.types import Conditions
        images, conds = self.stream.batch(s)
        tokens = self.policy.encode_images(images)                        # [B, L]
        loss = self.policy.pretrain_loss(tokens, Conditions(
            class_ids=torch.tensor(conds, dtype=torch.long)))
        return loss, {'loss': loss.item()}

    def weights(self):
        # the block-causal mask buffer (an official key) holds -inf, which the float16 check of
        # save_weights rejects: store the float16 minimum instead (attention logits of VAR's
        # l2-normalised q, k are <= 100 in magnitude, so exp(-65504 + ...) is exactly 0 in
        # float32 and the loaded model computes the same function)
        state = self.policy.var.state_dict()
        state['attn_bias_for_masking'] = state['attn_bias_for_masking'].clamp_min(
            torch.finfo(torch.float16).min)
        return state

    def card_details(self):
        pol = self.policy
        tokenizer = self.args.tokenizer_checkpoint or self.cfg.policy.tokenizer_checkpoint
        return {'architecture': {
                    'arch': dict(self.cfg.policy.arch), 'patch_nums': list(pol.patch_nums),
                    'tokens': pol.num_actions, 'scales': pol.num_steps,
                    'vocab_size': pol.cfg.vocab_size, 'num_classes': pol.cfg.num_classes,
                    'class_dropout_prob': pol.class_dropout_prob,
                    'parameters': sum(p.numel() for p in pol.var.parameters())},
                'notes': 'the block-causal mask buffer attn_bias_for_masking is stored with the '
                         'float16 minimum (-65504) instead of -inf; VAR\'s attention logits are '
                         '<= 100 in magnitude, so the loaded model computes the same function',
                'data': f'ShapesImageDataset(split=train, task=c2i, seed={self.args.seed} + '
                        f'{DATA_SEED_OFFSET}) images, fresh every step, encoded on the fly by '
                        f'the frozen multi-scale VQVAE '
                        f'({tokenizer})'}
