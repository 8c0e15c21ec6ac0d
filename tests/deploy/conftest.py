"""Session fixtures for the deploy tests (helpers live in rendering.py)."""

import pytest

from rendering import K8S, OVERLAYS, kustomize, load_yaml


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict]]:
    """Every overlay rendered once per session."""
    return {name: kustomize(K8S / "overlays" / name) for name in OVERLAYS}


@pytest.fixture(scope="session")
def budget() -> dict:
    return load_yaml(K8S / "cold-start-budget.yaml")
