"""The text-to-image room's data: the embedded scenes and `gear t2i-shard` (embedded, folder, jsonl)."""
import hashlib
import json

import numpy as np
import pytest
from PIL import Image

import tiny
from gear.config import load_params
from gear.data.loader import decode_image, eval_batches
from gear.t2i import paths, scenes
from gear.t2i.shard import in_val, params_digest

WORDS = {k: set(v) for k, v in scenes.ATTRIBUTES.items()}


def shard(*extra: str) -> int:
    return tiny.gear_cli(["t2i-shard"], *extra)


def digests() -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(paths.SHARD_DIR.iterdir())}


def read_split(split: str, decode) -> list:
    params = load_params(tiny.PARAMS, tiny.TINY)
    out = []
    for batch in eval_batches(params, split, 8, pattern=str(paths.SHARD_DIR / "{split}-*.tar"), decode=decode):
        out += list(zip(*batch))
    return out


def text_members(sample, rng):
    return sample["txt"].decode(), sample["json"].decode()


def caption_only(sample, rng):
    return (sample["txt"].decode(),)


def names_its_attributes(caption: str, attrs: dict) -> bool:
    """It holds the three attribute words and no other word of the vocabulary."""
    return all(attrs[k] in caption for k in WORDS) and not any(
        v in caption for k, vs in WORDS.items() for v in vs if v != attrs[k])


# ---------------------------------------------------------------------------------------------
# scenes


def test_scenes_are_deterministic_varied_and_captioned():
    a = [scenes.scene("train", i, 16) for i in range(12)]
    b = [scenes.scene("train", i, 16) for i in range(12)]
    assert all(np.array_equal(np.asarray(x[0]), np.asarray(y[0])) and x[1:] == y[1:] for x, y in zip(a, b))
    assert len({np.asarray(img).tobytes() for img, _, _ in a}) == 12
    assert not np.array_equal(np.asarray(scenes.scene("val", 0, 16)[0]), np.asarray(a[0][0]))
    assert len({cap.split(" ")[0] for _, cap, _ in (scenes.scene("train", i, 16) for i in range(60))}) > 2  # templates vary
    for img, cap, attrs in a:
        assert img.mode == "RGB" and img.size == (16, 16)
        assert set(attrs) == set(scenes.ATTRIBUTES) and all(attrs[k] in WORDS[k] for k in attrs)
        assert cap == cap.lower() and names_its_attributes(cap, attrs)


def test_default_train_set_covers_every_combination():
    n = load_params(tiny.PARAMS).t2i.data.embedded_train
    combos = {tuple(scenes._layout("train", i)["attributes"].values()) for i in range(n)}
    assert len(combos) == 4 * 6 * 4


def test_shape_lies_in_its_quadrant_in_its_colour():
    for i in range(50):
        img, _, attrs = scenes.scene("train", i, 32)
        x = np.asarray(img).astype(int)
        mask = x.max(-1) - x.min(-1) > 100  # saturated pixels: the shape (the background is grey)
        assert mask.sum() > 0.03 * 32 * 32, (i, attrs)
        ys, xs = np.nonzero(mask)
        col, row = scenes.QUADRANT[attrs["position"]]
        assert (xs.mean() >= 16) == bool(col) and (ys.mean() >= 16) == bool(row), (i, attrs, xs.mean(), ys.mean())
        on = x[mask].mean(0) > 127
        assert tuple(on) == tuple(c > 127 for c in scenes.RGB[attrs["colour"]]), (i, attrs)


def test_prompts_every_combination_once_in_a_fixed_shuffled_order():
    p = scenes.prompts()
    assert p == scenes.prompts() and len(p) == 96
    assert len({tuple(sorted(q["attributes"].items())) for q in p}) == 96
    for q in p:
        a = q["attributes"]
        assert q["caption"] == f"a {a['colour']} {a['shape']} in the {a['position']}"
    assert len({q["attributes"]["shape"] for q in p[:8]}) > 1 and len({q["attributes"]["colour"] for q in p[:8]}) > 1


# ---------------------------------------------------------------------------------------------
# t2i-shard, embedded


