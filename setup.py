"""Packaging beyond what pyproject.toml can say: the wheel carries the repository's ``conf/``.

``conf/`` at the top of the repository stays the one source of the configs; the wheel installs
it as the package data folder ``meaning_transform/conf`` (found by ``config.CONF_DIR`` when the
package is not run from a source checkout). Everything else is in pyproject.toml.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages("src"), "meaning_transform.conf"],
    package_dir={"": "src", "meaning_transform.conf": "conf"},
    package_data={"meaning_transform.conf": ["*.yaml", "**/*.yaml"]},
)
