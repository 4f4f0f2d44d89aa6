# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="monai-mtlmad",
    version="0.1.0.dev0",
    description="MTL-MAD for MONAI: medical anomaly detection by a Mixture-of-Experts multi-task learner",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["monai_mtlmad", "monai_mtlmad.*"]),
    python_requires=">=3.10",
    install_requires=[
        "monai>=1.6",
        "torch>=2.8",
        "numpy",
        "scikit-image",
        "scipy",
        "pillow",
        "matplotlib",  # overlay pictures
        "pytorch-ignite",
        "tensorboard",
        "nibabel",
        "itk-core",
        "itk-io",
        "fire",  # `python -m monai.bundle ...`
        "jsonschema",  # `monai.bundle verify_metadata`
    ],
    extras_require={
        "test": ["pytest", "pytest-timeout", "scikit-learn", "hypothesis"],
        # pydicom-seg (a MONAI Label dependency) does not import with pydicom 3; these pins keep one consistent set
        "monailabel": ["monailabel>=0.8.5", "pydicom<3", "dicomweb-client<0.60", "pynetdicom<3", "requests-toolbelt"],
        # what executes them (make test-notebooks); add jupyterlab to open them interactively
        "notebooks": ["nbclient", "nbformat", "ipykernel", "matplotlib"],
    },
    classifiers=[
        "License :: OSI Approved :: Apache Software License",
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Medical Science Apps.",
    ],
)
