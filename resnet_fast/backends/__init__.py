"""Kernel backends for resnet_fast's ops; resnet_fast/_dispatch.py picks among them."""
