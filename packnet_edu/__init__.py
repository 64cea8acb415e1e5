"""packnet_edu: PackNet (Mallya & Lazebnik, CVPR 2018) for learning, teaching and inspecting."""
from .engine import PackNet, PackNetError, prune_count
from .models import MultiHeadNet, small_vgg, vgg16
from .train import Config, prune_schedule, run_packnet

__version__ = "0.1.0"
__all__ = ["PackNet", "PackNetError", "prune_count", "MultiHeadNet", "small_vgg", "vgg16",
           "Config", "prune_schedule", "run_packnet"]
