"""Pretrained-weight readers (Keras HDF5, torch state dicts) and strict assembly.

Users call ``scenecls.pretrained``; these modules are its building blocks.
"""
