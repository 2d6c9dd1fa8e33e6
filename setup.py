"""mtkd: knowledge distillation for single-image super-resolution, built on BasicSR.

Install with `make install` (pinned versions in requirements.txt, then basicsr 1.4.2 without its
dependencies, then this package in editable mode). The bounds below are loose on purpose.
"""
from setuptools import find_packages, setup

setup(
    name='mtkd',
    version='0.1.0',
    description='Multi-teacher and dual-teacher knowledge distillation for image super-resolution (BasicSR)',
    packages=find_packages(include=['mtkd', 'mtkd.*']),
    python_requires='>=3.10',
    install_requires=[
        'torch>=2.1',
        'numpy>=1.24',
        'opencv-python-headless>=4.8',
        'pywavelets>=1.4',
        'pyyaml>=6.0',
        'scikit-image>=0.21',
        'scipy>=1.10',
        'tqdm>=4.60',
        'pydantic>=2.5',
        'safetensors>=0.4',
    ],
)
