"""Asymmetry contrast: the symmetric crop against a padding/slicing reference, seeding, real masks; the
objective's one-pass Siamese loss against the pure loss, closed forms through linear encoders, unmasked
rows, gradients through MONAI's BasicUNet, 2-D images and the auxiliary segmentation loss."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from torch import Tensor, nn
from torch.utils.data import default_collate

from medcl.configurable import instantiate_spec, module_spec
from medcl.errors import ConfigError, DataError
from medcl.losses import asymmetry_loss_terms, flip_lr
from medcl.objectives import AsymmetryContrast, BatchObjective, SymmetricCropd
from medcl.objectives.asymmetry import (
    ASYM_HAS_MASK,
    ASYM_IMAGE,
    ASYM_MASK,
    ASYM_MIRROR,
    ASYM_MIRROR_MASK,
)

KEYS = (ASYM_IMAGE, ASYM_MIRROR, ASYM_MASK, ASYM_MIRROR_MASK, ASYM_HAS_MASK)


# --- helpers ----------------------------------------------------------------------------------------


def reference_window(x: np.ndarray, starts: tuple[int, ...], roi: tuple[int, ...]) -> np.ndarray:
    """x[:, s:s+r, ...] of a channel-first array zero-padded by np.pad (independent of the module)."""
    pad = max(roi) + max(x.shape)
    padded = np.pad(x, [(0, 0)] + [(pad, pad)] * (x.ndim - 1))
    index = (slice(None), *(slice(s + pad, s + pad + r) for s, r in zip(starts, roi, strict=True)))
    return padded[index]


def random_sample(spatial: tuple[int, ...], seed: int, labels: bool = True) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    sample: dict[str, Any] = {
        "image": rng.normal(size=(2, *spatial)).astype(np.float32),
        "patient_id": "p",
        "meta": {"path": "/data/case.nii.gz", "mask_path": "/data/case_seg.nii.gz"},
    }
    if labels:
        sample["mask"] = rng.integers(0, 3, size=(1, *spatial)).astype(np.int64)
    return sample


def symmetric(x: np.ndarray) -> np.ndarray:
    """x made equal to its own mirror image along the first spatial axis (axis 1)."""
    return (x + np.flip(x, axis=1)) / 2


def collate(items: list[dict[str, Any]], keys: tuple[str, ...] = KEYS) -> dict[str, Any]:
    """As ManifestDataset + default_collate do with an item transform's outputs."""
    return default_collate([{k: torch.as_tensor(item[k]) for k in keys} for item in items])


