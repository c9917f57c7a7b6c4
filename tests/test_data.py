"""Data layer: the embedded set, `gear shard`, and the loader (DDP split, resume, damaged shards)."""
import hashlib
import io
import json
import multiprocessing
import os
import shutil
import signal
import tarfile

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from gear.config import params_from_dict
from gear.data import embedded
from gear.data.shard import encode
from gear.data.loader import (TrainStream, augment, decode_image, decode_label, eval_batches, read_manifest,
                              to_tensor)
from gear.data.shard import DataError
from gear.stages import shard

TRAIN_PER_CLASS, VAL_PER_CLASS = 24, 6
N_TRAIN, N_VAL = TRAIN_PER_CLASS * len(embedded.SOURCES), VAL_PER_CLASS * len(embedded.SOURCES)


def make_params(shard_dir, workers=0, **data):
    data = {"shard_dir": str(shard_dir), "embedded_train_per_class": TRAIN_PER_CLASS,
            "embedded_val_per_class": VAL_PER_CLASS, "samples_per_shard": 100, **data}
    return params_from_dict({"data": data, "compute": {"workers": workers}})


def key_of(sample, rng):
    return int(sample["__key__"])


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """A small embedded shard set: 384 train samples in 4 shards, 96 val in 1."""
    out = tmp_path_factory.mktemp("embedded") / "shards"
    shard.run(make_params(out))
    return out


def copy_of(shards, tmp_path):
    dst = tmp_path / "shards"
    shutil.copytree(shards, dst)
    return dst


# ---------------------------------------------------------------------------------------------
# embedded set


def test_embedded_classes_and_default_counts():
    assert len(embedded.SOURCES) >= 12 and len(set(embedded.SOURCES)) == len(embedded.SOURCES)
    for img in embedded.photos():
        assert img.mode == "RGB" and min(img.size) >= 150
    d = params_from_dict({}).data
    assert d.resolution == 32
    train = embedded.crops("train", d.embedded_train_per_class)
    val = embedded.crops("val", d.embedded_val_per_class)
    assert len(train) >= 8000 and len(val) >= 1000
    assert {lab for lab, _ in train} == set(range(len(embedded.SOURCES)))


def test_embedded_val_pixels_never_in_train():
    d = params_from_dict({}).data
    train = embedded.crops("train", d.embedded_train_per_class)
    val = embedded.crops("val", d.embedded_val_per_class)
    assert train == embedded.crops("train", d.embedded_train_per_class)  # deterministic
    for label, img in enumerate(embedded.photos()):
        w, h = img.size
        covered = {}
        for split, boxes in (("train", train), ("val", val)):
            mask = np.zeros((h, w), bool)
            for lab, (x0, y0, x1, y1) in boxes:
                if lab == label:
                    assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h and x1 - x0 == y1 - y0
                    mask[y0:y1, x0:x1] = True
            covered[split] = mask
        assert covered["val"].any() and covered["train"].any()
        assert not (covered["train"] & covered["val"]).any(), embedded.SOURCES[label]


# ---------------------------------------------------------------------------------------------
# gear shard


def read_tar(path):
    """{key: {ext: bytes}} of a tar, via webdataset (checks the shards are valid webdataset)."""
    out = {}
    for s in wds.WebDataset(str(path), shardshuffle=False, empty_check=False):
        out[s["__key__"]] = {k: v for k, v in s.items() if not k.startswith("__")}
    return out


