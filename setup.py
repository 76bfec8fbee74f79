"""Packaging beyond pyproject.toml: the configs ship inside the wheel.

configs/ stays at the repository root (where the README's commands name it) and is installed
as the data package ``sslr.configs``, so an installed ``sslr`` finds ``--config quickstart`` and
``sslr demo`` runs (sslr/packaged.py). pyproject.toml's [tool.setuptools] cannot map a package
to a folder outside the package tree while also finding packages, hence this file.
"""

from setuptools import find_namespace_packages, find_packages, setup

CONFIGS = ["sslr.configs", *(f"sslr.configs.{p}" for p in find_namespace_packages("configs"))]

setup(
    packages=[*find_packages(include=["sslr", "sslr.*"]), *CONFIGS],
    package_dir={"sslr.configs": "configs"},
    package_data={package: ["*.yaml"] for package in CONFIGS},
)
