from setuptools import find_packages, setup

setup(
    name="nucleaizer-backend",
    version="0.1.0",
    description="nucleAIzer nucleus segmentation (Mask R-CNN at a uniform nucleus size, "
    "U-Net refinement, style adaptation) for CellProfiler and the command line",
    packages=find_packages(include=["nucleaizer_backend", "nucleaizer_backend.*"]),
    package_data={"nucleaizer_backend": ["weights/*/*", "weights/*.npz",
                                         "weights/replay/*/*"]},
    python_requires=">=3.8",
    install_requires=[
        "numpy>=1.20",
        "scipy>=1.6",
        "scikit-image>=0.18",
        "tifffile",
        "imageio>=2.16",
        "safetensors>=0.3",
        "torch>=1.13",
        "torchvision>=0.14",
        "matplotlib",
        "tqdm",
    ],
    entry_points={"console_scripts": ["nucleaizer=nucleaizer_backend.cli:main"]},
)
