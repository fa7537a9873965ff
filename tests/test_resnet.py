import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from blockdrop_env.resnet import CifarResNet, resnet32

from .conftest import trained_like


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return trained_like(resnet32())  # non-trivial BN statistics: dropping a block changes the output


@pytest.fixture(scope="module")
def images():
    return torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


def test_resnet32_shape_and_parameter_count(model):
    assert model.num_blocks == 15
    assert sum(p.numel() for p in model.parameters()) == 464_154
    assert CifarResNet(110).num_blocks == 54


@pytest.mark.parametrize("depth", [0, 7, 33])
def test_bad_depth_is_refused(depth):
    with pytest.raises(ValueError, match="6n\\+2"):
        CifarResNet(depth)


def test_all_ones_mask_is_the_plain_forward(model, images):
    with torch.no_grad():
        assert torch.allclose(model(images, torch.ones(6, 15)), model(images), atol=1e-6)


def test_all_zeros_mask_leaves_only_the_shortcuts(model, images):
    with torch.no_grad():
        x = model.stem(model.normalize(images))
        for block in model.blocks:
            x = block.shortcut(x)  # pooled and zero-padded where the stage changes
        expected = model.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))
        assert torch.allclose(model(images, torch.zeros(6, 15)), expected, atol=1e-5)


def test_dropped_block_outputs_its_shortcut_and_kept_block_runs(model):
    x = torch.rand(3, 16, 32, 32)
    block = model.blocks[5]  # first block of stage 2: stride 2, 16 -> 32 channels
    with torch.no_grad():
        out = block(x, torch.tensor([0.0, 1.0, 0.0]))
        shortcut = F.pad(F.avg_pool2d(x, 2), (0, 0, 0, 0, 0, 16))
        assert out.shape == (3, 32, 16, 16)
        assert torch.equal(out[0], shortcut[0]) and torch.equal(out[2], shortcut[2])
        assert torch.allclose(out[1:2], block(x[1:2]), atol=1e-6)


def test_per_sample_masks_match_single_forwards(model, images):
    keep = torch.randint(0, 2, (6, 15), generator=torch.Generator().manual_seed(2)).float()
    with torch.no_grad():
        batched = model(images, keep)
        single = torch.cat([model(images[i : i + 1], keep[i : i + 1]) for i in range(6)])
    assert torch.allclose(batched, single, atol=1e-5)
    assert not torch.allclose(batched, model(images), atol=1e-3)  # the masks matter


def test_keep_of_wrong_shape_is_refused(model, images):
    with pytest.raises(ValueError, match=r"keep must have shape \(batch, 15\)"):
        model(images, torch.ones(6, 14))


def test_flops_match_torch_flop_counter(model):
    x = torch.rand(1, 3, 32, 32)
    counter = FlopCounterMode(display=False)
    with counter:
        model(x)
    assert model.flops().item() == counter.get_total_flops() == 137_725_184
    h = model.stem(x)
    for k, block in enumerate(model.blocks):
        counter = FlopCounterMode(display=False)
        with counter:
            out = block(h)
        assert model.block_flops[k].item() == counter.get_total_flops(), f"block {k}"
        h = out
    keep = torch.zeros(2, 15)
    keep[1, :5] = 1
    fixed = model.flops(keep)[0].item()
    assert fixed == 2 * 9 * 3 * 16 * 32 * 32 + 2 * 64 * 10
    assert model.flops(keep)[1].item() == fixed + 5 * 2 * (2 * 9 * 16 * 16 * 32 * 32)
