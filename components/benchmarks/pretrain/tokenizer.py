"""What the tokenizer trainers share (LlamaGen's VQ, VAR's multi-scale VQVAE, MAR's KL VAE): the
mixed c2i/t2i image stream, the foreground-weighted reconstruction loss, codebook statistics and
dead-code restarts, and the reconstruction evaluation."""
from __future__ import annotations

import abc
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .common import DATA_SEED_OFFSET, ShapesStream
from .evaluation import reconstruction_eval
from .loop import Pretrainer


class TokenizerPretrainer(Pretrainer):
    """What the VQ, multi-scale VQVAE and KL VAE trainers share: the mixed c2i/t2i image stream,
    the foreground-weighted reconstruction loss, and (``quantized`` tokenizers) codebook
    statistics and dead-code restarts."""

    tokenizer = True
    card_kind = 'reconstruction'
    card_noun = 'VQ'
    c2i_fraction_default = 0.25
    #: a codebook (commitment weight, dead-code restarts); False for continuous tokenizers
    quantized = True

    @classmethod
    def add_arguments(cls, p):
        if cls.quantized:
            p.add_argument('--beta', type=float, default=0.25, help='commitment weight')
        p.add_argument('--rec-loss', choices=('l1', 'l2'), default='l2')
        p.add_argument('--fg-weight', type=float, default=4.0,
                       help='extra reconstruction weight of object pixels and their 1-px ring '
                            '(objects cover ~5-15%% of a Shapes image; 0: plain mean)')
        p.add_argument('--c2i-fraction', type=float, default=cls.c2i_fraction_default,
                       help='fraction of each batch from the single-object (c2i) stream; the '
                            'rest are kind-balanced prompt (t2i) images, which hold more objects')
        if cls.quantized:
            p.add_argument('--restart-every', type=int, default=50,
                           help='re-initialise codes unused for this many steps (0: never)')
            p.add_argument('--restart-until', type=float, default=0.75,
                           help='fraction of the run after which codes are no longer restarted')
        p.add_argument('--eval-images', type=int, default=1024,
                       help='ground-truth eval images per task for the reconstruction metrics')

    def default_out(self):
        return self.cfg.policy.tokenizer_checkpoint

    def reconstruction_eval(self, tokenizer, codebook_size: Optional[int], quick: bool
                            ) -> dict[str, Any]:
        """:func:`~.evaluation.reconstruction_eval` on ``--eval-images`` images (256 when
        ``quick``)."""
        n = 256 if quick else self.args.eval_images
        return reconstruction_eval(tokenizer, codebook_size, seed=self.args.seed, n=n,
                                   quick=quick)

    def make_streams(self, codebook_size: Optional[int]) -> None:
        """Two never-repeating streams (c2i and t2i images) and the code-usage record (None: a
        continuous tokenizer)."""
        half = int(round(self.args.c2i_fraction * self.args.batch_size))
        seed = self.args.seed + DATA_SEED_OFFSET
        # different seeds: item i of both datasets would otherwise share its random layout draws
        self.streams = [ShapesStream('c2i', seed, half, self.args.steps),
                        ShapesStream('t2i', seed + 1, self.args.batch_size - half,
                                     self.args.steps)]
        self.last_used = torch.zeros(codebook_size or 0, dtype=torch.long)

    def batch(self, s: int) -> Tensor:
        return torch.cat([st.batch(s)[0] for st in self.streams if st.batch_size])

    def reconstruction_loss(self, rec: Tensor, x: Tensor, images: Tensor) -> Tensor:
        """L1 or L2 on [-1, 1], weighted ``1 + fg_weight`` on object pixels and their 1-px ring."""
        a = self.args
        err = (rec - x).abs() if a.rec_loss == 'l1' else (rec - x).pow(2)       # [B, 3, H, W]
        if not a.fg_weight:
            return err.mean()
        fg = (images.amax(dim=1, keepdim=True) > 0).float()                    # [B, 1, H, W]
        w = 1 + a.fg_weight * F.max_pool2d(fg, 3, stride=1, padding=1)
        return (err * w).mean() / w.mean()

    def code_statistics(self, ids: Tensor, s: int, rec: Tensor, x: Tensor) -> dict[str, float]:
        """Record the codes used at step ``s``; perplexity and the fraction of pixels off by
        more than 0.25."""
        self.last_used[ids.unique()] = s
        counts = torch.bincount(ids, minlength=self.last_used.numel()).float()
        p = counts / counts.sum()
        perplexity = float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum()))
        return {'perplexity': perplexity, **self.pixel_error(rec, x)}

    @staticmethod
    @torch.no_grad()
    def pixel_error(rec: Tensor, x: Tensor) -> dict[str, float]:
        """The fraction of pixel values off by more than 0.25 (in [0, 1] units)."""
        return {'pixel_err': float(((rec.clamp(-1, 1) - x).abs() > 0.5).float().mean())}

    @torch.no_grad()
    def restart_dead_codes(self, embedding: Tensor, vectors: Optional[Tensor], s: int, *,
                           normalize: bool) -> dict[str, float]:
        """Re-initialise codes unused for ``--restart-every`` steps to encoder vectors of the last
        batch plus small noise (0.01, or 0.01 x the codebook's std when not ``normalize``d onto
        the sphere), until ``--restart-until`` of the run."""
        a = self.args
        if not a.restart_every or (s + 1) % a.restart_every or s + 1 > a.restart_until * a.steps:
            return {}
        dead = (s - self.last_used) >= a.restart_every
        n = int(dead.sum())
        if n and vectors is not None:
            g = torch.Generator().manual_seed(a.seed * 7919 + s)
            pick = torch.randint(0, vectors.shape[0], (n,), generator=g)
            scale = 0.01 if normalize else 0.01 * embedding.std()
            new = vectors[pick] + scale * torch.randn(n, vectors.shape[1], generator=g)
            embedding[dead] = F.normalize(new, dim=-1) if normalize else new
            self.last_used[dead] = s
        return {'restarted': n}

    def recon_loss_description(self) -> str:
        return (f'{self.args.rec_loss} reconstruction on [-1, 1] (foreground weight '
                f'{self.args.fg_weight:g})')

    def data_description(self) -> str:
        return (f'per step: {self.streams[0].batch_size} ShapesImageDataset(train, c2i, seed '
                f'{self.args.seed} + {DATA_SEED_OFFSET}) and {self.streams[1].batch_size} '
                f'ShapesImageDataset(train, t2i, seed {self.args.seed} + {DATA_SEED_OFFSET + 1}) '
                f'images, never repeated')


