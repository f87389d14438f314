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
