"""VAR's multi-scale residual VQVAE: official structure, hand-derived quantisation, consistency of
the encode / decode / teacher-forcing paths, strict loading.

The pinned numbers (parameter count, key digest) were computed from the official code
(FoundationVision/VAR ``models/vqvae.py``) in-session; its parity with that code (identical ids,
decode max |diff| 7e-6) is recorded in the docstring of vargo.components.policies.var.
"""
import hashlib

import pytest
import torch
import torch.nn.functional as F

from vargo.components.tokenizers.msvq import (PATCH_NUMS_256, MultiScaleQuantizer,
                                              MultiScaleVQVAE, build_msvq)
from vargo.core.checkpoint import CheckpointKeyError, load_state_dict_strict

TINY = dict(vocab_size=64, z_channels=8, ch=16, ch_mult=(1, 2, 2), num_res_blocks=1,
            norm_groups=4, patch_nums=(1, 2, 4, 8))


def tiny_vae(**kw):
    torch.manual_seed(0)
    vae = MultiScaleVQVAE(**{**TINY, **kw})
    with torch.no_grad():   # make the Phi convs matter
        for name, p in vae.named_parameters():
            if 'quant_resi' in name:
                p.add_(torch.randn_like(p) * 0.1)
    return vae


def images(b=3, side=32):
    torch.manual_seed(1)
    return F.interpolate(torch.rand(b, 3, 8, 8), size=(side, side), mode='bilinear',
                         align_corners=False)


# ---- official structure ----------------------------------------------------------------------

def test_official_vae_builds_on_meta_with_the_official_keys(monkeypatch):
    # a first normal_ on a meta tensor costs ~10 s (torch imports its decompositions): skip it
    monkeypatch.setattr(torch.Tensor, 'normal_', lambda self, *args, **kwargs: self)
    with torch.device('meta'):
        vae = MultiScaleVQVAE()                    # vae_ch160v4096z32 defaults
    sd = vae.state_dict()
    assert sum(p.numel() for p in vae.parameters()) == 108_948_355
    assert len(sd) == 324
    lines = '\n'.join(f'{k}:{tuple(v.shape)}' for k, v in sorted(sd.items()))
    assert hashlib.sha256(lines.encode()).hexdigest() == (
        '9a190341cf809bc79af1e91af9c54672275e922c4527109e9776af1199c19d19')
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    assert shapes['encoder.down.4.attn.1.qkv.weight'] == (3 * 640, 640, 1, 1)   # fused qkv
    assert shapes['decoder.up.0.block.2.conv2.weight'] == (160, 160, 3, 3)      # up by level
    assert shapes['decoder.up.4.upsample.conv.weight'] == (640, 640, 3, 3)
    assert shapes['quantize.quant_resi.qresi_ls.3.weight'] == (32, 32, 3, 3)
    assert shapes['quantize.ema_vocab_hit_SV'] == (10, 4096)
    assert shapes['quantize.embedding.weight'] == (4096, 32)
    assert shapes['quant_conv.weight'] == (32, 32, 3, 3)
    assert 'encoder.down.0.block.0.nin_shortcut.weight' not in shapes   # Identity skip
    assert vae.image_size == 256 and vae.num_tokens == 680
    assert not any(p.requires_grad for p in vae.parameters())


@pytest.mark.parametrize('share,keys', [
    (0, ['quantize.quant_resi.0.weight', 'quantize.quant_resi.3.bias']),
    (1, ['quantize.quant_resi.qresi.weight']),
    (4, ['quantize.quant_resi.qresi_ls.0.weight', 'quantize.quant_resi.qresi_ls.3.bias']),
])
def test_phi_sharing_modes_use_the_official_keys(share, keys):
    vae = MultiScaleVQVAE(**{**TINY, 'share_quant_resi': share})
    sd = vae.state_dict()
    for k in keys:
        assert k in sd
    n_phi = sum(1 for k in sd if k.startswith('quantize.quant_resi') and k.endswith('weight'))
    assert n_phi == {0: 4, 1: 1, 4: 4}[share]


def test_phi_of_each_scale_follows_the_official_ticks():
    # share_quant_resi=4: ticks linspace(1/12, 11/12, 4) = 3/36, 13/36, 23/36, 33/36; scale si
    # sits at si / (S - 1). S=4: 0, 12/36, 24/36, 36/36 -> Phis 0, 1, 2, 3.
    q = MultiScaleVQVAE(**TINY).quantize
    assert q.phi_index == (0, 1, 2, 3)
    # S=10: si/9 = 4k/36; nearest ticks (the 2/9 and 7/9 ties at 5/36 fall to the lower index
    # in the official float arithmetic, as numpy's argmin)
    q10 = MultiScaleQuantizer(vocab_size=8, z_channels=4, patch_nums=PATCH_NUMS_256,
                              quant_resi=0.5, share_quant_resi=4, default_qresi_counts=0,
                              using_znorm=False)
    assert q10.phi_index == (0, 0, 1, 1, 1, 2, 2, 3, 3, 3)


def test_phi_is_half_identity_half_conv():
    vae = tiny_vae()
    phi = vae.quantize.phi(1)
    h = torch.randn(2, 8, 4, 4)
    assert torch.allclose(phi(h), 0.5 * h + 0.5 * F.conv2d(h, phi.weight, phi.bias, padding=1),
                          atol=1e-6)


# ---- hand-derived residual quantisation --------------------------------------------------------

