"""The public checkpoints the `released` target measures (params.released), typed once: which
file each name is, its family, where its results go, and how it loads. The stages
(gear/stages/released_*.py), the DAG (gear/dag.py) and the report (gear/report/released.py) read
it; the published figures they are compared with are in gear/report/published.py.

Each entry is a local path (null: not downloaded). A name whose path is null still runs its stage,
which writes a "not downloaded" record in an instant: the DAG is the same whatever was downloaded,
setting a path reruns only that entry's jobs (each stage reads its own entry's key), and the report
lists the entry as not downloaded rather than failed.

Tokenizers are measured as the release states (GEAR.md section 10): the val images (the pipeline's
shards, data.*) resized bicubic to the family's resolution, reconstructed, rFID against those val
images, PSNR and SSIM. GPTs (LlamaGen's c2i, decoded by its VQ-16 `vq_original`) sample
released.per_class images per class with their published settings, resized bicubic to eval_size
as LlamaGen's sampler does, and are scored like our samples (gear/metrics/evaluation.py
`score_samples`: metrics.reference, or our real statistics when it is null).

This module imports no torch at import time: gear/dag.py reads the catalogue.
"""
from __future__ import annotations

from pathlib import Path

from gear.config import ParamsError

NOT_DOWNLOADED = "not downloaded"

# name -> (family, the public file it is). Originals: LlamaGen, Open-MAGVIT2, TencentARC IBQ; the
# rest: the GEAR release's stage-0 (warm-up) and stage-1 (GEAR) tokenizers.
TOKENIZERS = {
    "vq_original": ("vq16", "LlamaGen vq_ds16_c2i.pt"),
    "vq_warmup": ("vq16", "GEAR release vq-with-gan.pt"),
    "vq_gear": ("vq16", "GEAR release gear-vq.pt"),
    "lfq_original": ("lfq16", "Open-MAGVIT2 pretrain256_16384.ckpt"),
    "lfq_warmup": ("lfq16", "GEAR release lfq-with-gan.pt"),
    "lfq_gear": ("lfq16", "GEAR release gear-lfq.pt"),
    "ibq_original": ("ibq16", "TencentARC IBQ_pretrain_16384.ckpt"),
    "ibq_warmup": ("ibq16", "GEAR release ibq-with-gan.pt"),
    "ibq_gear": ("ibq16", "GEAR release gear-ibq.pt"),
}
GPTS = {"B": "LlamaGen c2i_B_256.pt", "L": "LlamaGen c2i_L_256.pt", "XL": "LlamaGen c2i_XL_384.pt"}
GPT_TOKENIZER = "vq_original"  # LlamaGen's c2i GPTs were trained on vq_ds16_c2i's tokens

ROOT = Path("released")
REPORT_NAMES = ("released.json", "released.md", "released.html")  # in reports/; the first carries the record


def tokenizer_json(name: str) -> Path:
    return ROOT / "eval" / "tokenizer" / f"{name}.json"


def samples_dir(name: str) -> Path:
    return ROOT / "samples" / name


def gpt_json(name: str) -> Path:
    return ROOT / "eval" / "gpt" / f"{name}.json"


# ----------------------------------------------------------------------------------------------
# entries, checked at the edge


def _path(key: str, value: str | None) -> Path | None:
    if value is None:
        return None
    if not Path(value).is_file():
        raise ParamsError(f"{key} = {value!r}: file not found (null = not downloaded)")
    return Path(value)


def tokenizer_path(params, name: str) -> Path | None:
    """The downloaded file of tokenizer `name`, None when not downloaded; a path that is not a file
    is a one-line ParamsError naming the key."""
    return _path(f"released.tokenizers.{name}", getattr(params.released.tokenizers, name))


def gpt_path(params, name: str) -> Path | None:
    return _path(f"released.gpts.{name}.path", getattr(params.released.gpts, name).path)