def test_shard_embedded_content_determinism_and_atomic_replace(shards, tmp_path):
    man = json.loads((shards / "manifest.json").read_text())
    assert man["classes"] == list(embedded.SOURCES) and man["resolution"] == 32 and man["skipped"] == []
    assert man["splits"]["train"]["count"] == N_TRAIN and man["splits"]["val"]["count"] == N_VAL
    assert set(man["splits"]["val"]["per_class"].values()) == {VAL_PER_CLASS}
    names = sorted(p.name for p in shards.glob("*.tar"))
    assert names == ["train-000000.tar", "train-000001.tar", "train-000002.tar", "train-000003.tar", "val-000000.tar"]
    for split in ("train", "val"):
        for s in man["splits"][split]["shards"]:
            assert hashlib.sha256((shards / s["name"]).read_bytes()).hexdigest() == s["sha256"]

    # The val shard holds exactly the val crops of the photos (keys are 0-padded indices).
    samples = read_tar(shards / "val-000000.tar")
    assert sorted(samples) == [f"{i:09d}" for i in range(N_VAL)]
    got = sorted((int(s["cls"]), s["png"]) for s in samples.values())
    want = sorted((lab, encode(("crop", box, lab), 32, "png")[0]) for lab, box in embedded.crops("val", VAL_PER_CLASS))
    assert got == want
    assert Image.open(io.BytesIO(got[0][1])).size == (32, 32)

    # A second run with 2 pool workers over an older set: byte-identical, stale files gone.
    again = copy_of(shards, tmp_path)
    (again / "train-000009.tar").write_bytes(b"stale")
    shard.run(make_params(again, workers=2))
    assert sorted(p.name for p in again.iterdir()) == sorted(p.name for p in shards.iterdir())
    for p in shards.glob("*.tar"):
        assert (again / p.name).read_bytes() == p.read_bytes(), p.name
    man2 = json.loads((again / "manifest.json").read_text())
    assert man2["params_data"]["shard_dir"] == str(again)  # the only params difference
    for m in (man, man2):
        del m["params_data"], m["params_data_digest"]
    assert man2 == man
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def make_imagefolder(root):
    rng = np.random.default_rng(0)
    modes = ["RGB", "L", "RGBA", "P", "RGB", "L"]
    for c, name in enumerate(["cat", "dog", "fish"]):
        (root / name).mkdir(parents=True)
        for i, mode in enumerate(modes):
            arr = rng.integers(0, 256, (40 + 7 * i, 56 + 5 * c, 3), dtype=np.uint8)
            Image.fromarray(arr).convert(mode).save(root / name / f"img{i}.png")
    # Center crop of a 96x32 image with a red middle third is pure red (no resize needed).
    wide = np.zeros((32, 96, 3), np.uint8)
    wide[:, :, 2] = 255
    wide[:, 32:64] = (255, 0, 0)
    Image.fromarray(wide).save(root / "fish" / "wide.png")
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, format="JPEG")
    (root / "cat" / "broken.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "dog" / "notes.txt").write_text("not an image\n")


def test_failed_split_stops_its_pool_at_once(tmp_path, monkeypatch):
    """A split that fails part-way through the pool's results tears the pool down before the
    error reaches the caller, not later from the garbage collector (which can deadlock), even
    when the caller has a SIGTERM handler (a training stage's stop request) the workers inherit."""
    def fail_after_one(split, jobs, encoded, *rest):
        next(encoded)
        raise OSError("disk full")
    monkeypatch.setattr(shard, "_write_split", fail_after_one)
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        with pytest.raises(OSError, match="disk full") as failure:
            shard.run(make_params(tmp_path / "shards", workers=2))
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert failure.traceback  # held: its frames keep the results iterator (and so the pool) referenced
    assert multiprocessing.active_children() == []
    assert not (tmp_path / "shards").exists()


def test_shard_imagefolder_skips_bad_files(tmp_path, capsys):
    root = tmp_path / "images"
    make_imagefolder(root)
    params = make_params(tmp_path / "shards", source="imagefolder", train_root=str(root), val_fraction=0.3)
    shard.run(params)
    man = read_manifest(params)
    assert man["classes"] == ["cat", "dog", "fish"]
    skipped = {os.path.basename(s["path"]): s["reason"] for s in man["skipped"]}
    assert set(skipped) == {"broken.jpg", "notes.txt"} and all(skipped.values())
    assert "broken.jpg" in capsys.readouterr().err
    train, val = man["splits"]["train"], man["splits"]["val"]
    assert train["count"] + val["count"] == 19  # 6 + 6 + 7 readable images
    assert val["per_class"]["dog"] == 2 and val["per_class"]["fish"] == 2  # round(0.3 * 7)
    samples = {}
    for split in ("train", "val"):
        for s in man["splits"][split]["shards"]:
            samples.update({(split, k): v for k, v in read_tar(tmp_path / "shards" / s["name"]).items()})
    images = [np.asarray(Image.open(io.BytesIO(s["png"]))) for s in samples.values()]
    assert all(im.shape == (32, 32, 3) for im in images)
    assert any((im == np.array([255, 0, 0], np.uint8)).all() for im in images)

    # Same input -> same shards; an explicit val_root is used as the val split.
    first = {p.name: p.read_bytes() for p in (tmp_path / "shards").iterdir()}
    shard.run(params)
    assert first == {p.name: p.read_bytes() for p in (tmp_path / "shards").iterdir()}
    val_root = tmp_path / "val"
    (val_root / "dog").mkdir(parents=True)
    shutil.copy(root / "dog" / "img0.png", val_root / "dog" / "a.png")
    shard.run(make_params(tmp_path / "s2", source="imagefolder", train_root=str(root), val_root=str(val_root)))
    man2 = json.loads((tmp_path / "s2" / "manifest.json").read_text())
    assert man2["splits"]["val"]["count"] == 1 and man2["splits"]["train"]["count"] == 19


def test_shard_bad_roots_are_clear_errors(tmp_path):
    def run(root, **kw):
        shard.run(make_params(tmp_path / "out", source="imagefolder", train_root=str(root), **kw))

    with pytest.raises(DataError, match="not found"):
        run(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        run(tmp_path / "empty")
    (tmp_path / "empty" / "cat").mkdir()
    with pytest.raises(DataError, match="no files"):
        run(tmp_path / "empty")
    for i in range(3):
        (tmp_path / "empty" / "cat" / f"{i}.jpg").write_bytes(b"garbage")
    with pytest.raises(DataError, match="zero readable images"):
        run(tmp_path / "empty")
    (tmp_path / "v" / "zebra").mkdir(parents=True)
    with pytest.raises(DataError, match="zebra"):
        run(tmp_path / "empty", val_root=str(tmp_path / "v"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "v"]  # nothing half-written


# ---------------------------------------------------------------------------------------------
# loader


def test_read_manifest_missing_says_run_shard(tmp_path):
    with pytest.raises(DataError, match="run `gear shard` first"):
        read_manifest(make_params(tmp_path / "none"))
    with pytest.raises(DataError, match="gear shard"):
        TrainStream(make_params(tmp_path / "none"))


def test_eval_batches_every_sample_once_across_ranks(shards):
    params = make_params(shards)
    for split, n in (("train", N_TRAIN), ("val", N_VAL)):
        for rank in (0, 1):
            keys = torch.cat(list(eval_batches(params, split, 25, rank=rank, world=2, decode=key_of)))
            assert keys.tolist() == list(range(rank, n, 2))
    images, labels = next(eval_batches(params, "val", 8))
    assert images.shape == (8, 3, 32, 32) and images.dtype == torch.float32 and labels.dtype == torch.long
    assert images.min() >= -1 and images.max() <= 1
    first = read_tar(shards / "val-000000.tar")[f"{0:09d}"]
    assert torch.equal(images[0], to_tensor(decode_image(first))) and labels[0] == decode_label(first)


def test_train_stream_ranks_cover_epoch_once_with_equal_batches(shards):
    params = make_params(shards)
    streams = [TrainStream(params, batch_size=10, rank=r, world=2, decode=key_of) for r in (0, 1)]
    assert streams[0].batches_per_epoch == streams[1].batches_per_epoch == N_TRAIN // 2 // 10
    epochs = []
    for _ in range(2):
        seen = [torch.cat([next(s) for _ in range(s.batches_per_epoch)]) for s in streams]
        assert all(s.state_dict() == {"epoch": len(epochs) + 1, "batch": 0} for s in streams)
        keys = torch.cat(seen).tolist()
        assert len(keys) == len(set(keys)) == 2 * 10 * streams[0].batches_per_epoch
        assert set(keys) <= set(range(N_TRAIN))
        epochs.append(keys)
    assert epochs[0] != epochs[1]  # reshuffled per epoch
    with pytest.raises(DataError, match="fewer than"):
        TrainStream(params, batch_size=N_TRAIN, world=2)


def test_train_stream_resume_reproduces_batches(shards):
    params = make_params(shards)
    a = TrainStream(params, batch_size=10)
    for _ in range(5):
        next(a)
    sd = a.state_dict()
    assert sd == {"epoch": 0, "batch": 5}
    ahead = [next(a) for _ in range(40)]  # crosses the epoch boundary (38 batches per epoch)
    b = TrainStream(params, batch_size=10)
    b.load_state_dict(sd)
    for (xa, ya), (xb, yb) in zip(ahead, (next(b) for _ in range(40))):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert a.state_dict() == b.state_dict() == {"epoch": 1, "batch": 7}
    # Worker processes and prefetching do not change a batch.
    c = TrainStream(make_params(shards, workers=2), batch_size=10)
    c.load_state_dict(sd)
    for xa, ya in ahead[:3]:
        xc, yc = next(c)
        assert torch.equal(xa, xc) and torch.equal(ya, yc)
    plain = TrainStream(params, batch_size=10, augment=False)
    plain.load_state_dict(sd)
    x_plain, y_plain = next(plain)
    assert torch.equal(y_plain, ahead[0][1]) and not torch.equal(x_plain, ahead[0][0])  # augmentation is on
    with pytest.raises(ValueError, match="batch must be in"):
        b.load_state_dict({"epoch": 0, "batch": 38})


def test_damaged_shards_are_warned_counted_and_skipped(shards, tmp_path):
    damaged = copy_of(shards, tmp_path)
    tar = damaged / "train-000001.tar"
    os.truncate(tar, tar.stat().st_size // 2)
    (damaged / "train-000003.tar").unlink()  # 84 samples
    with tarfile.open(damaged / "train-000000.tar") as t:  # zero the bytes of one image
        member = t.getmember(f"{7:09d}.png")
    with open(damaged / "train-000000.tar", "r+b") as f:
        f.seek(member.offset_data)
        f.write(bytes(member.size))
    params = make_params(damaged)
    with pytest.warns(RuntimeWarning) as record:
        s = TrainStream(params, batch_size=10, decode=None)
    text = " ".join(str(w.message) for w in record)
    assert "truncated" in text and "missing" in text
    assert s.skipped["truncated_shards"] == 1 and s.skipped["missing_shards"] == 1
    assert 100 + 100 < s.num_samples < 100 + 100 + 100 and s.num_samples < s.expected_samples
    with pytest.warns(RuntimeWarning):
        sizes = [len(next(s)[1]) for _ in range(s.batches_per_epoch)]
    hit = int(7 in s.epoch_order(0))  # sample 7 (shard 0 comes first) unless cut as remainder
    assert s.skipped["decode_errors"] == hit and sizes.count(9) == hit and sizes.count(10) == len(sizes) - hit
    with pytest.warns(RuntimeWarning):
        keys = torch.cat(list(eval_batches(params, "train", 32, decode=key_of))).tolist()
    assert len(keys) == len(set(keys)) == s.num_samples  # the decoder here never reads the image


def write_token_shard(path, shards):
    """A token shard as the tokenizer stage writes it: png, tokens.npy (2, h, w), cls."""
    samples = read_tar(shards / "val-000000.tar")
    with tarfile.open(path, "w") as tar:
        for key, s in sorted(samples.items())[:40]:
            tokens = np.stack([np.zeros((4, 4), np.int16), np.ones((4, 4), np.int16)])
            buf = io.BytesIO()
            np.save(buf, tokens)
            for ext, data in (("png", s["png"]), ("tokens.npy", buf.getvalue()), ("cls", s["cls"])):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return samples


def test_custom_decoder_reads_token_shards(shards, tmp_path):
    (tmp_path / "tokens").mkdir()
    samples = write_token_shard(tmp_path / "tokens" / "train-000000.tar", shards)

    def decode(sample, rng):
        img = decode_image(sample)
        tokens = np.load(io.BytesIO(sample["tokens.npy"]))
        flip = False
        if rng is not None:
            img, flip = augment(img, rng, random_crop=False, hflip=True)
        return to_tensor(img), tokens[int(flip)].astype(np.int64), decode_label(sample), int(sample["__key__"])

    stream = TrainStream(make_params(shards), batch_size=8, pattern=str(tmp_path / "tokens" / "{split}-*.tar"),
                         decode=decode)
    assert stream.num_samples == 40 and stream.expected_samples is None
    flips = []
    for _ in range(stream.batches_per_epoch):
        images, tokens, labels, keys = next(stream)
        assert images.shape == (8, 3, 32, 32) and tokens.shape == (8, 4, 4) and labels.shape == (8,)
        for img, tok, key in zip(images, tokens, keys.tolist()):
            original = to_tensor(decode_image(samples[f"{key:09d}"]))
            flipped = bool(tok[0, 0])
            assert torch.equal(img, original.flip(-1) if flipped else original)
            flips.append(flipped)
    assert 0 < sum(flips) < len(flips)
