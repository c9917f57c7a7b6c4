"""`gear released-evaluate --name B|L|XL`: gFID / IS / precision / recall of a public GPT's samples
(released/samples/N/), scored as our own samples are (gear/metrics/evaluation.py `score_samples`):
against metrics.reference (ADM's reference batch, at released.eval_size), or our real statistics
(eval/real) when it is null. Writes released/eval/gpt/N.json; samples that were not drawn (not
downloaded) give a "not downloaded" record."""
from __future__ import annotations

from gear import released
from gear.config import ParamsError
from gear.io import read_json, write_json
from gear.metrics import reference
from gear.metrics.evaluation import feature_model, finish, samples_to_score, score_samples
from gear.runtime import setup


def precheck(params, name: str, **_) -> None:
    if name not in released.GPTS:
        raise ParamsError(f"--name {name!r}: must be one of {', '.join(released.GPTS)}")
    reference.check(params, params.released.eval_size)
    released.check_feature_size(params, params.released.eval_size, "released.eval_size")


def run(params, name: str) -> None:
    precheck(params, name)
    folder, out = released.samples_dir(name), released.gpt_json(name)
    drawn = read_json(folder / "config.json", "released samples config")
    record = {"name": name, "public_file": released.GPTS[name], "settings": drawn.get("settings")}
    if drawn.get("status") == released.NOT_DOWNLOADED:
        write_json(out, {**record, "status": released.NOT_DOWNLOADED, "missing": drawn.get("missing")})
        print(f"released-evaluate[{name}]: {released.NOT_DOWNLOADED}")
        return
    ref, summary, images = samples_to_score(params, folder, " (raise released.per_class)",
                                            params.released.eval_size)
    rt = setup(params)
    fm, real = feature_model(params, rt, images, ref, summary)
    gen = score_samples(params, fm, images, ref, summary, real, rt)
    if rt.is_main:
        write_json(out, {**record, "status": "measured", "samples": str(folder / "samples.npz"),
                         "num_samples": len(images), "eval_size": images.shape[1], "extractor": fm.ext.name,
                         **gen})
        print(f"released-evaluate[{name}]: gFID {gen['fid']:.3f} ({gen['feature_space']}, against "
              f"{ref.path if ref else 'eval/real'}), precision {gen['precision']:.3f}, recall {gen['recall']:.3f}")
    finish(rt)
