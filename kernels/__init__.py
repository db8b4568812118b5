"""Taichi kernels for gtok, with a plain PyTorch reference of each.

Importing this package compiles nothing and does not start Taichi; the first kernel call
does (see `kernels.runtime`).
"""

from kernels.deform_attn import deform_attn
from kernels.rasterize import rasterize
from kernels.reference import NORMALIZE_EPS
from kernels.runtime import ArchError, start
from kernels.selfcheck import KernelCheckError, selfcheck

__all__ = [
    "NORMALIZE_EPS",
    "ArchError",
    "KernelCheckError",
    "deform_attn",
    "rasterize",
    "selfcheck",
    "start",
]