class L2VQPretrainer(TokenizerPretrainer):
    """A VQ with an L2-normalised codebook (LlamaGen's ``VQModel``; Janus-Pro's VQ, which is
    LlamaGen's) trained as LlamaGen's ``vq_loss`` without its GAN and perceptual terms (pointless
    at 32 px): ``rec + codebook_weight * codebook + beta * commit`` with L2-normalised codes and
    encoder outputs, ``codebook = ||sg(z) - z_q||^2``, ``commit = ||z - sg(z_q)||^2``,
    ``beta = 0.25``, straight-through gradients; dead codes are re-initialised to encoder outputs
    of the current batch.

    Subclasses build the model and implement :meth:`_forward` (images in [-1, 1] ->
    reconstruction, normalised ``z [N, C]``, ids ``[N]``, ``z_q [N, C]``) and
    :meth:`codebook_weight` (the raw code table the restarts write).
    """

    @classmethod
    def add_arguments(cls, p):
        super().add_arguments(p)
        p.add_argument('--codebook-weight', type=float, default=1.0)
        p.add_argument('--edge-weight', type=float, default=0.0,
                       help='weight of an L1 loss on horizontal and vertical pixel differences '
                            '(sharp corners; 0: off)')

    @abc.abstractmethod
    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Images in [-1, 1] -> (reconstruction, normalised ``z [N, C]``, ids ``[N]``,
        ``z_q [N, C]``)."""

    @abc.abstractmethod
    def codebook_weight(self) -> Tensor:
        """The raw ``[V, C]`` code table the dead-code restarts write."""

    def step(self, s):
        a = self.args
        images = self.batch(s)
        x = images * 2 - 1
        rec, z, ids, z_q = self._forward(x)
        rec_loss = self.reconstruction_loss(rec, x, images)
        if a.edge_weight:
            edge = ((rec.diff(dim=-1) - x.diff(dim=-1)).abs().mean()
                    + (rec.diff(dim=-2) - x.diff(dim=-2)).abs().mean())
            rec_loss = rec_loss + a.edge_weight * edge
        codebook = (z_q - z.detach()).pow(2).mean()
        commit = (z_q.detach() - z).pow(2).mean()
        loss = rec_loss + a.codebook_weight * codebook + a.beta * commit
        self._z = z.detach()
        return loss, {'loss': loss.item(), 'rec': rec_loss.item(), 'codebook': codebook.item(),
                      'commit': commit.item(), **self.code_statistics(ids, s, rec, x)}

    def after_update(self, s):
        return self.restart_dead_codes(self.codebook_weight(), self._z, s, normalize=True)
