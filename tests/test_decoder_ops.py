"""In-place decoder steps with autograd off (components/modules/decoder_ops.py and the swish of
the VQ / KL decoders): the same bits as the out-of-place graph, no aliasing of a block's input,
and out of place (differentiable) in training."""
import torch
import torch.nn.functional as F

from vargo.components.modules.decoder_ops import add_residual
from vargo.components.tokenizers import kl_vae, vq
from vargo.components.tokenizers.kl_vae import KLVAE
from vargo.components.tokenizers.vq import build_vq


def test_add_residual_in_place_without_grad_and_out_of_place_with_it():
    x, h = torch.randn(2, 3), torch.randn(2, 3)
    ref, x0 = x + h, x.clone()
    with torch.no_grad():
        out = add_residual(x, h.clone())
    assert torch.equal(out, ref) and torch.equal(x, x0)
    hh = h.clone()
    with torch.no_grad():
        assert add_residual(x, hh).data_ptr() == hh.data_ptr()      # written into h
    hg = h.clone().requires_grad_()
    out = add_residual(x, hg)
    assert out.data_ptr() != hg.data_ptr() and torch.equal(out, ref)
    out.sum().backward()
    assert torch.equal(hg.grad, torch.ones_like(h))


def test_swish_helpers_are_the_official_expressions_bit_for_bit():
    x = torch.randn(4, 8, 5, 5) * 4
    with torch.no_grad():
        assert torch.equal(vq._swish(x.clone()), F.silu(x))
        assert torch.equal(kl_vae._swish(x.clone()), x * torch.sigmoid(x))
    xg = x.clone().requires_grad_()
    y = kl_vae._swish(xg)
    assert torch.equal(y, x * torch.sigmoid(x))
    y.sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()


def _decode_both_ways(fn, z):
    with torch.no_grad():
        fast = fn(z)
    with torch.enable_grad():
        slow = fn(z).detach()
    return fast, slow


def test_vq_decoder_identical_with_and_without_autograd():
    torch.manual_seed(0)
    model = build_vq(dict(preset='VQ-16', ch=16, ch_mult=(1, 2), norm_groups=4,
                          codebook_size=32)).eval()
    z = torch.randn(2, 8, 4, 4)
    z0 = z.clone()
    fast, slow = _decode_both_ways(model.decode_latent, z)
    assert torch.equal(fast, slow) and torch.equal(z, z0)


def test_kl_decoder_identical_with_and_without_autograd():
    torch.manual_seed(0)
    vae = KLVAE(ch=16, ch_mult=(1, 2), resolution=32, enc_attn_resolutions=(16,),
                num_groups=8).eval()
    z = torch.randn(2, vae.embed_dim, 16, 16)
    z0 = z.clone()
    fast, slow = _decode_both_ways(vae.decode, z)
    assert torch.equal(fast, slow) and torch.equal(z, z0)
