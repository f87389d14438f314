"""Channels-last decoding (components/modules/conv_layout.py): same images as the NCHW decode up
to float summation order, returned contiguous, and the channels-last path really taken."""
import torch

from vargo.components.modules.conv_layout import decode_channels_last
from vargo.components.tokenizers.kl_vae import build_kl_vae
from vargo.components.tokenizers.vq import build_vq


def test_decoders_give_the_nchw_images_from_a_channels_last_input():
    torch.manual_seed(0)
    vq = build_vq(dict(ch=16, ch_mult=(1, 2), num_res_blocks=1, z_channels=16,
                       codebook_size=32, codebook_embed_dim=8, norm_groups=8)).eval()
    kl = build_kl_vae(dict(embed_dim=4, ch=16, ch_mult=(1, 2), num_res_blocks=1, resolution=16,
                           enc_attn_resolutions=(), num_groups=8)).eval()
    with torch.no_grad():
        for decode, plain, z in (
                (vq.decode_latent, lambda q: vq.decoder(vq.post_quant_conv(q)),
                 torch.randn(3, 8, 4, 4)),
                (kl.decode, lambda z: kl.decoder(kl.post_quant_conv(z)),
                 torch.randn(3, 4, 4, 4))):
            got, want = decode(z), plain(z)
            assert got.is_contiguous() and got.shape == want.shape
            assert torch.allclose(got, want, atol=1e-5)


def test_the_decoder_sees_a_channels_last_input_and_other_inputs_pass_through():
    seen = []

    def decoder(x):
        seen.append(x.is_contiguous(memory_format=torch.channels_last) and
                    not x.is_contiguous())
        return x * 2

    x = torch.randn(2, 3, 4, 5)
    y = decode_channels_last(decoder, x)
    assert seen == [True] and y.is_contiguous() and torch.equal(y, x * 2)
    flat = torch.randn(2, 3)
    assert torch.equal(decode_channels_last(decoder, flat), flat * 2) and seen[-1] is False


def test_decode_chunk_size_keeps_to_the_pixel_budget():
    from vargo.components.modules.conv_layout import (DECODE_PIXELS_PER_CHUNK, MAX_DECODE_CHUNK,
                                                      decode_chunk_size)
    assert DECODE_PIXELS_PER_CHUNK == 2 * 256 * 256 and MAX_DECODE_CHUNK == 16
    assert [decode_chunk_size(s) for s in (256, 384, 512, 181, 64, 32)] == [2, 1, 1, 4, 16, 16]


def test_policies_decode_the_same_images_in_any_chunks():
    """The default chunking (a pixel budget) against one image at a time and all at once: equal
    up to the convolutions' summation order."""
    from test_llamagen import conditions, make_policy
    from vargo.components.samplers import ARSampler
    from vargo.core.rng import BatchRNG
    policy = make_policy()
    sampler = ARSampler(cfg_scale=1.0, temperature=1.0, top_k=0, top_p=1.0, logprob_cfg='none',
                        decode_images=False)
    with torch.no_grad():
        rollout = sampler.rollout(policy, conditions('c2i'), group_size=3, rng=BatchRNG(2, 0, 6))
        default = policy.decode(rollout)
        for chunk in (1, 4, 6):
            torch.testing.assert_close(policy.decode(rollout, chunk=chunk), default,
                                       rtol=0, atol=1e-5)
