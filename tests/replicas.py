"""Replica builders for the tests: re-exported from packnet_edu.replicas (the
notebook's fast mode uses the same ones)."""
from packnet_edu.replicas import (BOX_COLOUR, make_cars_replica, make_cubs_replica,  # noqa: F401
                                  make_flowers_replica, make_imagenet_replica, make_replicas, tiny_vgg16)
