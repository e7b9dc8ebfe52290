import random

import pytest

from lib_trainer.trainer.captions import normalize_caption, process_caption, split_caption

CAPTION = "sks dog, solo,  sitting , grass,\n outdoors, blue sky, looking at viewer"


def run(caption=CAPTION, seed=0, **kw):
    args = dict(shuffle=False, keep_tokens=0, caption_dropout_rate=0.0, tag_dropout_rate=0.0)
    args.update(kw)
    return process_caption(caption, rng=random.Random(seed), **args)


def test_split_and_normalize():
    assert split_caption(" a ,b,, c  d\n,") == ["a", "b", "c d"]
    assert normalize_caption("a photo of   sks dog") == "a photo of sks dog"
    assert normalize_caption("") == ""


def test_no_options_just_normalises():
    assert run() == "sks dog, solo, sitting, grass, outdoors, blue sky, looking at viewer"
    assert run("a,b") == "a, b"
    assert run("") == ""


def test_shuffle_keeps_first_tokens_and_all_tags():
    seen = set()
    for seed in range(30):
        out = run(shuffle=True, keep_tokens=1, seed=seed)
        tags = out.split(", ")
        assert tags[0] == "sks dog"
        assert sorted(tags) == sorted(split_caption(CAPTION))
        seen.add(out)
    assert len(seen) > 10
    out = run(shuffle=True, keep_tokens=2, seed=5)
    assert out.split(", ")[:2] == ["sks dog", "solo"]


def test_deterministic_for_a_seed():
    kw = dict(shuffle=True, keep_tokens=1, caption_dropout_rate=0.1, tag_dropout_rate=0.3)
    for seed in range(10):
        assert run(seed=seed, **kw) == run(seed=seed, **kw)
    rng_a, rng_b = random.Random(42), random.Random(42)
    seq_a = [process_caption(CAPTION, rng=rng_a, **kw) for _ in range(50)]
    seq_b = [process_caption(CAPTION, rng=rng_b, **kw) for _ in range(50)]
    assert seq_a == seq_b
    assert len(set(seq_a)) > 5


def test_keep_tokens_survive_heavy_tag_dropout():
    for seed in range(50):
        out = run(shuffle=True, keep_tokens=1, tag_dropout_rate=0.9, seed=seed)
        assert out.split(", ")[0] == "sks dog"
    assert run(keep_tokens=2, tag_dropout_rate=1.0) == "sks dog, solo"
    assert run(keep_tokens=0, tag_dropout_rate=1.0) == ""
    assert run("a, b", keep_tokens=5, tag_dropout_rate=1.0) == "a, b"
    # Roughly the rate asked for.
    rng = random.Random(1)
    kept = sum(
        len(process_caption(CAPTION, shuffle=False, keep_tokens=1, caption_dropout_rate=0, tag_dropout_rate=0.5, rng=rng).split(", ")) - 1
        for _ in range(400)
    )
    assert 0.4 < kept / (400 * 6) < 0.6


def test_caption_dropout_drops_everything():
    assert run(keep_tokens=3, caption_dropout_rate=1.0) == ""
    rng = random.Random(3)
    outs = [
        process_caption(CAPTION, shuffle=True, keep_tokens=1, caption_dropout_rate=0.25, tag_dropout_rate=0, rng=rng)
        for _ in range(800)
    ]
    assert 0.18 < outs.count("") / len(outs) < 0.32
    # Every n-th epoch (1-based) drops all captions.
    assert run(caption_dropout_every_n_epochs=2, epoch=2) == ""
    assert run(caption_dropout_every_n_epochs=2, epoch=3) != ""
    assert run(caption_dropout_every_n_epochs=2, epoch=0) != ""


def test_keep_tokens_separator():
    cap = "sks dog, cute ||| solo, grass, sky ||| masterpiece, best quality"
    for seed in range(20):
        out = run(cap, shuffle=True, keep_tokens=0, tag_dropout_rate=0.5, keep_tokens_separator="|||", seed=seed)
        tags = out.split(", ")
        assert tags[:2] == ["sks dog", "cute"]
        assert tags[-2:] == ["masterpiece", "best quality"]
        assert "|||" not in out
    # The separator never leaks into the caption, even with nothing else asked.
    assert run("a ||| b, c", keep_tokens_separator="|||") == "a, b, c"
    # Separator configured but absent: keep_tokens applies.
    assert run("a, b, c", keep_tokens=1, tag_dropout_rate=1.0, keep_tokens_separator="|||") == "a"


def test_validation():
    with pytest.raises(ValueError):
        run(keep_tokens=-1)
    with pytest.raises(ValueError):
        run(caption_dropout_rate=1.5)
    with pytest.raises(ValueError):
        run(tag_dropout_rate=-0.1)
    with pytest.raises(ValueError):
        run(tag_dropout_rate=float("nan"))
    with pytest.raises(TypeError):
        process_caption("a", shuffle=True, keep_tokens=0, caption_dropout_rate=0, tag_dropout_rate=0, rng=42)
