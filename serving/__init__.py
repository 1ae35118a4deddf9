"""Serving: TF-Serving-compatible model server, shared model/signature/tensor names, client."""

# TFRS needs Keras 2: select tf-keras before TensorFlow is imported anywhere.
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