def test_embedded_shards_byte_identical_counted_and_readable(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert shard() == 0
    first = digests()
    assert shard() == 0
    assert digests() == first and {"manifest.json", "prompts.jsonl", "train-000002.tar", "val-000000.tar"} <= set(first)
    assert not any(p.name.startswith(".") for p in paths.SHARD_DIR.parent.iterdir())  # no temp folders left

    params = load_params(tiny.PARAMS, tiny.TINY)
    man = json.loads(paths.manifest().read_text())
    assert man["format"] == "gear-t2i-pairs" and man["source"] == "embedded" and man["resolution"] == 16
    assert man["splits"]["train"]["count"] == params.t2i.data.embedded_train == 96
    assert man["splits"]["val"]["count"] == params.t2i.data.embedded_val == 32
    assert [s["count"] for s in man["splits"]["train"]["shards"]] == [40, 40, 16]
    assert man["attributes"] == {k: list(v) for k, v in scenes.ATTRIBUTES.items()} and man["skipped"] == []
    assert man["params_digest"] == params_digest(params)
    lines = paths.prompts_file().read_text().splitlines()
    assert [json.loads(x) for x in lines] == scenes.prompts()

    train = read_split("train", text_members)
    assert len(train) == 96
    for i, (cap, attrs) in enumerate(train):
        attrs = json.loads(attrs)
        assert (cap, attrs) == scenes.scene("train", i, 16)[1:]
        assert names_its_attributes(cap, attrs)
    imgs = read_split("val", lambda s, rng: (np.array(decode_image(s)),))
    assert len(imgs) == 32 and np.array_equal(imgs[3][0], np.asarray(scenes.scene("val", 3, 16)[0]))


# ---------------------------------------------------------------------------------------------
# t2i-shard, folder and jsonl


def make_images(root, n: int, start: int = 0) -> dict[str, str]:
    """n captioned images (varied modes and formats) at two depths; relpath -> caption."""
    out = {}
    for i in range(start, start + n):
        rel = f"{'a' if i % 2 else 'b/c'}/img{i:02d}.{'jpg' if i % 3 == 0 else 'png'}"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        mode = "RGBA" if rel.endswith(".png") and i % 4 == 1 else "RGB"
        Image.new(mode, (20 + i, 24), (10 * i % 255, 80, 200) + ((128,) if mode == "RGBA" else ())).save(path)
        path.with_suffix(".txt").write_text(f"  photo   number {i}\n of a\tthing ")
        out[rel] = f"photo number {i} of a thing"
    return out


def test_folder_source_skips_and_lists_bad_pairs_and_keeps_splits_stable(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "pairs"
    good = make_images(root, 12)
    Image.new("RGB", (20, 20)).save(root / "a" / "nocaption.png")
    Image.new("RGB", (20, 20)).save(root / "a" / "empty.png")
    (root / "a" / "empty.txt").write_text(" \n ")
    (root / "b" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "b" / "corrupt.txt").write_text("a broken file")
    (root / "notes.txt").write_text("not a caption of anything")
    args = ("t2i.data.source=folder", f"t2i.data.root={root}", "t2i.data.val_fraction=0.4")
    assert shard(*args) == 0
    assert "3 files skipped" in capsys.readouterr().out

    man = json.loads(paths.manifest().read_text())
    reasons = {e["path"].rsplit("/", 1)[-1]: e["reason"] for e in man["skipped"]}
    assert set(reasons) == {"nocaption.png", "empty.png", "corrupt.png"}
    assert "no caption" in reasons["nocaption.png"] and "empty caption" in reasons["empty.png"]
    assert "UnidentifiedImageError" in reasons["corrupt.png"] and man["attributes"] is None
    val = {rel for rel in good if in_val(rel, 0.4)}
    assert man["splits"]["val"]["count"] == len(val) and man["splits"]["train"]["count"] == 12 - len(val)
    assert 0 < len(val) < 12
    caps = {s: [c for (c,) in read_split(s, caption_only)] for s in ("train", "val")}
    assert sorted(caps["val"]) == sorted(good[r] for r in val) and len(caps["train"]) == 12 - len(val)
    prompts = [json.loads(x) for x in paths.prompts_file().read_text().splitlines()]
    assert prompts == [{"attributes": None, "caption": c} for c in caps["val"]]

    make_images(root, 6, start=12)  # more images never move the old ones between splits
    assert shard(*args) == 0
    caps2 = {s: {c for (c,) in read_split(s, caption_only)} for s in ("train", "val")}
    assert set(caps["train"]) < caps2["train"] and set(caps["val"]) <= caps2["val"]


def write_jsonl(path, rows) -> None:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def test_jsonl_source_relative_absolute_and_missing_images(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    good = make_images(tmp_path / "imgs", 8)
    rows = [{"image": f"imgs/{rel}", "caption": cap} for rel, cap in good.items()]
    rows[0]["image"] = str(tmp_path / rows[0]["image"])  # absolute is allowed
    rows.append({"image": "imgs/gone.png", "caption": "never there"})
    write_jsonl(tmp_path / "pairs.jsonl", [rows[0], "", *rows[1:]])
    assert shard("t2i.data.source=jsonl", f"t2i.data.manifest={tmp_path / 'pairs.jsonl'}",
                 "t2i.data.val_fraction=0.5") == 0
    man = json.loads(paths.manifest().read_text())
    assert [e["path"].rsplit("/", 1)[-1] for e in man["skipped"]] == ["gone.png"]
    assert "FileNotFoundError" in man["skipped"][0]["reason"]
    assert man["splits"]["train"]["count"] + man["splits"]["val"]["count"] == 8
    n_val = sum(in_val(f"imgs/{rel}", 0.5) for rel in good)
    assert man["splits"]["val"]["count"] == n_val


@pytest.mark.parametrize("bad, why", [
    ("{not json", "not valid JSON"),
    ('{"image": "x.png"}', "expected an object"),
    ('{"image": "x.png", "caption": 3}', "caption must be a string"),
])
def test_jsonl_malformed_line_is_a_one_line_error_before_any_work(tmp_path, monkeypatch, capsys, bad, why):
    monkeypatch.chdir(tmp_path)
    good = make_images(tmp_path, 2)
    write_jsonl(tmp_path / "pairs.jsonl", [*({"image": r, "caption": c} for r, c in good.items()), bad])
    assert shard("t2i.data.source=jsonl", f"t2i.data.manifest={tmp_path / 'pairs.jsonl'}") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pairs.jsonl line 3" in err and why in err, err
    assert not (tmp_path / "t2i").exists()


def test_missing_root_or_manifest_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert shard("t2i.data.source=folder", f"t2i.data.root={tmp_path / 'nope'}") == 2
    assert shard("t2i.data.source=jsonl", f"t2i.data.manifest={tmp_path / 'nope.jsonl'}") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "folder not found" in err[0] and "file not found" in err[1], err
    assert not (tmp_path / "t2i").exists()
