"""Evaluation against a NumPy confusion matrix of per-image forwards, and test-time augmentation
against forwards of images flipped and rescaled by hand."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from atrous.engine import distributed
from atrous.engine.evaluate import check_scales, evaluate, predict_probabilities

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
CLASSES = 3
WRONG = (TypeError, ValueError)  # a bool or a float where an int belongs may raise either


class Images(torch.utils.data.Dataset):
    """Random float64 images of the given sizes with random labels, some pixels ignored."""

    num_classes = CLASSES
    ignore_index = 255

    def __init__(self, sizes, seed=0):
        generator = torch.Generator().manual_seed(seed)
        self.items = []
        for height, width in sizes:
            image = torch.rand(3, height, width, generator=generator, dtype=torch.float64)
            mask = torch.randint(0, CLASSES, (height, width), generator=generator)
            mask[torch.rand(height, width, generator=generator) < 0.1] = 255
            self.items.append((image, mask))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


def tiny_model() -> nn.Module:
    """Float64 logits at input size; BatchNorm with running statistics far from a batch's own, so a
    forward left in training mode predicts differently; not symmetric under a horizontal flip."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                          nn.Conv2d(6, CLASSES, (3, 5), padding=(1, 2)))
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
    return model.double()


def normalised(image, mean=MEAN, std=STD):
    """``(3, H, W)`` -> ``(1, 3, H, W)``, each channel less its mean, over its std."""
    return ((image - torch.tensor(mean, dtype=image.dtype)[:, None, None])
            / torch.tensor(std, dtype=image.dtype)[:, None, None])[None]


def by_hand(model, image, *, flip=False, sizes=None):
    """Softmax probabilities (K, H, W) of one image: normalised, resized to each of ``sizes``
    (default: its own), optionally also mirrored, each result brought back and averaged."""
    height, width = image.shape[-2:]
    x = normalised(image)
    outputs = []
    with torch.no_grad():
        for size in sizes or [(height, width)]:
            scaled = F.interpolate(x, size=size, mode="bilinear", align_corners=False) if size != (height, width) else x
            views = [scaled, scaled.flip(-1)] if flip else [scaled]
            for mirrored, view in enumerate(views):
                logits = model(view)
                logits = logits.flip(-1) if mirrored else logits
                logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
                outputs.append(logits.softmax(1)[0])
    return torch.stack(outputs).mean(0)


def numpy_confusion(dataset, predictions) -> np.ndarray:
    matrix = np.zeros((CLASSES, CLASSES), dtype=np.int64)
    for (_, mask), prediction in zip(dataset, predictions):
        labels, predicted = mask.numpy().ravel(), prediction.numpy().ravel()
        keep = labels != 255
        np.add.at(matrix, (labels[keep], predicted[keep]), 1)
    return matrix


def scores(matrix: np.ndarray) -> tuple[float, float, list[float]]:
    """mIoU, pixel accuracy and per-class IoU = TP / (TP + FP + FN)."""
    tp = np.diag(matrix)
    union = matrix.sum(0) + matrix.sum(1) - tp
    iou = [t / u if u else math.nan for t, u in zip(tp, union)]
    return float(np.nanmean(iou)), tp.sum() / matrix.sum(), iou


# Sizes change mid-batch and batches end short, so batching must follow the image size.
SIZES = [(12, 16), (12, 16), (12, 16), (10, 14), (12, 16)]


def test_confusion_and_scores_match_numpy_on_per_image_forwards():
    dataset, model = Images(SIZES), tiny_model()
    # evaluation uses the running statistics whatever mode the model is in, and gives that mode back
    expected = numpy_confusion(dataset, [by_hand(model.eval(), image).argmax(0) for image, _ in dataset])
    with torch.no_grad():  # training mode (batch statistics) predicts otherwise, so a mix-up would show
        batch_statistics = [copy.deepcopy(model).train()(normalised(image)).argmax(1)[0] for image, _ in dataset]
    assert not np.array_equal(numpy_confusion(dataset, batch_statistics), expected)
    result = evaluate(model.train(), dataset, batch_size=2, mean=MEAN, std=STD)
    assert model.training
    np.testing.assert_array_equal(np.array(result["confusion"]), expected)
    miou, pixel_acc, iou = scores(expected)
    assert result["miou"] == pytest.approx(miou) and result["pixel_acc"] == pytest.approx(pixel_acc)
    assert result["iou"] == pytest.approx(iou)


