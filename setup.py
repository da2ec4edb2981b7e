"""Package list: everything under odecli/ plus the top-level conf/ shipped as odecli.conf."""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["odecli", "odecli.*"]), "odecli.conf"])
