"""Build glue: ships the browser client (web/) inside the package as node/web."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithClient(build_py):
    """Copy the committed client into the built package so `lanchat serve` finds it anywhere."""

    def run(self) -> None:
        super().run()
        src = Path(__file__).resolve().parent / "web"
        if src.is_dir():
            shutil.copytree(src, Path(self.build_lib) / "node" / "web", dirs_exist_ok=True)


setup(cmdclass={"build_py": BuildWithClient})