def test_flip_and_scales_reach_the_evaluation():
    dataset, model = Images([(16, 20), (16, 20), (10, 14)], seed=1), tiny_model().eval()
    sizes = {(16, 20): [(8, 10), (24, 30)], (10, 14): [(8, 8), (15, 21)]}  # 0.5 (at least 8) and 1.5
    predictions = [by_hand(model, image, flip=True, sizes=sizes[tuple(image.shape[-2:])]).argmax(0)
                   for image, _ in dataset]
    result = evaluate(model, dataset, batch_size=2, flip=True, scales=(0.5, 1.5), mean=MEAN, std=STD)
    np.testing.assert_array_equal(np.array(result["confusion"]), numpy_confusion(dataset, predictions))
    assert result["confusion"] != evaluate(model, dataset, batch_size=2, mean=MEAN, std=STD)["confusion"]


@pytest.mark.parametrize(("flip", "scales", "sizes"), [
    (True, (1.0,), [(16, 20)]),
    (False, (0.5, 1.5), [(8, 10), (24, 30)]),
    (True, (0.25, 1.0), [(8, 8), (16, 20)]),  # a scaled side is never below 8 pixels
])
def test_test_time_augmentation_averages_flipped_and_rescaled_forwards(flip, scales, sizes):
    model = tiny_model().eval()
    images = torch.rand(2, 3, 16, 20, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    seen = []
    model.register_forward_pre_hook(lambda module, inputs: seen.append(tuple(inputs[0].shape[-2:])))
    got = predict_probabilities(model, images, flip=flip, scales=scales, mean=MEAN, std=STD)
    assert seen == [size for size in sizes for _ in range(2 if flip else 1)]
    expected = torch.stack([by_hand(model, image, flip=flip, sizes=sizes) for image in images])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(got.sum(1), torch.ones(2, 16, 20, dtype=torch.float64), rtol=0, atol=1e-12)
    plain = predict_probabilities(model, images, mean=MEAN, std=STD)
    assert (got - plain).abs().max() > 1e-3  # the augmentation changes the answer, so ignoring it would show


def test_default_normalisation_is_imagenet():
    model = tiny_model().eval()
    images = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        expected = model(normalised(images[0], (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))).softmax(1)
    torch.testing.assert_close(predict_probabilities(model, images), expected, rtol=0, atol=1e-12)


def test_each_process_scores_its_share_and_the_sum_is_the_whole(monkeypatch):
    dataset, model = Images(SIZES), tiny_model().eval()
    whole = np.array(evaluate(model, dataset, batch_size=2, mean=MEAN, std=STD)["confusion"])
    monkeypatch.setattr(distributed, "all_reduce_sum", lambda tensor, context: tensor)  # each rank's own matrix
    shares = [np.array(evaluate(model, dataset, batch_size=2, mean=MEAN, std=STD,
                                context=distributed.DistributedContext(rank=rank, world_size=2))["confusion"])
              for rank in (0, 1)]
    valid = [int((mask != 255).sum()) for _, mask in dataset]
    assert [share.sum() for share in shares] == [sum(valid[0::2]), sum(valid[1::2])]  # rank r: images r, r + 2, ...
    np.testing.assert_array_equal(shares[0] + shares[1], whole)


@pytest.mark.parametrize("scales", [(), [], "1", (0.0,), (-1.0,), (math.nan,), (math.inf,), (True,), ("1",), None])
def test_bad_scales_are_named(scales):
    with pytest.raises(ValueError, match=r"scales \(--scales\) must be a non-empty sequence of finite numbers > 0"):
        check_scales(scales)


@pytest.mark.parametrize(("batch_size", "error"), [(0, ValueError), (True, WRONG), (1.5, WRONG)])
def test_bad_batch_sizes_are_named(batch_size, error):
    with pytest.raises(error, match=r"batch_size \(--batch-size\) must be an int >= 1"):
        evaluate(tiny_model(), Images([(8, 8)]), batch_size=batch_size)


def test_good_scales_come_back_as_a_tuple():
    assert check_scales([0.5, 2]) == (0.5, 2)
