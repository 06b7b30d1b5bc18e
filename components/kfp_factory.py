"""Turns the plain functions of each `component.py` into KFP components for one cluster.

The image is a compile-time value, `core.config.component_image` (cluster.image, pinned by
cluster.image_digest when set); modelchain and kfp are already in it (and in this
environment for kfp.local), so nothing is pip-installed at run time.
"""

from __future__ import annotations

from typing import Callable


def make_component(func: Callable, image: str):
    from kfp import dsl

    return dsl.component(func, base_image=image, install_kfp_package=False)
