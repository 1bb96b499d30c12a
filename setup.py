"""Install regnp: `pip install -e .` (library) or `pip install -e ".[test]"` (with pytest)."""
from setuptools import find_packages, setup

setup(
    name="regnp",
    version="0.1.0",
    description=("Learning-based image registration with meta-regularization "
                 "(Al Safadi & Song, CVPR 2021), written out by hand in NumPy/SciPy/Numba"),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["regnp", "regnp.*"]),
    python_requires=">=3.10",
    install_requires=[
        "numpy>=1.24",
        "scipy>=1.10",
        "numba>=0.58",
        "matplotlib>=3.6",
        "tqdm>=4.60",
        "pillow>=9",
    ],
    extras_require={
        # run the experiment grid on a Dask cluster: python -m regnp.study ... --scheduler
        "cluster": ["dask>=2023.1", "distributed>=2023.1"],
        "test": ["pytest>=7", "pytest-xdist>=3.2", "dask>=2023.1", "distributed>=2023.1"],
    },
)