def test_residual_quantisation_by_hand():
    q = MultiScaleQuantizer(vocab_size=3, z_channels=1, patch_nums=(1, 2), quant_resi=0.0,
                            share_quant_resi=4, default_qresi_counts=0, using_znorm=False)
    with torch.no_grad():
        q.embedding.weight.copy_(torch.tensor([[0.0], [1.0], [3.0]]))
    f = torch.tensor([[[[0.0, 0.0], [0.0, 4.0]]]])                 # [1, 1, 2, 2]
    # scale 0: area mean 1 -> code 1; bicubic 1x1 -> 2x2 is constant 1; residual [-1,-1,-1,3]
    # scale 1 (last, no resampling): -1 -> code 0 (value 0), 3 -> code 2 (value 3)
    ids = q.f_to_idxBl_or_fhat(f, to_fhat=False)
    assert [i.tolist() for i in ids] == [[[1]], [[0, 0, 0, 2]]]
    fhat = q.f_to_idxBl_or_fhat(f, to_fhat=True)
    assert torch.allclose(fhat[0], torch.ones(1, 1, 2, 2))
    assert torch.allclose(fhat[1], torch.tensor([[[[1.0, 1.0], [1.0, 4.0]]]]))
    # teacher-forcing input of scale 1: the scale-0 partial sum, area-resampled to 2x2
    assert torch.allclose(q.idxBl_to_var_input(ids), torch.ones(1, 4, 1))
    assert torch.allclose(q.idxBl_to_fhat(ids), fhat[1])


# ---- encode / decode / teacher forcing consistency ---------------------------------------------

def test_decode_of_encode_equals_the_fhat_path():
    vae = tiny_vae()
    x = images()
    with torch.no_grad():
        ids = vae.encode(x)                                         # [B, L]
        assert ids.shape == (3, 1 + 4 + 16 + 64) and ids.dtype == torch.long
        assert 0 <= int(ids.min()) and int(ids.max()) < 64
        sums = vae.img_to_fhat(x * 2 - 1)                          # encoder's partial sums
        direct = vae.fhat_to_img(sums[-1]).add(1).mul(0.5)
        assert torch.allclose(vae.decode(ids), direct, atol=1e-6)
        # the ids reproduce every partial sum of the encoder's residual quantisation
        rebuilt = vae.quantize.idxBl_to_fhat(vae.split_scales(ids), last_one=False)
        for a, b in zip(rebuilt, sums):
            assert torch.allclose(a, b, atol=1e-6)
        # quantisation is idempotent on its own reconstruction's latent path
        assert torch.equal(vae.encode(x), ids)
    assert vae.decode(ids).min() >= 0 and vae.decode(ids).max() <= 1


def test_var_input_equals_downsampled_partial_sums_and_the_sampling_path():
    vae = tiny_vae()
    q = vae.quantize
    torch.manual_seed(2)
    ids = torch.randint(0, 64, (2, vae.num_tokens))
    ms = vae.split_scales(ids)
    with torch.no_grad():
        x_in = vae.ids_to_var_input(ids)                            # [B, L - 1, Cvae]
        assert x_in.shape == (2, vae.num_tokens - 1, 8)
        sums = q.idxBl_to_fhat(ms, last_one=False)
        expect = torch.cat([F.interpolate(sums[si], size=(p, p), mode='area').flatten(2)
                            .transpose(1, 2) for si, p in enumerate(vae.patch_nums[1:])], dim=1)
        assert torch.allclose(x_in, expect, atol=1e-6)
        # the one-scale-at-a-time sampling update gives the same inputs and the same f_hat
        f_hat = torch.zeros(2, 8, 8, 8)
        maps = []
        for si, p in enumerate(vae.patch_nums):
            h = q.embedding(ms[si]).transpose(1, 2).reshape(2, 8, p, p)
            f_hat, nxt = q.get_next_autoregressive_input(si, f_hat, h)
            maps.append(nxt.flatten(2).transpose(1, 2))
        assert torch.allclose(torch.cat(maps[:-1], dim=1), x_in, atol=1e-6)
        assert torch.allclose(f_hat, sums[-1], atol=1e-6)


def test_wrong_image_size_and_bad_settings_fail_clearly():
    vae = tiny_vae()
    with pytest.raises(ValueError, match='encodes 32x32'):
        vae.encode(torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match='increasing'):
        MultiScaleVQVAE(**{**TINY, 'patch_nums': (2, 1)})
    with pytest.raises(ValueError, match='norm_groups'):
        MultiScaleVQVAE(**{**TINY, 'norm_groups': 5})
    with pytest.raises(ValueError, match='vae_ch160v4096z32'):
        build_msvq('vae_ch999', patch_nums=(1, 2))
    with pytest.raises(ValueError, match='expected L=85'):
        vae.split_scales(torch.zeros(1, 84, dtype=torch.long))


# ---- loading -------------------------------------------------------------------------------------

def test_strict_loading_names_the_bad_key_and_accepts_other_hit_tables():
    src, dst = tiny_vae(), MultiScaleVQVAE(**TINY)
    state = src.state_dict()
    load_state_dict_strict(dst, state, source='VQVAE file')
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(),
                                                 dst.state_dict().values()))
    bad = dict(state)
    bad['quantize.quant_resi.qresi_ls.9.weight'] = bad.pop('quantize.quant_resi.qresi_ls.3.weight')
    with pytest.raises(CheckpointKeyError) as err:
        load_state_dict_strict(dst, bad, source='VQVAE file')
    assert 'quantize.quant_resi.qresi_ls.9.weight' in str(err.value)
    assert 'quantize.quant_resi.qresi_ls.3.weight' in str(err.value)
    # official VQVAE.load_state_dict: a hit table of another number of scales is replaced
    other = dict(state, **{'quantize.ema_vocab_hit_SV': torch.ones(10, 64)})
    dst.load_state_dict(other)
    assert dst.quantize.ema_vocab_hit_SV.shape == (4, 64)
