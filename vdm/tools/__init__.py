"""Command-line tools beside `python -m vdm.main`, with its absl flag style: data preparation (prepare_data) and
Inception FID/KID between two image sources, or the Inception weights' preparation (fid).
"""
