from pathlib import Path

from setuptools import find_packages, setup

version = (Path(__file__).parent / "sb3_trpo" / "version.txt").read_text(encoding="utf-8").strip()
long_description = (Path(__file__).parent / "README.md").read_text(encoding="utf-8")

extras = {
    "tests": [
        "pytest>=8",
        "pytest-xdist>=3",
        "pytest-timeout>=2",
        "hypothesis>=6",
        "ruff>=0.6",
        "mypy>=1.10",
        "types-PyYAML",
    ],
    "docs": [
        "sphinx>=7",
        "sphinx-rtd-theme>=2",
        "sphinx-autodoc-typehints>=2",
        "sphinx-copybutton",
        "myst-parser>=2",
        "sphinx-mathjax-offline",
    ],
    # rl_zoo3's CLI imports its plots, hence [plots], and requests, which it does not declare;
    # optuna>=4 for its journal-file storage (--storage x.log).
    "zoo": ["rl_zoo3[plots]>=2.9.2,<3", "optuna>=4", "requests"],
    "extra": ["matplotlib>=3.7", "tensorboard>=2.9", "tqdm", "rich", "gymnasium[mujoco]>=1.0"],
}

setup(
    name="sb3_trpo",
    version=version,
    description="Trust Region Policy Optimization for Stable-Baselines3: drop-in for sb3_contrib.TRPO, and more.",
    long_description=long_description,
    long_description_content_type="text/markdown",
    packages=find_packages(include=["sb3_trpo", "sb3_trpo.*"]),
    package_data={"sb3_trpo": ["py.typed", "version.txt", "zoo/hyperparams/*.yml"]},
    python_requires=">=3.10",
    install_requires=[
        "stable_baselines3>=2.3,<3",
        "sb3_contrib>=2.3,<3",
        "gymnasium>=0.29.1,<2",
        "torch>=2.3",
        "numpy>=1.20",
        "pyyaml",  # the shipped zoo files, which make demo reads
    ],
    extras_require=extras,
    entry_points={"console_scripts": ["sb3-trpo-zoo=sb3_trpo.zoo.__main__:main"]},
    license="MIT",
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
