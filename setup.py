from setuptools import find_packages, setup

setup(
    name="efficientnet_tf",
    version="0.1.0",
    description="EfficientNet V1/V2/Lite for Keras/TensorFlow: weight-compatible with "
    "keras.applications, one training stack for CPU, GPU and TPU.",
    long_description=open("README.md", encoding="utf8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["efficientnet_tf", "efficientnet_tf.*"]),
    package_data={"efficientnet_tf.data": ["imagenet_classes.txt", "imagenet21k_classes.txt.gz"]},
    python_requires=">=3.10",
    # Ranges: what the code supports. constraints.txt: the exact versions the suite last passed
    # with, which CI and the README's install command use (refresh: .ci/refresh-constraints).
    install_requires=[
        "tensorflow>=2.16,<3",
        "keras>=3.3,<4",
        "numpy>=1.26,<3",
        "tensorflow-datasets>=4.9,<5",
        "keras-cv>=0.9,<1",
        "absl-py>=1.0,<3",
        "tensorboard>=2.16,<3",
        "matplotlib>=3.7,<4",
        "h5py>=3.8,<4",
        "scikit-learn>=1.3,<2",
    ],
    extras_require={
        # TFLite export checks run the files with LiteRT (no wheels for Windows: hence optional);
        # int8_selective's head search quantizes with ai-edge-quantizer.
        "tflite": ["ai-edge-litert>=1.2,<3", "ai-edge-quantizer>=0.10,<1"],
        # ONNX export (--onnx): tf2onnx converts, onnxruntime checks the file against Keras.
        "onnx": ["tf2onnx>=1.16,<2", "onnx>=1.16,<2", "onnxruntime>=1.18,<2"],
        "notebooks": ["ipykernel>=6,<8", "pillow>=9,<14"],
        "test": ["pytest>=7,<10", "pytest-xdist>=3.2,<4", "ai-edge-litert>=1.2,<3", "ai-edge-quantizer>=0.10,<1",
                 "nbclient>=0.7,<1", "nbformat>=5,<6", "ipykernel>=6,<8", "pillow>=9,<14",
                 "tf2onnx>=1.16,<2", "onnx>=1.16,<2", "onnxruntime>=1.18,<2",
                 # benchmarks/small_data.py and its test: the photos scikit-image ships.
                 "scikit-image>=0.22,<1"],
    },
    py_modules=["main"],
)
