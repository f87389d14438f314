"""The MAR family of the Shapes benchmark: the KL VAE (``kl-vae``) and the class-conditional MAR
(``mar-c2i``, masked autoregression with a diffusion head) of
``configs/_base_/policies/mar_shapes_c2i.py``."""
from __future__ import annotations

import torch
from torch import Tensor

from .common import DATA_SEED_OFFSET
from .generator import GeneratorPretrainer
from .loop import register
from .tokenizer import TokenizerPretrainer

CONFIG_MAR_C2I = 'configs/_base_/policies/mar_shapes_c2i.py'
POLICY_TYPE = 'MARPolicy'


class _LatentRoundTrip:
    """``encode`` / ``decode`` of a KL VAE as :func:`reconstruction_eval` calls a tokenizer:
    images in [0, 1] -> scaled posterior means ``[B, D, h, w]`` -> images in [0, 1]."""

    def __init__(self, vae):
        self.vae = vae

    def encode(self, images: Tensor) -> Tensor:
        return self.vae.encode_latents(images)

    def decode(self, latents: Tensor) -> Tensor:
        return self.vae.decode_latents(latents)


@register
class KLVAEPretrainer(TokenizerPretrainer):
    """MAR's KL VAE (``policy.tokenizer`` of a MAR config; :class:`~vargo.components.tokenizers.
    kl_vae.KLVAE`, official key names) trained as latent-diffusion's ``LPIPSWithDiscriminator``
    without its perceptual and GAN terms (pointless at 32 px): the decoder reconstructs a
    reparameterised posterior *sample* ``z = mu + sigma n``; ``loss = rec + kl_weight * KL``
    with ``KL = 0.5 (mu^2 + sigma^2 - 1 - log sigma^2)`` averaged over latent elements and
    ``rec`` the foreground-weighted L2 (or L1) of the VQ trainers on images in [-1, 1].

    Evaluated as ``vq`` on the posterior means (``encode_latents``; the Shapes MAR trains on
    them too, ``mar-c2i --latents``), plus the latent statistics: the config's ``scale_factor``
    should make the scaled latents about unit std (``unit_std_scale_factor`` in the card), as
    MAR's 0.2325 does for KL-16 on ImageNet. The scale does not change the weights or the
    reconstructions: train, set the config's ``tokenizer.scale_factor`` to the card's
    ``unit_std_scale_factor``, then ``eval --config MAR_CONFIG --vq`` re-measures and rewrites
    the card.
    """

    name = 'kl-vae'
    help = "MAR's KL VAE (policy.tokenizer of a MAR config)"
    default_config = CONFIG_MAR_C2I
    policy_type = POLICY_TYPE
    card_title = ('The Shapes KL VAE of MAR (`KLVAE`, official LTH14/mar key names): continuous '
                  'latent tokens.')
    card_noun = 'VAE'
    defaults = dict(steps=1500, batch_size=32, lr=2e-3, warmup=100, lr_schedule='cosine',
                    weight_decay=0.0, beta2=0.99)
    c2i_fraction_default = 0.5
    quantized = False

    @classmethod
    def add_arguments(cls, p):
        super().add_arguments(p)
        p.add_argument('--kl-weight', type=float, default=1e-3,
                       help='weight of the KL term (mean over latent elements)')

    def _build_vae(self):
        from vargo.components.tokenizers.kl_vae import build_kl_vae
        return build_kl_vae(dict(self.cfg.policy.tokenizer))

    def build(self):
        self.vae = self._build_vae().train()
        self.make_streams(None)
        return list(self.vae.parameters())

    def step(self, s):
        images = self.batch(s)
        x = images * 2 - 1
        post = self.vae.encode(x)
        z = post.mean + post.std * torch.randn_like(post.mean)
        rec = self.vae.decode(z)
        rec_loss = self.reconstruction_loss(rec, x, images)
        kl = 0.5 * (post.mean.pow(2) + post.std.pow(2) - 1.0 - post.logvar).mean()
        loss = rec_loss + self.args.kl_weight * kl
        return loss, {'loss': loss.item(), 'rec': rec_loss.item(), 'kl': kl.item(),
                      'latent_std': float(post.mean.detach().std()),
                      'posterior_std': float(post.std.detach().mean()),
                      **self.pixel_error(rec, x)}

    def weights(self):
        return self.vae.state_dict()

    def card_details(self):
        tok = dict(self.cfg.policy.tokenizer)
        return {'architecture': {'tokenizer': tok, 'downsample': self.vae.downsample,
                                 'tokens': (self.cfg.policy.image_size // self.vae.downsample) ** 2,
                                 'parameters': sum(p.numel() for p in self.vae.parameters())},
                'data': self.data_description(),
                'loss': f'{self.recon_loss_description()} of a posterior sample + '
                        f'{self.args.kl_weight:g} * KL(q(z|x) || N(0, I)) (mean over latent '
                        f'elements)'}

    @torch.no_grad()
    def evaluate(self, path, quick=False):
        from vargo.components.policies.mar import load_mar_state_dict
        from vargo.core.checkpoint import load_state_dict_strict
        vae = self._build_vae().eval()
        load_state_dict_strict(vae, load_mar_state_dict(path, 'model', what='KL VAE'),
                               source=path)
        out = self.reconstruction_eval(_LatentRoundTrip(vae), None, quick)
        out['scale_factor'] = vae.scale_factor
        out['unit_std_scale_factor'] = round(vae.scale_factor / out['latent_std'], 4)
        return out


@register
class MARC2IPretrainer(GeneratorPretrainer):
    """The class-conditional MAR (``policy`` of a MAR config) trained with
    :meth:`MARPolicy.pretrain_loss` -- the official ``MAR.forward`` loss: random orders, one
    truncated-normal masking ratio per batch (mode 1, std ``mask_ratio_std``, >=
    ``mask_ratio_min``; official 0.25 and 0.7, the Shapes config 0.5 and 0),
    labels dropped to ``fake_latent`` with ``label_drop_prob`` (for CFG), attention/projection
    dropout, and the head's loss on the masked tokens, ``diffusion_batch_mul`` draws of the
    noise level per token (DDPM head: eps MSE + learned-variance VLB; flow head: velocity MSE)
    -- on the latents of freshly rendered Shapes c2i images, the posterior means of the
    config's frozen KL VAE (``--latents sample``: posterior samples, as the official
    ``engine_mar.py``; on Shapes their noise is as large as the signal). An
    exponential moving average of the weights (``--ema``, the
    official ``model_ema``) is what is shipped and evaluated. Evaluated by sampling every class
    with the config's ``MaskedSampler``."""

    name = 'mar-c2i'
    help = 'the class-conditional MAR (policy of a MAR config; its kl-vae must exist)'
    task = 'c2i'
    default_config = CONFIG_MAR_C2I
    policy_type = POLICY_TYPE
    tokenizer_noun = 'KL VAE'
    card_title = ('The Shapes class-conditional MAR base model (masked autoregression of '
                  'continuous tokens with a diffusion head).')
    # the shipped mar_shapes_c2i: 8000 constant-LR steps on posterior means (model card;
    # docs/experiments/mar_shapes_base for why: posterior noise, and the context is used only
    # after about 3000 steps; 4000 steps reached strict 0.29 / FID 9.2, 8000 0.44 / 6.2)
    defaults = dict(steps=8000, batch_size=32, lr=2e-3, warmup=100, lr_schedule='constant',
                    weight_decay=0.02, beta2=0.95)

    @classmethod
    def add_arguments(cls, p):
        super().add_arguments(p)
        p.add_argument('--ema', type=float, default=0.999,
                       help='EMA decay of the shipped weights (0: ship the raw weights); the '
                            'decay at step s is min(ema, (1 + s) / (10 + s))')
        p.add_argument('--latents', choices=('sample', 'mean'), default='mean',
                       help='train on posterior means (default: on Shapes the posterior noise '
                            'is as large as the signal) or posterior samples (official)')

    def build(self):
        params = super().build()
        self.ema = ({k: v.detach().clone() for k, v in self.policy.mar.state_dict().items()}
                    if self.args.ema else None)
        return params

    def step(self, s):
        from vargo.core.types import Conditions
        images, conds = self.stream.batch(s)
        tokens = self.policy.encode_images(images, sample=self.args.latents == 'sample')
        loss = self.policy.pretrain_loss(tokens, Conditions(
            class_ids=torch.tensor(conds, dtype=torch.long)))
        return loss, {'loss': loss.item()}

    @torch.no_grad()
    def after_update(self, s):
        if self.ema is None:
            return {}
        decay = min(self.args.ema, (1 + s) / (10 + s))
        for k, v in self.policy.mar.state_dict().items():
            self.ema[k].mul_(decay).add_(v.detach(), alpha=1 - decay)
        return {}

    def weights(self):
        return dict(self.ema) if self.ema is not None else self.policy.mar.state_dict()

    def card_details(self):
        pol = self.policy
        return {'architecture': {
                    'arch': dict(self.cfg.policy.arch), 'tokens': pol.seq_len,
                    'token_dim': pol.token_dim, 'head_type': pol.head_type,
                    'buffer_size': pol.cfg.buffer_size,
                    'num_classes': pol.cfg.num_classes, 'label_drop_prob': pol.label_drop_prob,
                    'mask_ratio_min': pol.mask_ratio_min,
                    'mask_ratio_std': pol.mask_ratio_std,
                    'diffusion_batch_mul': pol.diffusion_batch_mul,
                    'attn_dropout': pol.cfg.attn_dropout, 'proj_dropout': pol.cfg.proj_dropout,
                    'parameters': sum(p.numel() for p in pol.mar.parameters())},
                'loss': 'MARPolicy.pretrain_loss: ' + (
                    'flow-matching velocity MSE (s ~ U(0, 1), x_s = (1 - s) x0 + s eps, target '
                    'eps - x0)' if pol.head_type == 'flow' else
                    'DiffLoss (eps MSE + learned-variance VLB, 1000-step cosine schedule)')
                + f' on the masked tokens, {pol.diffusion_batch_mul} noise draws per token',
                'notes': (f'shipped weights: EMA of the training weights, decay '
                          f'min({self.args.ema:g}, (1 + s) / (10 + s)) (the official model_ema)'
                          if self.ema is not None else 'shipped weights: the raw training weights'),
                'data': f'ShapesImageDataset(split=train, task=c2i, seed={self.args.seed} + '
                        f'{DATA_SEED_OFFSET}) images, fresh every step, encoded on the fly by '
                        f'the frozen KL VAE '
                        f'({self.args.tokenizer_checkpoint or self.cfg.policy.tokenizer_checkpoint}'
                        f', posterior {self.args.latents}, times its scale_factor '
                        f'{pol.vae.scale_factor:g})'}
