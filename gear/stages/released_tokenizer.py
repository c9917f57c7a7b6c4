"""`gear released-tokenizer --name N`: rFID / PSNR / SSIM of a public tokenizer (gear/released.py)
on the val split, as the release measures them: every val image resized bicubic to the family's
resolution, reconstructed, rFID of the reconstructions against those images (metrics.feature_space),
PSNR and SSIM per image, averaged. Writes released/eval/tokenizer/N.json; a name whose path is null
writes a "not downloaded" record and nothing else runs.

Processes: one, or N under torchrun, as `gear evaluate` (its batch plan and gathering: gear/metrics/evaluation.py)."""
from __future__ import annotations

import numpy as np
import torch

from gear import released
from gear.config import ParamsError
from gear.io import write_json
from gear.metrics.evaluation import batch_plan, finish, in_order, my_batches
from gear.metrics.features import FeatureModel, concat, feature_extractor, fid_statistics, frechet_distance
from gear.metrics.recon import psnr, ssim
from gear.runtime import gather_to_main, setup
from gear.train.recon_check import to_uint8


def precheck(params, name: str, **_) -> None:
    if name not in released.TOKENIZERS:
        raise ParamsError(f"--name {name!r}: must be one of {', '.join(released.TOKENIZERS)}")
    released.tokenizer_path(params, name)  # a path that is not a file: one line, naming the key
    family = released.TOKENIZERS[name][0]
    released.tokenizer_config(params, name)
    released.check_feature_size(params, getattr(params.released.archs, family).resolution,
                                f"released.archs.{family}.resolution")


@torch.no_grad()
def run(params, name: str) -> None:
    precheck(params, name)
    family, public = released.TOKENIZERS[name]
    path, out = released.tokenizer_path(params, name), released.tokenizer_json(name)
    record = {"name": name, "public_file": public, "family": family}
    if path is None:
        write_json(out, {**record, "status": released.NOT_DOWNLOADED})
        print(f"released-tokenizer[{name}]: {released.NOT_DOWNLOADED} (released.tokenizers.{name} is null)")
        return
    res = getattr(params.released.archs, family).resolution
    rt = setup(params)
    tok = released.load_tokenizer(params, name, rt.device)
    fm = FeatureModel(feature_extractor(params, rt.device), rt.device, res, logits=False)
    mine = []
    for k, x, _ in my_batches(params, rt, "val", batch_plan(params, "val"), f"released-tokenizer[{name}]"):
        x = released.resize(x, res)
        with rt.autocast():
            _, q = tok.encode(x)
            recon = tok.decode(q.z_q)
        originals, recons = to_uint8(x), to_uint8(recon)
        mine.append((k, {"recon": fm(recons), "original": fm(originals), "psnr": psnr(originals, recons),
                         "ssim": ssim(originals, recons)}))
    parts = gather_to_main(mine, rt)
    if rt.is_main:
        batches, layer = in_order(parts), fm.ext.fid_layer
        rfid = frechet_distance(fid_statistics(concat([b["recon"] for b in batches])[layer]),
                                fid_statistics(concat([b["original"] for b in batches])[layer]))
        per_image = {key: np.concatenate([b[key] for b in batches]) for key in ("psnr", "ssim")}
        write_json(out, {**record, "status": "measured", "path": str(path), "resolution": res,
                         "resize": "bicubic", "split": "val", "num_images": len(per_image["psnr"]),
                         "data_resolution": params.data.resolution, "feature_space": params.metrics.feature_space,
                         "extractor": fm.ext.name, "rfid": rfid, "psnr": float(np.mean(per_image["psnr"])),
                         "ssim": float(np.mean(per_image["ssim"]))})
        print(f"released-tokenizer[{name}]: rFID {rfid:.3f} ({params.metrics.feature_space}), PSNR "
              f"{np.mean(per_image['psnr']):.2f}, SSIM {np.mean(per_image['ssim']):.4f} at {res} px")
    finish(rt)
