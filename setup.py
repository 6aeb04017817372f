from setuptools import find_packages, setup

setup(
    name="efficientnet_tf",
    version="0.1.0",
    description="EfficientNet V1/V2/Lite for Keras/TensorFlow: weight-compatible with "
    "keras.applications, one training stack for CPU, GPU and TPU.",
    long_description=open("README.md", encoding="utf8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["efficientnet_tf", "efficientnet_tf.*"]),
    package_data={"efficientnet_tf": ["imagenet_classes.txt"]},
    python_requires=">=3.10",
    install_requires=[
        "tensorflow>=2.16",
        "keras>=3.3",
        "tensorflow-datasets>=4.9",
        "keras-cv>=0.9",
        "absl-py>=1.0",
        "tensorboard>=2.16",
        "matplotlib>=3.7",
        "h5py>=3.8",
        "scikit-learn>=1.3",
    ],
    extras_require={
        # TFLite export checks run the files with LiteRT (no wheels for Windows: hence optional).
        "tflite": ["ai-edge-litert>=1.2"],
        "notebooks": ["ipykernel>=6", "pillow>=9"],
        "test": ["pytest>=7", "pytest-xdist>=3", "ai-edge-litert>=1.2", "nbclient>=0.7", "nbformat>=5",
                 "ipykernel>=6", "pillow>=9"],
    },
    py_modules=["main"],
)
