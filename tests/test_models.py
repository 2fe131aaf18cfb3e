
import hydra
import pytest
import torch

from plid import CONF_DIR

MODEL_CONFIGS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml") if not p.stem.startswith("_"))
SEGMENTERS = [m for m in MODEL_CONFIGS if not m.startswith(("cls_", "grade_"))]


def test_all_paper_segmenters_have_a_config():
    archs = ["unet", "linknet", "fpn", "pspnet"]
    encoders = ["vgg16", "resnet34", "resnet50", "resnext50"]
    expected = {f"{a}_{e}" for a in archs for e in encoders} | {"deeplabv3plus_resnet50"}
    assert expected <= set(SEGMENTERS)


@pytest.mark.parametrize("name", SEGMENTERS)
def test_segmenter_config_builds_and_trains_one_step(compose, name):
    cfg = compose(f"model={name}")
    module = hydra.utils.instantiate(cfg.model, _convert_="all")
    x, y = torch.randn(2, 1, 64, 64), torch.randint(0, 4, (2, 64, 64))
    module.train()
    logits = module(x)
    assert logits.shape == (2, 4, 64, 64)
    loss = module.loss(logits, y)
    loss.backward()
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    assert all(torch.isfinite(g).all() for g in grads)
    # gradients reach both ends of the network (PSPNet leaves its deepest encoder stages unused)
    assert next(module.net.encoder.parameters()).grad.abs().sum() > 0
    assert all(p.grad is not None for p in module.net.segmentation_head.parameters())


def test_local_encoder_weights_file_is_loaded(compose, tmp_path):
    from plid.models.nets import build_segmenter

    source = build_segmenter("unet", "resnet34")
    path = tmp_path / "encoder.pt"
    torch.save(source.encoder.state_dict(), path)
    loaded = build_segmenter("unet", "resnet34", encoder_weights=str(path))
    assert torch.equal(loaded.encoder.conv1.weight, source.encoder.conv1.weight)


def test_unknown_names_list_the_valid_ones():
    from plid.models.nets import build_segmenter

    with pytest.raises(ValueError, match="valid:.*unet"):
        build_segmenter("unett", "resnet34")
    with pytest.raises(ValueError, match="unknown encoder"):
        build_segmenter("unet", "resnet35")


def test_segmentation_module_runs_channels_last_with_the_same_numbers(tmp_path):
    import copy

    from plid.models.losses import DiceFocalLoss
    from plid.models.nets import build_segmenter
    from plid.models.segmentation import SegmentationModule

    torch.manual_seed(0)
    net = build_segmenter("unet", "resnet34").eval()
    reference = copy.deepcopy(net)
    module = SegmentationModule(net, DiceFocalLoss(), torch.optim.Adam).eval()
    assert module.net.encoder.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        # the same arithmetic in another memory order: equal up to float32 summation order
        torch.testing.assert_close(module(x), reference(x), rtol=1e-3, atol=1e-3)
    # checkpoints hold plain tensors that load into a network in the default memory order
    torch.save(module.net.state_dict(), tmp_path / "net.pt")
    reference.load_state_dict(torch.load(tmp_path / "net.pt", weights_only=True))
    assert reference.encoder.conv1.weight.is_contiguous()
