"""Shared fixtures: one small demo collection per test session (seconds to generate)."""

from __future__ import annotations

import warnings

import pytest

from medssl_monai.data.demo import make_demo_data

warnings.filterwarnings("ignore", message=".*nvImageCodec.*")


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    """A tiny demo collection: 3 patients of 8 slices at 64 x 64, 40 COVID-like images, 220 organ patches."""
    return make_demo_data(
        tmp_path_factory.mktemp("demo"), seed=7, patients=3, size=64, slices=8, covid_images=40, organ_patches=220,
        workers=2,
    )
