"""Networks with one shared trunk (packed by PackNet) and one head per task.

- `small_vgg`: a VGG-style CNN for 28x28 grayscale images that trains on a
  laptop CPU; its first layer has 5x5 kernels (the notebooks follow one).
- `vgg16`: torchvision's VGG-16 (or VGG-16-BN) laid out as in the paper:
  features, fc6 and fc7 shared and packed; a separate classifier (fc8) per task.
- `resnet50`, `densenet121`: the original code's other two networks, laid
  out the same way (every convolution packed, the classifier per task).
"""
from __future__ import annotations

import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Sequence, Union

import torch
from torch import nn


class MultiHeadNet(nn.Module):
    """`trunk` shared by all tasks, `heads[t - 1]` the classifier of task t."""

    def __init__(self, trunk: nn.Module, feature_dim: int, num_classes: Sequence[int]):
        super().__init__()
        self.trunk = trunk
        self.feature_dim = feature_dim
        self.heads = nn.ModuleList(nn.Linear(feature_dim, n) for n in num_classes)

    @property
    def num_classes(self) -> list:
        return [h.out_features for h in self.heads]

    def forward(self, x: torch.Tensor, task: int) -> torch.Tensor:
        if not 1 <= task <= len(self.heads):
            raise ValueError(f"task {task} has no head: this network has heads for tasks "
                             f"1..{len(self.heads)}")
        return self.heads[task - 1](self.trunk(x))


def small_vgg(num_classes: Sequence[int], width: int = 16, batch_norm: bool = True) -> MultiHeadNet:
    """conv5x5 -> conv3x3 -> conv3x3 (each BN, ReLU, 2x2 max-pool) -> fc -> heads.

    Sized so that four tasks train in about a minute on a 2-core CPU.
    """
    def block(i: int, cin: int, cout: int, k: int):
        layers = [(f"conv{i}", nn.Conv2d(cin, cout, k, padding=k // 2))]
        if batch_norm:
            layers.append((f"bn{i}", nn.BatchNorm2d(cout)))
        layers += [(f"relu{i}", nn.ReLU(inplace=True)), (f"pool{i}", nn.MaxPool2d(2))]
        return layers

    w = width
    feature_dim = 8 * w
    trunk = nn.Sequential(OrderedDict(
        block(1, 1, w, 5) + block(2, w, 2 * w, 3) + block(3, 2 * w, 4 * w, 3) + [
            ("flatten", nn.Flatten()),
            ("fc", nn.Linear(4 * w * 3 * 3, feature_dim)),
            ("relu_fc", nn.ReLU(inplace=True)),
        ]))
    return MultiHeadNet(trunk, feature_dim, num_classes)


def _torchvision_net(name: str, weights: Union[None, str, Path]) -> nn.Module:
    """torchvision's network `name` (see TORCHVISION): random (None), with
    ImageNet weights from torchvision's weight enum ("imagenet", downloaded once
    into the torch hub cache), or from a saved state dict (machines without
    internet)."""
    from torchvision import models

    builder, enum, title = TORCHVISION[name]
    enum = getattr(models, enum)
    net = getattr(models, builder)(weights=enum.IMAGENET1K_V1 if weights == "imagenet" else None)
    if weights not in (None, "imagenet"):
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"{title} weights file {path} not found: pass a state dict saved "
                                    f"with torch.save(torchvision.models.{builder}(...).state_dict(), path)")
        try:   # a pickled whole model (weights_only refuses it), another network's or no state dict
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        except (RuntimeError, AttributeError, TypeError, pickle.UnpicklingError) as err:
            raise ValueError(f"{path} is not a torchvision {title} state dict "
                             f"({type(err).__name__}: {(str(err).splitlines() or [''])[0][:200]})") from None
    return net


# model name -> (torchvision builder, its weight enum, the name in messages).
# IMAGENET1K_V1 everywhere: the weights the original PackNet code started from.
TORCHVISION = {"vgg16": ("vgg16", "VGG16_Weights", "VGG-16"),
               "vgg16_bn": ("vgg16_bn", "VGG16_BN_Weights", "VGG-16-BN"),
               "resnet50": ("resnet50", "ResNet50_Weights", "ResNet-50"),
               "densenet121": ("densenet121", "DenseNet121_Weights", "DenseNet-121")}


def _multi_head(trunk: nn.Module, fc: nn.Linear, num_classes: Sequence[int], pretrained: bool) -> MultiHeadNet:
    """One head per task on `trunk`. With pretrained weights and
    `num_classes[0] == 1000`, task 1's head is the pretrained classifier, so
    task 1 *is* ImageNet, as in the paper."""
    model = MultiHeadNet(trunk, fc.in_features, num_classes)
    if pretrained and num_classes and num_classes[0] == fc.out_features:
        model.heads[0] = fc
    return model


def vgg16(num_classes: Sequence[int], weights: Union[None, str, Path] = None,
          batch_norm: bool = False) -> MultiHeadNet:
    """VGG-16 (or VGG-16-BN) with one head per task: features, fc6 and fc7
    shared and packed; fc8 per task.

    weights: None (random init), "imagenet" (torchvision's ImageNet weights)
    or the path of a saved torchvision VGG state dict.
    """
    net = _torchvision_net("vgg16_bn" if batch_norm else "vgg16", weights)
    trunk = nn.Sequential(OrderedDict(
        features=net.features, avgpool=net.avgpool, flatten=nn.Flatten(),
        fc=net.classifier[:6]))    # fc6, ReLU, Dropout, fc7, ReLU, Dropout
    return _multi_head(trunk, net.classifier[6], num_classes, weights is not None)


def resnet50(num_classes: Sequence[int], weights: Union[None, str, Path] = None) -> MultiHeadNet:
    """ResNet-50 with one head per task: every convolution shared and packed
    (the original code's layout); the final fc per task. Its BatchNorm layers
    are trained with task 1 and frozen after it (the engine does this).
    `weights` as for `vgg16`."""
    net = _torchvision_net("resnet50", weights)
    trunk = nn.Sequential(OrderedDict(
        [(n, m) for n, m in net.named_children() if n != "fc"] + [("flatten", nn.Flatten())]))
    return _multi_head(trunk, net.fc, num_classes, weights is not None)


def densenet121(num_classes: Sequence[int], weights: Union[None, str, Path] = None) -> MultiHeadNet:
    """DenseNet-121 with one head per task: `features` shared and packed, the
    classifier per task; BatchNorm as for `resnet50`. The trunk ends as
    torchvision's forward does: ReLU, global average pooling, flatten.
    `weights` as for `vgg16`."""
    net = _torchvision_net("densenet121", weights)
    trunk = nn.Sequential(OrderedDict(
        features=net.features, relu=nn.ReLU(inplace=True), avgpool=nn.AdaptiveAvgPool2d(1),
        flatten=nn.Flatten()))
    return _multi_head(trunk, net.classifier, num_classes, weights is not None)


BUILDERS = {"small_vgg": small_vgg, "vgg16": vgg16,
            "vgg16_bn": lambda n, **kw: vgg16(n, batch_norm=True, **kw),
            "resnet50": resnet50, "densenet121": densenet121}


def build_model(name: str, num_classes: Sequence[int], **kwargs) -> MultiHeadNet:
    """Model by name, as the config and the command line name it."""
    if name not in BUILDERS:
        raise ValueError(f"unknown model {name!r}: choose one of {sorted(BUILDERS)}")
    return BUILDERS[name](num_classes, **kwargs)
