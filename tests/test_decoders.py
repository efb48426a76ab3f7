"""Decoding final samples to uint8 images: DiT's conversion, the VAE path and its missing-folder error."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ebtune.io.decoders import VAE_SCALE, make_decoder, to_uint8


def test_uint8_conversion_is_dits():
    x = torch.tensor([-1.0, -0.5, 0.0, 0.999, 1.0]).view(1, 1, 1, 5)
    assert to_uint8(x).ravel().tolist() == [0, 64, 128, 255, 255]  # clamp(127.5x + 128), truncated


def test_vae_decoder_from_a_local_folder(tmp_path):
    from diffusers.models import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8, sample_size=16)
    vae.save_pretrained(tmp_path / "vae")
    latents = torch.randn(2, 4, 4, 4)
    images = make_decoder("vae", vae=str(tmp_path / "vae")).decode(latents)
    with torch.no_grad():
        want = to_uint8(vae.eval().decode(latents / VAE_SCALE).sample)
    assert images.shape == (2, 8, 8, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, want)


def test_missing_vae_folder_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="VAE folder not found: .*set model.vae=DIR"):
        make_decoder("vae", vae=str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="unknown decoder 'x'; choose one of: pixels, digits, vae"):
        make_decoder("x")
