"""Networks with one shared trunk (packed by PackNet) and one head per task.

- `small_vgg`: a VGG-style CNN for 28x28 grayscale images that trains on a
  laptop CPU; its first layer has 5x5 kernels (the notebooks follow one).
- `vgg16`: torchvision's VGG-16 laid out as in the paper: features, fc6 and
  fc7 shared and packed; a separate classifier (fc8) per task.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Optional, Sequence, Union

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


def vgg16(num_classes: Sequence[int], weights: Union[None, str, Path] = None,
          batch_norm: bool = False) -> MultiHeadNet:
    """VGG-16 (or VGG-16-BN) with one head per task.

    weights: None (random init), "imagenet" (torchvision's ImageNet weights,
    downloaded once into the torch hub cache), or the path of a saved
    torchvision VGG state dict (for machines without internet). With
    ImageNet weights and `num_classes[0] == 1000`, task 1's head is the
    pretrained fc8, so task 1 *is* ImageNet, as in the paper.
    """
    from torchvision import models

    builder = models.vgg16_bn if batch_norm else models.vgg16
    enum = models.VGG16_BN_Weights if batch_norm else models.VGG16_Weights
    net = builder(weights=enum.IMAGENET1K_V1 if weights == "imagenet" else None)
    if weights not in (None, "imagenet"):
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"VGG-16 weights file {path} not found: pass a state dict saved "
                                    "with torch.save(torchvision.models.vgg16(...).state_dict(), path)")
        state = torch.load(path, map_location="cpu", weights_only=True)
        try:
            net.load_state_dict(state)
        except RuntimeError as err:
            raise ValueError(f"{path} is not a torchvision VGG-16{'-BN' if batch_norm else ''} "
                             f"state dict ({str(err).splitlines()[0]})") from None
    fc8 = net.classifier[6]
    trunk = nn.Sequential(OrderedDict(
        features=net.features, avgpool=net.avgpool, flatten=nn.Flatten(),
        fc=net.classifier[:6]))    # fc6, ReLU, Dropout, fc7, ReLU, Dropout
    model = MultiHeadNet(trunk, fc8.in_features, num_classes)
    if weights is not None and num_classes and num_classes[0] == fc8.out_features:
        model.heads[0] = fc8
    return model


def build_model(name: str, num_classes: Sequence[int], **kwargs) -> MultiHeadNet:
    """Model by name, as the config and the command line name it."""
    builders = {"small_vgg": small_vgg, "vgg16": vgg16,
                "vgg16_bn": lambda n, **kw: vgg16(n, batch_norm=True, **kw)}
    if name not in builders:
        raise ValueError(f"unknown model {name!r}: choose one of {sorted(builders)}")
    return builders[name](num_classes, **kwargs)
