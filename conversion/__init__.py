"""Conversion: checkpoint loading, the deployment module, ONNX export, precision graphs, TensorRT engines.

Needs the ``convert`` extra (torch, torchvision, onnx).
"""
