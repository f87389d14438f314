"""MAR's KL-16 VAE (components/tokenizers/kl_vae.py).

Parity with the official ``models/vae.py`` (bit-identical encode/decode, the same keys and
parameter count) is measured in-session; these tests pin the key layout, strict loading and the
math of the blocks.
"""
import hashlib

import pytest
import torch
import torch.nn.functional as F

from vargo.components.policies.mar import MARPolicy
from vargo.components.tokenizers.kl_vae import KLVAE, AttnBlock, build_kl_vae
from vargo.core.checkpoint import CheckpointKeyError

TINY = dict(ch=16, ch_mult=(1, 2), resolution=32, enc_attn_resolutions=(16,), num_groups=8)


def test_kl16_official_layout_on_meta():
    with torch.device('meta'):
        vae = build_kl_vae('kl16')
    assert sum(p.numel() for p in vae.parameters()) == 66_456_019   # official AutoencoderKL
    sd = vae.state_dict()
    assert len(sd) == 312
    for k in ('encoder.down.4.attn.1.q.weight', 'encoder.down.3.downsample.conv.weight',
              'encoder.mid.attn_1.proj_out.bias', 'decoder.up.0.block.2.conv2.weight',
              'decoder.up.4.upsample.conv.weight', 'quant_conv.weight', 'post_quant_conv.bias',
              'encoder.down.2.block.0.nin_shortcut.weight', 'encoder.conv_out.weight'):
        assert k in sd, k
    assert 'encoder.down.3.attn.0.q.weight' not in sd      # attention only at resolution 16
    assert not any('.attn.' in k for k in sd if k.startswith('decoder.up'))
    assert sd['quant_conv.weight'].shape == (32, 32, 1, 1)
    listing = '\n'.join(sorted(f'{k}:{tuple(v.shape)}' for k, v in sd.items()))
    assert hashlib.sha256(listing.encode()).hexdigest()[:16] == _KL16_LISTING_SHA


_KL16_LISTING_SHA = 'f007bb24a2ce23d1'


def test_attention_block_math():
    torch.manual_seed(0)
    blk = AttnBlock(16, 4).eval()
    x = torch.randn(2, 16, 3, 5)
    h = blk.norm(x)
    q, k, v = (m(h).flatten(2).transpose(1, 2) for m in (blk.q, blk.k, blk.v))   # [B, hw, C]
    ref = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, 16, 3, 5)
    torch.testing.assert_close(blk(x), x + blk.proj_out(ref), atol=1e-5, rtol=1e-5)


def test_encode_decode_shapes_and_scale():
    torch.manual_seed(0)
    vae = KLVAE(**TINY).eval()
    img = torch.rand(3, 3, 32, 32)
    lat = vae.encode_latents(img)
    assert lat.shape == (3, 16, 16, 16) and vae.downsample == 2
    post = vae.encode(img * 2 - 1)
    torch.testing.assert_close(lat, post.mean * 0.2325)
    assert (post.logvar <= 20).all() and (post.logvar >= -30).all()
    out = vae.decode_latents(lat)
    assert out.shape == (3, 3, 32, 32) and out.min() >= 0 and out.max() <= 1
    torch.testing.assert_close(out, ((vae.decode(post.mean) + 1) / 2).clamp(0, 1))
    g = torch.Generator().manual_seed(3)
    s1 = vae.encode_latents(img, sample=True, generator=g)
    assert not torch.equal(s1, lat)


def test_strict_loading_through_the_policy(tmp_path):
    torch.manual_seed(0)
    tiny = dict(ch=16, ch_mult=(1, 1, 1, 2), resolution=32, enc_attn_resolutions=(),
                num_groups=8)
    src = KLVAE(**tiny)
    path = tmp_path / 'kl16.ckpt'
    torch.save({'model': src.state_dict()}, path)
    pol = MARPolicy(arch=dict(embed_dim=32, depth=1, num_heads=2, diffloss_d=1, diffloss_w=32),
                    image_size=32, num_classes=5, buffer_size=2, tokenizer=tiny,
                    tokenizer_checkpoint=str(path))
    for k, v in src.state_dict().items():
        assert torch.equal(pol.vae.state_dict()[k], v)
    assert not any(p.requires_grad for p in pol.vae.parameters())
    bad = src.state_dict()
    bad['decoder.conv_out.weightx'] = bad.pop('decoder.conv_out.weight')
    torch.save({'model': bad}, path)
    with pytest.raises(CheckpointKeyError, match=r'decoder\.conv_out\.weightx'):
        MARPolicy(arch=dict(embed_dim=32, depth=1, num_heads=2, diffloss_d=1, diffloss_w=32),
                  image_size=32, num_classes=5, buffer_size=2, tokenizer=tiny,
                  tokenizer_checkpoint=str(path))


def test_bad_settings_name_the_value():
    with pytest.raises(ValueError, match='num_groups=32'):
        KLVAE(ch=16, ch_mult=(1, 2))
    with pytest.raises(ValueError, match="preset 'kl8'"):
        build_kl_vae('kl8')
