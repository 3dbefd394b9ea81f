"""Pixel shuffle: which patches land in which image token, pinned on a hand-made feature grid."""

import torch

from minivlm.modeling_minivlm import pixel_shuffle


def test_each_token_holds_one_square_block_of_neighbouring_patches_row_by_row():
    # A 4×4 patch grid, row-major as the ViT emits it; patch p carries the features (p, 100 + p).
    patches = torch.arange(16, dtype=torch.float32)
    features = torch.stack([patches, 100 + patches], dim=-1).unsqueeze(0)  # (1, 16, 2)

    tokens = pixel_shuffle(features, 2)

    assert tokens.shape == (1, 4, 8)
    # Token t is the t-th 2×2 block (blocks in row-major order); inside it the patches go top-left,
    # top-right, bottom-left, bottom-right, each with its own features side by side.
    blocks = [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]
    expected = torch.tensor([[v for p in block for v in (p, 100 + p)] for block in blocks], dtype=torch.float32)
    torch.testing.assert_close(tokens[0], expected, rtol=0, atol=0)


def test_a_factor_of_one_changes_nothing_and_batches_stay_apart():
    features = torch.arange(2 * 9 * 3, dtype=torch.float32).reshape(2, 9, 3)
    torch.testing.assert_close(pixel_shuffle(features, 1), features, rtol=0, atol=0)
    # Each image of the batch is shuffled on its own: the second image's tokens are the first's + 16.
    grid = torch.arange(2 * 16, dtype=torch.float32).reshape(2, 16, 1)
    shuffled = pixel_shuffle(grid, 2)
    torch.testing.assert_close(shuffled[1], shuffled[0] + 16, rtol=0, atol=0)
