"""AR size registry (DiT-style): size name -> (layers, dim, heads). Head dim is 64 for the
reference sizes; `custom` reads its shape from params.ar."""
from __future__ import annotations

AR_SIZES = {
    "nano": (2, 128, 2),   # the guide-capacity ladder's rungs below and between tiny and small
    "micro": (3, 160, 2),  # (issue 31, gear/scaling.py): depth and width grow together,
    "tiny": (4, 192, 3),
    "mini": (5, 256, 4),   # block parameters about doubling per rung

    "small": (6, 384, 6),
    "B": (12, 768, 12),    # ~111M at K=16384, 256 tokens
    "L": (24, 1024, 16),   # ~343M
    "XL": (36, 1280, 20),  # ~775M
    "1B": (22, 2048, 32),  # ~1.2B: LlamaGen's text-conditional GPT-1B (the seed's T2I "1.0B" AR)
}


def ar_shape(size: str, params=None) -> tuple[int, int, int]:
    """(n_layer, dim, n_head) for a size name; `custom` needs params."""
    if size == "custom":
        if params is None:
            raise ValueError("AR size 'custom' needs params (ar.custom_layers/dim/heads)")
        return params.ar.custom_layers, params.ar.custom_dim, params.ar.custom_heads
    if size not in AR_SIZES:
        raise ValueError(f"unknown AR size {size!r}; known: {', '.join([*AR_SIZES, 'custom'])}")
    return AR_SIZES[size]


def ar_depth(size: str, params=None) -> int:
    return ar_shape(size, params)[0]
