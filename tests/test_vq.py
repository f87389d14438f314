"""LlamaGen VQ tokenizer: official key names and size, quantizer math, encode/decode shapes."""
import hashlib

import pytest
import torch
import torch.nn.functional as F

from vargo.components.tokenizers.vq import VQ_PRESETS, VQModel, build_vq
from vargo.core.checkpoint import CheckpointKeyError, load_state_dict_strict

# sha256 of the sorted "key:shape" lines of the official VQ_16() state dict
# (tokenizer/tokenizer_image/vq_model.py of FoundationVision/LlamaGen, computed from that code)
OFFICIAL_VQ16_KEYS_SHA256 = '0989fbabaafe22f4de9e9ce0636f10c5dd5b12dcb59dd696f24c9dc006ea2b0a'
OFFICIAL_VQ16_NUM_KEYS = 344
OFFICIAL_VQ16_PARAMS = 71_883_403            # "72M" in the LlamaGen README
OFFICIAL_VQ16_STATE_NUMEL = 71_948_939       # + the 65536-long codebook_used buffer


def tiny_vq(**kw):
    cfg = dict(ch=16, ch_mult=(1, 2), z_channels=16, codebook_size=32, codebook_embed_dim=8,
               norm_groups=4)
    cfg.update(kw)
    return VQModel(**cfg).eval()


def _keys_digest(state):
    lines = '\n'.join(f'{k}:{tuple(v.shape)}' for k, v in sorted(state.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def test_vq16_matches_official_keys_and_size():
    with torch.device('meta'):
        vq = build_vq('VQ-16')
    state = vq.state_dict()
    assert len(state) == OFFICIAL_VQ16_NUM_KEYS
    assert sum(p.numel() for p in vq.parameters()) == OFFICIAL_VQ16_PARAMS
    assert sum(v.numel() for v in state.values()) == OFFICIAL_VQ16_STATE_NUMEL
    expected_shapes = {
        'encoder.conv_in.weight': (128, 3, 3, 3),
        'encoder.conv_blocks.0.res.0.norm1.weight': (128,),
        'encoder.conv_blocks.0.downsample.conv.weight': (128, 128, 3, 3),
        'encoder.conv_blocks.2.res.0.nin_shortcut.weight': (256, 128, 1, 1),
        'encoder.conv_blocks.4.attn.1.q.weight': (512, 512, 1, 1),
        'encoder.mid.1.proj_out.weight': (512, 512, 1, 1),
        'encoder.conv_out.weight': (256, 512, 3, 3),
        'decoder.conv_in.weight': (512, 256, 3, 3),
        'decoder.conv_blocks.0.attn.2.k.weight': (512, 512, 1, 1),
        'decoder.conv_blocks.0.upsample.conv.weight': (512, 512, 3, 3),
        'decoder.conv_blocks.4.res.2.conv2.weight': (128, 128, 3, 3),
        'decoder.conv_out.weight': (3, 128, 3, 3),
        'quantize.embedding.weight': (16384, 8),
        'quantize.codebook_used': (65536,),
        'quant_conv.weight': (8, 256, 1, 1),
        'post_quant_conv.weight': (256, 8, 1, 1),
    }
    for key, shape in expected_shapes.items():
        assert tuple(state[key].shape) == shape, key
    assert 'decoder.conv_blocks.4.upsample.conv.weight' not in state   # no upsample at full res
    assert _keys_digest(state) == OFFICIAL_VQ16_KEYS_SHA256
    assert vq.downsample == 16 and VQ_PRESETS['VQ-8'] == dict(ch_mult=(1, 2, 2, 4))


def test_codebook_is_l2_normalised_and_quantizer_finds_exact_codes():
    vq = tiny_vq()
    book = vq.quantize.codebook()
    assert torch.allclose(book.norm(dim=1), torch.ones(32), atol=1e-6)
    idx = torch.tensor([[3, 7, 0, 31], [5, 5, 1, 2]])                   # [B, h*w], raster
    z = (3.0 * book[idx]).view(2, 2, 2, 8).permute(0, 3, 1, 2)          # scaled: L2 norm removes it
    z_q, found = vq.quantize.quantize(z)
    assert torch.equal(found, idx)
    assert torch.allclose(z_q, book[idx].view(2, 2, 2, 8).permute(0, 3, 1, 2))
    # distances as |z|^2 + |e|^2 - 2 z.e pick the largest cosine for normalised vectors
    zz = torch.randn(1, 8, 3, 3)
    _, got = vq.quantize.quantize(zz)
    cos = F.normalize(zz.permute(0, 2, 3, 1).reshape(-1, 8), dim=-1) @ book.t()
    assert torch.equal(got[0], cos.argmax(dim=1))


def test_encode_decode_shapes_and_ranges():
    vq = tiny_vq()
    images = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        idx = vq.encode(images)
        assert idx.shape == (3, 64) and idx.dtype == torch.long
        assert int(idx.min()) >= 0 and int(idx.max()) < 32
        out = vq.decode(idx)
        raw = vq.decode_code(idx, (3, 8, 8, 8))
    assert out.shape == (3, 3, 16, 16)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert torch.allclose(out, (raw.clamp(-1, 1) + 1) / 2)
    # encode maps [0, 1] to the official [-1, 1] input range
    with torch.no_grad():
        assert torch.equal(idx, vq.encode_raw(images * 2 - 1)[1])
    with pytest.raises(ValueError, match='square'):
        vq.decode(idx[:, :63])


def test_strict_load_names_bad_keys():
    vq, other = tiny_vq(), tiny_vq()
    state = vq.state_dict()
    load_state_dict_strict(other, state, source='vq')
    assert all(torch.equal(other.state_dict()[k], v) for k, v in state.items())
    broken = dict(state)
    broken.pop('quantize.embedding.weight')
    broken['quantize.embedding.bias'] = torch.zeros(8)
    with pytest.raises(CheckpointKeyError) as err:
        load_state_dict_strict(other, broken, source='vq')
    assert 'quantize.embedding.weight' in str(err.value)
    assert 'quantize.embedding.bias' in str(err.value)


def test_build_vq_presets_and_errors():
    vq = build_vq(dict(preset='VQ-16', ch=16, norm_groups=4, codebook_size=64))
    assert vq.downsample == 16 and vq.codebook_size == 64
    with pytest.raises(ValueError, match='VQ-16'):
        build_vq('VQ-32')
