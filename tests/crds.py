"""Test support: the upstream CRD schemas that strict manifest validation reads."""

import pytest

from modelchain.core import manifest_validation


def crd_dir():
    """The CRD folder ($MODELCHAIN_CRD_DIR, else ../shared/crds); the test is skipped without one."""
    found = manifest_validation.default_crd_dir()
    if found is None:
        pytest.skip("no upstream CRDs: set MODELCHAIN_CRD_DIR or provide ../shared/crds beside the repository")
    return found