def tokenizer_config(params, name: str):
    """The TokenizerConfig of tokenizer `name`: its family's public config at released.archs' shape."""
    from gear.models.tokenizer import TokenizerConfig

    family = TOKENIZERS[name][0]
    a = getattr(params.released.archs, family)
    build = {"vq16": TokenizerConfig.llamagen_vq16, "lfq16": TokenizerConfig.release_lfq16,
             "ibq16": TokenizerConfig.release_ibq16}[family]
    try:
        cfg = build(ch=a.ch, ch_mult=list(a.ch_mult), enc_res_blocks=a.enc_res_blocks,
                    dec_res_blocks=a.dec_res_blocks, z_channels=a.z_channels, norm_groups=a.norm_groups,
                    codebook_size=a.codebook_size, code_dim=a.code_dim)
    except ValueError as e:  # e.g. lfq16's code_dim != log2 codebook_size
        raise ParamsError(f"released.archs.{family}: {e}") from None
    if a.resolution % cfg.downsample:
        raise ParamsError(f"released.archs.{family}.resolution = {a.resolution}: must be a multiple of the "
                          f"downsampling {cfg.downsample}")
    return cfg


def check_feature_size(params, size: int, key: str) -> None:
    """The demo feature space is the demo teacher, trained at data.resolution: it reads only images
    of that size (Inception and DINOv2 resize their input)."""
    if params.metrics.feature_space == "demo" and size != params.data.resolution:
        raise ParamsError(f"{key} = {size}: the demo feature space reads {params.data.resolution} px images "
                          f"(data.resolution); measure at that size or set metrics.feature_space: inception")


def load_tokenizer(params, name: str, device):
    """Tokenizer `name` from its downloaded file, strictly (gear/models/llamagen.py: every public
    wrapping; a shape mismatch names the tensor), in eval mode on `device`. A file of another family
    is refused in one line naming the entries it belongs under."""
    from gear.io import ArtifactError
    from gear.models.llamagen import convert_state_dict, read_state_dict, strip_prefixes
    from gear.models.tokenizer import ARCHS, Tokenizer, arch_of_state_dict

    path, family = tokenizer_path(params, name), TOKENIZERS[name][0]
    model = Tokenizer(tokenizer_config(params, name))
    try:
        sd = read_state_dict(path)
        have = arch_of_state_dict(strip_prefixes(k) for k in sd)
        if have is not None and have != family:  # the file of another entry: say which entries take it
            takes = ", ".join(n for n, (f, _) in TOKENIZERS.items() if f == have)
            raise ArtifactError(f"{path} is a {have} tokenizer ({ARCHS[have].title} layout), not {family}: it "
                                f"belongs under {takes}")
        model.load_state_dict(convert_state_dict(sd, model), strict=True)
    except ArtifactError as e:
        raise ArtifactError(f"released.tokenizers.{name}: {e}") from None
    return model.eval().to(device)


def gpt_config(params, name: str, codebook_size: int, downsample: int):
    from gear.models.ar import GPTConfig

    g = getattr(params.released.gpts, name)
    if g.image_size % downsample:
        raise ParamsError(f"released.gpts.{name}.image_size = {g.image_size}: must be a multiple of the "
                          f"tokenizer's downsampling {downsample}")
    try:
        return GPTConfig(vocab_size=codebook_size, grid=g.image_size // downsample, n_layer=g.layers, dim=g.dim,
                         n_head=g.heads, num_classes=params.released.num_classes, class_dropout=0.0,
                         token_dropout=0.0)
    except ValueError as e:
        raise ParamsError(f"released.gpts.{name}: {e}") from None


def load_gpt(params, name: str, tok, device):
    """GPT `name` from its downloaded file (LlamaGen layout, gear/models/llamagen_gpt.py), sized to
    decode into `tok`, in eval mode on `device`."""
    from gear.io import ArtifactError
    from gear.models.ar import GPT
    from gear.models.llamagen_gpt import load_gpt as load

    path = gpt_path(params, name)
    model = GPT(gpt_config(params, name, tok.codebook_size, tok.config.downsample))
    try:
        load(model, path)
    except ArtifactError as e:
        raise ArtifactError(f"released.gpts.{name}.path ({path}): {e}") from None
    return model.eval().to(device)


def resize(x, size: int):
    """[-1, 1] images (B, 3, H, W) to size x size, bicubic with antialiasing (PIL's bicubic, what
    the release and LlamaGen resize with); unchanged when already that size."""
    import torch.nn.functional as F

    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x.float(), size=(size, size), mode="bicubic", antialias=True,
                         align_corners=False).clamp(-1, 1)
