"""kNN and linear probe reach ~100% on separable features; bag-of-features embeddings."""

import torch

from empssl_ray.config import ModelConfig, PatchConfig
from empssl_ray.evaluation.features import embed_dataset, embed_images
from empssl_ray.evaluation.probe import knn_accuracy, linear_probe
from empssl_ray.method.models import EMPSSLModel, build_model
from empssl_ray.method.patches import cut_patches, to_model_input


def _clusters(n_per: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centers = torch.eye(5, 20) * 6
    y = torch.arange(5).repeat_interleave(n_per)
    return centers[y] + torch.randn(len(y), 20, generator=g), y


def test_probe_and_knn_separate_clusters() -> None:
    (xtr, ytr), (xte, yte) = _clusters(60, 0), _clusters(20, 1)
    assert knn_accuracy(xtr, ytr, xte, yte) > 0.98
    result = linear_probe(xtr, ytr, xte, yte, epochs=20, lr=0.1, batch_size=64)
    assert result["probe_acc"] > 0.98 and result["probe_train_acc"] > 0.95


def test_probe_and_knn_are_at_chance_on_random_labels() -> None:
    (xtr, _), (xte, _) = _clusters(60, 0), _clusters(20, 1)
    g = torch.Generator().manual_seed(2)
    ytr, yte = torch.randint(0, 5, (300,), generator=g), torch.randint(0, 5, (100,), generator=g)
    assert knn_accuracy(xtr, ytr, xte, yte) < 0.45
    assert linear_probe(xtr, ytr, xte, yte, epochs=10)["probe_acc"] < 0.45


def _small_model() -> EMPSSLModel:
    cfg = ModelConfig(backbone="resnet-narrow", width=4, prefeature_dim=8, hidden_dim=8, proj_dim=4)
    return build_model(cfg, 3).eval()


def test_bag_of_features_is_the_mean_of_the_patch_embeddings() -> None:
    model = _small_model()
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    emb = embed_images(model, images, 5, 16, torch.Generator().manual_seed(0))
    # The same patches by hand: one h per patch, then the mean over each image's 5.
    patches = cut_patches(images, PatchConfig(), 16, torch.Generator().manual_seed(0), 5)
    with torch.no_grad():
        h = model.encode(to_model_input(patches)).view(6, 5, -1)
    torch.testing.assert_close(emb, h.mean(dim=1))
    assert not torch.allclose(emb, h[:, 0], atol=1e-4)  # a mean, not one patch's h
    all_at_once = embed_dataset(model, images.numpy(), 5, 16, batch_size=4)
    assert all_at_once.shape == (6, 8) and torch.isfinite(all_at_once).all()


def test_evaluation_cuts_patches_with_the_training_settings() -> None:
    model = _small_model()
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)

    def embed(cfg: PatchConfig) -> torch.Tensor:
        return embed_dataset(model, images.numpy(), 4, 16, batch_size=6, seed=1, patches=cfg)

    quarter, half = embed(PatchConfig(crop_scale=0.25)), embed(PatchConfig(crop_scale=0.5))
    assert not torch.allclose(quarter, half, atol=1e-4)  # patches.crop_scale reaches evaluation
    boxes = embed(PatchConfig(aspect_ratio=[0.75, 1.333], interpolation="bicubic"))
    assert not torch.allclose(quarter, boxes, atol=1e-4)
    # ... and evaluation's patches are exactly what training's cutter makes of the images.
    cfg = PatchConfig(crop_scale=0.5, interpolation="bicubic")
    patches = cut_patches(images, cfg, 16, torch.Generator().manual_seed(1), 4)
    with torch.no_grad():
        by_hand = model.encode(to_model_input(patches)).view(6, 4, -1).mean(1)
    torch.testing.assert_close(embed(cfg), by_hand)


class InputRecorder(torch.nn.Module):
    """Wraps a model's encode and keeps every input it sees."""

    def __init__(self, model: EMPSSLModel) -> None:
        super().__init__()
        self.model = model
        self.inputs: list[torch.Tensor] = []

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.clone())
        return self.model.encode(x)


def test_bf16_autocast_leaves_the_evaluation_patches_float32_exact() -> None:
    cfg = ModelConfig(backbone="resnet-narrow", width=4, prefeature_dim=8, hidden_dim=8, proj_dim=4)
    model = build_model(cfg, 3).eval()
    images = torch.randint(
        0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    plain, simulated = InputRecorder(model), InputRecorder(model)
    embed_dataset(plain, images.numpy(), 20, 32, batch_size=4, seed=3)
    # CPU autocast stands in for CUDA's: it runs conv2d (the blur's op) in bf16 too.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        embed_dataset(simulated, images.numpy(), 20, 32, batch_size=4, seed=3)
    for a, b in zip(plain.inputs, simulated.inputs, strict=True):
        assert torch.equal(a, b)

    # bf16=True runs the model in bf16 (other embeddings) on the same float32-exact patches.
    def first_batch(bf16: bool) -> torch.Tensor:
        gen = torch.Generator().manual_seed(3)  # embed_dataset's generator for its first batch
        return embed_images(simulated, images[:4], 20, 32, gen, bf16=bf16)

    low, full = first_batch(bf16=True), first_batch(bf16=False)
    assert torch.equal(simulated.inputs[-2], plain.inputs[0])
    assert low.dtype == torch.float32 and not torch.equal(low, full)


def test_match_channels_turns_grey_into_rgb_and_back() -> None:
    from empssl_ray.evaluation.features import match_channels

    grey = torch.randint(0, 256, (2, 1, 4, 4), dtype=torch.uint8)
    rgb = match_channels(grey, 3)
    assert rgb.shape == (2, 3, 4, 4) and (rgb == grey).all()
    assert torch.equal(match_channels(rgb, 1), grey)  # equal channels: luma is the grey value
    assert match_channels(grey, 1) is grey
    colour = torch.tensor([255, 0, 0], dtype=torch.uint8).view(1, 3, 1, 1)
    assert int(match_channels(colour, 1)) == round(0.299 * 255)


def test_knn_with_the_bank_streamed_in_chunks_equals_the_whole_bank() -> None:
    from empssl_ray.evaluation.probe import knn_accuracy_streamed

    g = torch.Generator().manual_seed(0)
    train_x, test_x = torch.randn(500, 16, generator=g), torch.randn(120, 16, generator=g)
    train_y = torch.randint(0, 5, (500,), generator=g)
    test_y = torch.randint(0, 5, (120,), generator=g)
    whole = knn_accuracy(train_x, train_y, test_x, test_y, k=7)
    chunks = [(train_x[i : i + 64], train_y[i : i + 64]) for i in range(0, 500, 64)]
    assert knn_accuracy_streamed(chunks, test_x, test_y, 5, k=7, batch_size=50) == whole
    # A bank smaller than k in its first chunk still keeps the k best of the whole bank.
    tiny = [(train_x[:3], train_y[:3]), (train_x[3:], train_y[3:])]
    assert knn_accuracy_streamed(tiny, test_x, test_y, 5, k=7) == whole