class ToyDense(nn.Module):
    """A dense 'encoder-decoder' for tests: one convolution (and optionally tanh), any spatial dims.

    Records the batch size of every forward_dense call.
    """

    def __init__(self, spatial_dims: int, in_channels: int = 2, linear: bool = True, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        self.conv = conv(in_channels, 5, kernel_size=3, padding=1, bias=not linear)
        self.linear = linear
        self.calls: list[int] = []

    def forward_dense(self, x: Tensor) -> Tensor:
        self.calls.append(int(x.shape[0]))
        y = self.conv(x)
        return y if self.linear else torch.tanh(y)


def volume_with_lesion(amplitude: float, seed: int = 0, shape: tuple[int, ...] = (16, 12, 12)) -> np.ndarray:
    """A (2, *shape) volume symmetric about its LR mid-plane plus a one-sided box lesion."""
    rng = np.random.default_rng(seed)
    x = symmetric(rng.normal(size=(2, *shape)).astype(np.float64))
    x[:, 2:6, 3:7, 4:8] += amplitude
    return x.astype(np.float32)


# --- SymmetricCropd ---------------------------------------------------------------------------------

CROP_CASES = [
    # spatial shape, roi: LR larger with even / odd difference, LR smaller (pad) even / odd, 2-D
    ((20, 14, 11), (12, 8, 8)),
    ((21, 14, 11), (12, 8, 8)),
    ((8, 9, 6), (12, 8, 8)),
    ((9, 5, 6), (12, 8, 8)),
    ((19, 13), (10, 6)),
]


@pytest.mark.parametrize(("spatial", "roi"), CROP_CASES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_crop_matches_reference(spatial: tuple[int, ...], roi: tuple[int, ...], seed: int) -> None:
    sample = random_sample(spatial, seed)
    crop = SymmetricCropd(roi_size=roi, lesion_labels=(2,))
    crop.set_random_state(seed=seed)
    out = crop(sample)
    starts = crop.starts
    assert starts is not None
    assert starts[0] == (spatial[0] - roi[0]) // 2  # centred on the left-right axis
    for start, n, r in zip(starts[1:], spatial[1:], roi[1:], strict=True):
        assert (0 <= start <= n - r) if n > r else start == (n - r) // 2
    image, mask = sample["image"], sample["mask"]
    flipped_image, flipped_mask = np.flip(image, axis=1), np.flip(mask, axis=1)
    np.testing.assert_array_equal(out[ASYM_IMAGE].numpy(), reference_window(image, starts, roi))
    np.testing.assert_array_equal(out[ASYM_MIRROR].numpy(), reference_window(flipped_image, starts, roi))
    lesion = reference_window((mask == 2).astype(np.float32), starts, roi)
    mirror_lesion = reference_window((flipped_mask == 2).astype(np.float32), starts, roi)
    np.testing.assert_array_equal(out[ASYM_MASK].numpy(), lesion)
    np.testing.assert_array_equal(out[ASYM_MIRROR_MASK].numpy(), mirror_lesion)
    assert out[ASYM_HAS_MASK] is True
    assert out[ASYM_IMAGE].dtype == torch.float32 and out[ASYM_MASK].dtype == torch.float32
    assert tuple(out[ASYM_IMAGE].shape) == (2, *roi) and tuple(out[ASYM_MASK].shape) == (1, *roi)
    assert set(crop.output_keys) == set(KEYS)
    assert out["patient_id"] == "p" and "image" in out  # the rest of the sample is kept


@pytest.mark.parametrize(("spatial", "roi"), CROP_CASES)
def test_symmetric_volume_stays_symmetric(spatial: tuple[int, ...], roi: tuple[int, ...]) -> None:
    sample = random_sample(spatial, seed=3)
    sample["image"] = symmetric(sample["image"]).astype(np.float32)
    crop = SymmetricCropd(roi_size=roi)
    for seed in range(4):
        crop.set_random_state(seed=seed)
        out = crop(sample)
        # The mirror image of a symmetric volume is itself, in every window.
        np.testing.assert_array_equal(out[ASYM_MIRROR].numpy(), out[ASYM_IMAGE].numpy())
        if (spatial[0] - roi[0]) % 2 == 0:
            # The crop's mid-plane is the volume's: the crop is itself symmetric.
            np.testing.assert_array_equal(out[ASYM_IMAGE].numpy(), np.flip(out[ASYM_IMAGE].numpy(), axis=1))
            np.testing.assert_array_equal(
                out[ASYM_MIRROR_MASK].numpy(), np.flip(out[ASYM_MASK].numpy(), axis=1)
            )


def test_lr_random_draws_the_left_right_position_and_keeps_the_mirror_exact() -> None:
    sample = random_sample((30, 8, 8), seed=4)
    crop = SymmetricCropd(roi_size=(10, 8, 8), lr_random=True)
    lr_starts = set()
    for seed in range(12):
        crop.set_random_state(seed=seed)
        out = crop(sample)
        starts = crop.starts
        lr_starts.add(starts[0])
        flipped = np.flip(sample["image"], axis=1)
        np.testing.assert_array_equal(out[ASYM_MIRROR].numpy(), reference_window(flipped, starts, (10, 8, 8)))
    assert len(lr_starts) > 3


def test_same_seed_same_output_other_seed_other_crop() -> None:
    sample = random_sample((20, 30, 25), seed=5)
    crop = SymmetricCropd(roi_size=(16, 8, 8))
    crop.set_random_state(seed=7)
    a = crop(sample)
    crop.set_random_state(seed=7)
    b = crop(sample)
    for key in KEYS[:4]:
        assert torch.equal(a[key], b[key])
    other = set()
    for seed in range(8, 14):
        crop.set_random_state(seed=seed)
        crop(sample)
        other.add(crop.starts)
    assert len(other) > 1
    # A second transform seeded alike draws alike (no global randomness).
    twin = SymmetricCropd(roi_size=(16, 8, 8))
    twin.set_random_state(seed=7)
    np.random.seed(123)
    assert torch.equal(twin(sample)[ASYM_IMAGE], a[ASYM_IMAGE])


def test_sample_without_mask_gets_zero_masks() -> None:
    sample = random_sample((12, 8, 8), seed=6, labels=False)
    out = SymmetricCropd(roi_size=(8, 8, 8))(sample)
    assert out[ASYM_HAS_MASK] is False
    assert not out[ASYM_MASK].any() and not out[ASYM_MIRROR_MASK].any()
    assert tuple(out[ASYM_MASK].shape) == (1, 8, 8, 8)
    sample["mask"] = None  # an adapter may put None for a case without a mask
    assert SymmetricCropd(roi_size=(8, 8, 8))(sample)[ASYM_HAS_MASK] is False


def test_default_lesion_is_every_positive_label_and_tensors_are_accepted() -> None:
    sample = random_sample((12, 8, 8), seed=7)
    sample["image"] = MetaTensor(torch.from_numpy(sample["image"]))
    sample["mask"] = torch.from_numpy(sample["mask"][0])  # (H, W, D) without channel
    crop = SymmetricCropd(roi_size=(12, 8, 8))
    out = crop(sample)
    assert type(out[ASYM_IMAGE]) is torch.Tensor
    np.testing.assert_array_equal(out[ASYM_IMAGE].numpy(), sample["image"].numpy())
    np.testing.assert_array_equal(out[ASYM_MASK].numpy()[0], (sample["mask"].numpy() > 0).astype(np.float32))


def test_bad_shapes_raise_data_error_naming_the_file() -> None:
    sample = random_sample((12, 8, 8), seed=8)
    sample["mask"] = sample["mask"][:, :, :7]
    with pytest.raises(DataError, match=r"case_seg\.nii\.gz.*does not match"):
        SymmetricCropd(roi_size=(8, 8, 8))(sample)
    with pytest.raises(DataError, match=r"case\.nii\.gz.*spatial axes"):
        SymmetricCropd(roi_size=(8, 8))(random_sample((12, 8, 8), seed=8))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"roi_size": ()},
        {"roi_size": (8, 0, 8)},
        {"roi_size": (8.5, 8, 8)},
        {"lesion_labels": []},
        {"lesion_labels": [1.5]},
    ],
)
def test_bad_crop_settings_raise(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        SymmetricCropd(**kwargs)


def test_real_hippocampus_case(shared_data: Path) -> None:
    """A real MSD hippocampus MRI crop and its labels (0 background, 1 anterior, 2 posterior)."""
    import nibabel as nib

    root = shared_data / "msd_hippocampus"
    image_nii = nib.as_closest_canonical(nib.load(root / "imagesTr" / "hippocampus_001.nii.gz"))
    label_nii = nib.as_closest_canonical(nib.load(root / "labelsTr" / "hippocampus_001.nii.gz"))
    image = np.asarray(image_nii.dataobj, dtype=np.float32)[None]
    labels = np.asarray(label_nii.dataobj).astype(np.int64)[None]
    assert set(np.unique(labels)) == {0, 1, 2}
    sample = {"image": image, "mask": labels, "meta": {"path": str(root)}}
    roi = (32, 32, 32)
    crop = SymmetricCropd(roi_size=roi, lesion_labels=(1,))
    crop.set_random_state(seed=0)
    out = crop(sample)
    starts = crop.starts
    assert starts[0] == (image.shape[1] - 32) // 2
    np.testing.assert_array_equal(out[ASYM_IMAGE].numpy(), reference_window(image, starts, roi))
    expected = reference_window((labels == 1).astype(np.float32), starts, roi)
    np.testing.assert_array_equal(out[ASYM_MASK].numpy(), expected)
    assert expected.sum() > 0  # the crop holds part of the anterior hippocampus
    mirror_expected = reference_window((np.flip(labels, axis=1) == 1).astype(np.float32), starts, roi)
    np.testing.assert_array_equal(out[ASYM_MIRROR_MASK].numpy(), mirror_expected)
    np.testing.assert_array_equal(
        out[ASYM_MIRROR].numpy(), reference_window(np.flip(image, axis=1), starts, roi)
    )


# --- the objective ----------------------------------------------------------------------------------


def test_settings_round_trip_and_validation() -> None:
    objective = AsymmetryContrast(
        roi_size=(32, 16, 16), margin=0.8, normalize=True, symmetry_weight_unmasked=0.25, lesion_labels=[2]
    )
    assert isinstance(objective, BatchObjective)
    spec = module_spec(objective)
    assert spec is not None and spec["class_path"] == "medcl.objectives.asymmetry.AsymmetryContrast"
    rebuilt = instantiate_spec(spec)
    assert (rebuilt.roi_size, rebuilt.margin, rebuilt.symmetry_weight_unmasked, rebuilt.lesion_labels) == (
        (32, 16, 16),
        0.8,
        0.25,
        (2,),
    )
    transform = objective.item_transform("img")
    assert isinstance(transform, SymmetricCropd)
    assert (transform.image_key, transform.roi_size, transform.lesion_labels) == ("img", (32, 16, 16), (2,))
    for bad in ({"margin": 0}, {"margin": 3.0}, {"symmetry_weight_unmasked": -1}, {"roi_size": (0, 4)}):
        with pytest.raises(ConfigError):
            AsymmetryContrast(**bad)
    assert AsymmetryContrast(margin=3.0, normalize=False).margin == 3.0


def _batch(objective: AsymmetryContrast, samples: list[dict[str, Any]], seed: int = 0) -> dict[str, Any]:
    transform = objective.item_transform("image")
    items = []
    for i, sample in enumerate(samples):
        transform.set_random_state(seed=seed + i)
        items.append(transform(dict(sample)))
    return collate(items)


def test_forward_batch_is_one_pass_and_matches_the_pure_loss() -> None:
    objective = AsymmetryContrast(roi_size=(12, 8, 8), margin=0.9, symmetry_weight_unmasked=0.5)
    samples = [random_sample((15, 10, 9), seed=s) for s in range(3)]
    del samples[1]["mask"]
    batch = _batch(objective, samples)
    assert batch[ASYM_HAS_MASK].tolist() == [True, False, True]
    encoder = ToyDense(3, linear=False)
    terms = objective.forward_batch(encoder, batch)
    assert encoder.calls == [6]  # ONE call on image and mirror image together
    with torch.no_grad():
        f = encoder.forward_dense(batch[ASYM_IMAGE])
        g = encoder.forward_dense(batch[ASYM_MIRROR])
    expected = asymmetry_loss_terms(
        f,
        g,
        batch[ASYM_MASK],
        batch[ASYM_HAS_MASK],
        batch[ASYM_MIRROR_MASK],
        margin=0.9,
        symmetry_weight_unmasked=0.5,
    )
    assert set(terms) == {"loss", "asym_symmetry", "asym_margin"}
    assert terms["asym_symmetry"].item() == pytest.approx(expected.symmetry.item(), rel=1e-5)
    assert terms["asym_margin"].item() == pytest.approx(expected.margin.item(), rel=1e-5)
    assert terms["loss"].item() == pytest.approx(terms["asym_symmetry"].item() + terms["asym_margin"].item())
    assert terms["asym_margin"].item() > 0 and terms["asym_symmetry"].item() > 0


def test_symmetric_volume_gives_zero_and_unmasked_lesion_cost_is_quadratic() -> None:
    """Linear bias-free encoder, no normalisation: f(x) − f(x̃) = f(x − x̃) is linear in the lesion."""
    objective = AsymmetryContrast(roi_size=(16, 12, 12), normalize=False)
    encoder = ToyDense(3, linear=True)
    losses = []
    for amplitude in (0.0, 1.0, 2.0):
        sample = {"image": volume_with_lesion(amplitude)}
        terms = objective.forward_batch(encoder, _batch(objective, [sample]))
        losses.append(terms["loss"].item())
        assert terms["asym_margin"].item() == 0.0
    assert losses[0] == pytest.approx(0.0, abs=1e-10)
    assert losses[1] > 0
    assert losses[2] == pytest.approx(4 * losses[1], rel=1e-4)


def test_unmasked_rows_contribute_only_weighted_symmetry() -> None:
    samples = [
        {"image": volume_with_lesion(1.0, seed=s), "mask": np.zeros((1, 16, 12, 12), np.int64)}
        for s in (1, 2)
    ]
    samples[0]["mask"][:, 2:6, 3:7, 4:8] = 1
    encoder = ToyDense(3, linear=False)
    results = {}
    for weight in (0.0, 1.0, 3.0):
        objective = AsymmetryContrast(roi_size=(16, 12, 12), symmetry_weight_unmasked=weight)
        batch = _batch(objective, samples)
        batch[ASYM_HAS_MASK] = torch.tensor([True, False])
        terms = objective.forward_batch(encoder, batch)
        # Whatever the unmasked row's masks hold, they are ignored.
        batch[ASYM_MASK][1] = 1.0
        batch[ASYM_MIRROR_MASK][1, :, :4] = 1.0
        again = objective.forward_batch(encoder, batch)
        assert again["loss"].item() == pytest.approx(terms["loss"].item(), abs=1e-7)
        results[weight] = terms
    per_row = {}
    for row in (0, 1):
        only = AsymmetryContrast(roi_size=(16, 12, 12))
        batch = _batch(only, samples)
        single = {k: v[row : row + 1] for k, v in batch.items()}
        single[ASYM_HAS_MASK] = torch.tensor([row == 0])
        per_row[row] = only.forward_batch(encoder, single)
    margin_0 = per_row[0]["asym_margin"].item()
    sym_0, sym_1 = per_row[0]["asym_symmetry"].item(), per_row[1]["asym_symmetry"].item()
    assert sym_1 > 0 and margin_0 > 0
    for weight, terms in results.items():
        assert terms["asym_margin"].item() == pytest.approx(margin_0 / 2, rel=1e-5)
        assert terms["asym_symmetry"].item() == pytest.approx((sym_0 + weight * sym_1) / 2, rel=1e-5)


def test_gradient_flows_to_every_conv_parameter() -> None:
    objective = AsymmetryContrast(roi_size=(16, 12, 12))
    sample = {"image": volume_with_lesion(0.5), "mask": np.zeros((1, 16, 12, 12), np.int64)}
    sample["mask"][:, 2:6, 3:7, 4:8] = 1
    encoder = ToyDense(3, linear=False)
    objective.forward_batch(encoder, _batch(objective, [sample]))["loss"].backward()
    for p in encoder.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_unet_backbone() -> None:
    encoders = pytest.importorskip(
        "modalities.volumes.encoders",
        reason="modalities.volumes.encoders (the lead's backbones) not there yet",
    )
    torch.manual_seed(0)
    encoder = encoders.UNetBackbone(in_channels=2, features=(4, 4, 8, 8, 16, 4))
    objective = AsymmetryContrast(roi_size=(32, 32, 32), margin=1.0)
    rng = np.random.default_rng(0)
    healthy = symmetric(rng.normal(size=(2, 36, 40, 30))).astype(np.float32)
    lesioned = healthy.copy()
    lesioned[:, 8:14, 10:20, 8:16] += 2.0
    mask = np.zeros((1, 36, 40, 30), np.int64)
    mask[:, 8:14, 10:20, 8:16] = 1
    samples = [{"image": healthy}, {"image": lesioned, "mask": mask}, {"image": lesioned}]
    batch = _batch(objective, samples, seed=3)
    assert batch[ASYM_MASK][1].sum() > 0
    terms = objective.forward_batch(encoder, batch)
    # Row 0 (symmetric, unmasked) costs nothing; compare with the rows one by one.
    single = [objective.forward_batch(encoder, {k: v[i : i + 1] for k, v in batch.items()}) for i in range(3)]
    assert single[0]["loss"].item() == pytest.approx(0.0, abs=1e-6)
    assert single[2]["asym_symmetry"].item() > 1e-4  # the unmasked lesion shows in the symmetry term
    assert single[2]["asym_margin"].item() == 0.0
    assert single[1]["asym_margin"].item() > 0
    mean_sym = sum(s["asym_symmetry"].item() for s in single) / 3
    assert terms["asym_symmetry"].item() == pytest.approx(mean_sym, rel=1e-4)
    terms["loss"].backward()
    grads = [p.grad for p in encoder.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    with pytest.raises(ConfigError, match="multiples of 16"):
        AsymmetryContrast(roi_size=(24, 32, 32)).forward_batch(
            encoder, _batch(AsymmetryContrast(roi_size=(24, 32, 32)), samples[:1])
        )


def test_two_dimensional_images() -> None:
    """X-ray-like 2-D samples (C, W, H): the flip is along the first spatial axis as for volumes."""
    rng = np.random.default_rng(9)
    images = [symmetric(rng.normal(size=(1, 22, 18))).astype(np.float32) for _ in range(2)]
    images[1][:, 3:7, 5:9] += 1.5
    mask = np.zeros((1, 22, 18), np.int64)
    mask[:, 3:7, 5:9] = 1
    samples = [{"image": images[0]}, {"image": images[1], "mask": mask}]
    objective = AsymmetryContrast(roi_size=(16, 16), margin=1.0)
    batch = _batch(objective, samples)
    assert tuple(batch[ASYM_IMAGE].shape) == (2, 1, 16, 16)
    assert torch.equal(batch[ASYM_MIRROR], flip_lr(batch[ASYM_IMAGE]))  # 22 - 16 is even: centred crop
    encoder = ToyDense(2, in_channels=1, linear=False)
    terms = objective.forward_batch(encoder, batch)
    with torch.no_grad():
        f, g = encoder.forward_dense(batch[ASYM_IMAGE]), encoder.forward_dense(batch[ASYM_MIRROR])
    expected = asymmetry_loss_terms(f, g, batch[ASYM_MASK], batch[ASYM_HAS_MASK], batch[ASYM_MIRROR_MASK])
    assert terms["loss"].item() == pytest.approx(expected.loss.item(), rel=1e-5)
    assert terms["asym_margin"].item() > 0


# --- the auxiliary loss for segmentation ------------------------------------------------------------


def test_auxiliary_loss_with_encoder_or_features() -> None:
    objective = AsymmetryContrast(lesion_labels=[2], margin=0.7, symmetry_weight_unmasked=0.3)
    rng = np.random.default_rng(10)
    image = torch.from_numpy(rng.normal(size=(2, 2, 10, 8, 6)).astype(np.float32))
    labels = torch.from_numpy(rng.integers(0, 3, size=(2, 1, 10, 8, 6)))
    encoder = ToyDense(3, linear=False)
    terms = objective.auxiliary_loss(encoder, image, labels)
    assert encoder.calls == [4]
    with torch.no_grad():
        features = encoder.forward_dense(torch.cat([image, flip_lr(image)]))
    lesion = labels == 2
    expected = asymmetry_loss_terms(
        features[:2], features[2:], lesion, margin=0.7, symmetry_weight_unmasked=0.3
    )
    assert terms["loss"].item() == pytest.approx(expected.loss.item(), rel=1e-5)
    assert terms["asym_margin"].item() == pytest.approx(expected.margin.item(), rel=1e-5)
    from_features = objective.auxiliary_loss(features, image, labels)
    assert from_features["loss"].item() == pytest.approx(terms["loss"].item(), rel=1e-6)
    # No mask: symmetry only, at the unmasked weight.
    no_mask = objective.auxiliary_loss(features, image, None)
    all_out = asymmetry_loss_terms(features[:2], features[2:], None, symmetry_weight_unmasked=0.3)
    assert no_mask["asym_margin"].item() == 0.0
    assert no_mask["loss"].item() == pytest.approx(all_out.loss.item(), rel=1e-6)
    # Explicit mirror image and mask (crops off the mid-plane).
    mirror = torch.from_numpy(rng.normal(size=(2, 2, 10, 8, 6)).astype(np.float32))
    mirror_labels = torch.from_numpy(rng.integers(0, 3, size=(2, 1, 10, 8, 6)))
    explicit = objective.auxiliary_loss(
        encoder, image, labels, mirror_image=mirror, mirror_mask=mirror_labels
    )
    with torch.no_grad():
        f, g = encoder.forward_dense(image), encoder.forward_dense(mirror)
    expected = asymmetry_loss_terms(f, g, lesion, None, mirror_labels == 2, margin=0.7)
    assert explicit["loss"].item() == pytest.approx(expected.loss.item(), rel=1e-5)


def test_auxiliary_loss_equals_forward_batch_on_centred_crops() -> None:
    objective = AsymmetryContrast(roi_size=(12, 8, 8))
    samples = [random_sample((16, 10, 9), seed=s) for s in (11, 12)]
    batch = _batch(objective, samples)
    encoder = ToyDense(3, linear=False)
    a = objective.forward_batch(encoder, batch)
    b = objective.auxiliary_loss(encoder, batch[ASYM_IMAGE], batch[ASYM_MASK])
    assert a["loss"].item() == pytest.approx(b["loss"].item(), rel=1e-6)


def test_errors() -> None:
    objective = AsymmetryContrast(roi_size=(8, 8, 8))
    image = torch.zeros(2, 2, 8, 8, 8)
    with pytest.raises(ConfigError, match="forward_dense"):
        objective.auxiliary_loss(nn.Conv3d(2, 2, 1), image, None)
    with pytest.raises(ConfigError, match=r"\(2B, F"):
        objective.auxiliary_loss(torch.zeros(2, 5, 8, 8, 8), image, None)
    with pytest.raises(ConfigError, match="item_transform"):
        objective.forward_batch(ToyDense(3), {ASYM_IMAGE: image})
    with pytest.raises(TypeError, match="forward_batch"):
        objective(None)
