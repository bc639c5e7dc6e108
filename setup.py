"""The package is described in pyproject.toml (PEP 621); this file lets tools that still
call ``setup.py`` (and ``pip install -e .`` with an old pip) build it the same way."""
from setuptools import setup

setup()
