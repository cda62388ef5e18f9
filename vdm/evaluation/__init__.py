"""Measuring a model: split evaluation and the bits/dim report (split), Inception FID/KID (fid), the Inception
weights' cache (fid_weights) and its torch-free TorchScript reader (torchscript), Frechet distance and KID of
feature sets (feature_metrics).
"""
