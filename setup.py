"""Maps each top-level folder of the repository to ``modelchain.<folder>``.

``modelchain`` itself stays a namespace package, so nothing generic (``pipelines``,
``eval``, ...) is installed at the top of site-packages. ``tests/`` is not installed: pytest
finds it from the repository root (``pythonpath`` in pyproject.toml). The metadata is in
pyproject.toml.
"""

from setuptools import find_packages, setup

FOLDERS = ["core", "configs", "pipelines", "components", "data", "training", "eval", "serving", "bench"]

package_dir = {f"modelchain.{folder}": folder for folder in FOLDERS}
packages = []
for folder in FOLDERS:
    packages.append(f"modelchain.{folder}")
    packages += [f"modelchain.{folder}.{sub}" for sub in find_packages(folder)]

setup(
    packages=packages,
    package_dir=package_dir,
    package_data={
        "modelchain.configs": ["*.yaml", "*/*.yaml"],
        "modelchain.data": ["demo/*"],
    },
)
