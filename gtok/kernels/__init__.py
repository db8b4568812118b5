"""Taichi kernels for gtok, with a plain PyTorch reference of each.

Importing this package compiles nothing and does not start Taichi; the first kernel call
does (see `gtok.kernels.runtime`).
"""

from gtok.kernels.deform_attn import deform_attn
from gtok.kernels.rasterize import rasterize
from gtok.kernels.reference import NORMALIZE_EPS
from gtok.kernels.runtime import ArchError, start
from gtok.kernels.selfcheck import KernelCheckError, selfcheck

__all__ = [
    "NORMALIZE_EPS",
    "ArchError",
    "KernelCheckError",
    "deform_attn",
    "rasterize",
    "selfcheck",
    "start",
]
