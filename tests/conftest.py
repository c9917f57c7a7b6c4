import os

# A missing hub download otherwise retries for ~45 s; tests must never touch the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DVCLIVE_LOGLEVEL", "ERROR")


import pytest  # noqa: E402
import torch  # noqa: E402


class TinyAR:
    """A tiny GPT of one condition (class or caption) and condition inputs for it: what the
    parametrised AR tests (tests/test_ar.py) run both conditions through."""

    K, GRID, CLASSES, TEXT_DIM, TEXT_LEN = 32, 4, 5, 8, 6

    def __init__(self, condition: str):
        self.condition = condition

    def config(self, **kw):
        from gear.models.ar import GPTConfig

        cond = ({"num_classes": self.CLASSES} if self.condition == "class"
                else {"text_dim": self.TEXT_DIM, "text_len": self.TEXT_LEN})
        return GPTConfig(**{"vocab_size": self.K, "grid": self.GRID, "n_layer": 3, "dim": 32, "n_head": 2,
                            **cond, **kw})

    def model(self, seed: int = 0, std: float = 0.3, **kw):
        """Large random weights (sharp attention, non-uniform logits), so that a wrong key,
        position or mask changes the sampled tokens. Eval mode."""
        from gear.models.ar import GPT

        torch.manual_seed(seed)
        model = GPT(self.config(**kw))
        for p in model.parameters():
            if p.dim() == 2:
                torch.nn.init.normal_(p, std=std)
        return model.eval()

    def cond(self, B: int = 8, seed: int = 1) -> tuple[torch.Tensor, ...]:
        """Class labels (the null class among them), or left-padded captions of several lengths."""
        g = torch.Generator().manual_seed(seed)
        if self.condition == "class":
            return (torch.randint(0, self.CLASSES + 1, (B,), generator=g),)
        P = self.TEXT_LEN
        text = torch.randn(B, P, self.TEXT_DIM, generator=g)
        mask = torch.zeros(B, P, dtype=torch.bool)
        for b, n in enumerate(torch.randint(1, P + 1, (B,), generator=g).tolist()):
            mask[b, P - n:] = True                      # left padding: valid positions at the end
        return text, mask


@pytest.fixture(params=["class", "caption"])
def tiny_ar(request) -> TinyAR:
    return TinyAR(request.param)


@pytest.fixture
def ws(base, tmp_path, monkeypatch):
    """A private copy of the module's `base` workspace as the current folder."""
    import shutil

    root = tmp_path / "ws"
    shutil.copytree(base, root)
    monkeypatch.chdir(root)
    return root


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The evaluation world (tests/tiny.py build_eval_world), built once per module."""
    from tiny import build_eval_world

    root = tmp_path_factory.mktemp("world")
    build_eval_world(root)
    return root
