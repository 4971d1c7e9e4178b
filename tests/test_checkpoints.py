"""lljax.checkpoints: every format written by its own library and read back, one array at a time; damaged and
unknown files are one-line errors."""
import json

import numpy as np
import pytest

from lljax import checkpoints, store
from lljax.config import Config
from lljax.errors import LLJaxError


def arrays(seed=0):
    rng = np.random.default_rng(seed)
    return {"Dense_0": {"kernel": rng.normal(size=(12, 16)).astype(np.float32),
                        "bias": rng.normal(size=(16,)).astype(np.float32)},
            "Conv_0": {"kernel": rng.normal(size=(3, 3, 4, 8)).astype(np.float64)}}


def flat(tree, prefix=""):
    return {k2: v2 for k, v in tree.items() for k2, v2 in
            (flat(v, f"{prefix}{k}/").items() if isinstance(v, dict) else [(f"{prefix}{k}", v)])}


def read(path):
    fmt, models = checkpoints.open_models(path)
    assert len(models) == 1 and models[0].info == {}
    return fmt, {t.name: t for t in models[0].tensors}


def check_tensors(tensors, expected):
    assert set(tensors) == set(expected)
    for name, want in expected.items():
        t = tensors[name]
        assert t.shape == want.shape and t.dtype == want.dtype
        np.testing.assert_array_equal(t.load(), want)


def test_safetensors_read_back_memory_mapped(tmp_path):
    from safetensors.numpy import save_file

    want = {"fc.weight": np.arange(12, dtype=np.float32).reshape(3, 4), "fc.bias": np.ones(3, np.float16),
            "conv.weight": np.random.default_rng(0).normal(size=(8, 4, 3, 3)), "step": np.array([3], np.int64)}
    path = tmp_path / "model.bin"  # told by content, not by extension
    save_file(want, str(path), metadata={"format": "pt"})
    fmt, tensors = read(path)
    assert fmt == "safetensors"
    check_tensors(tensors, want)
    assert isinstance(tensors["conv.weight"].load(), np.memmap)  # a layer at a time, never the whole file


def test_safetensors_bfloat16(tmp_path):
    import ml_dtypes
    from safetensors.numpy import save_file

    w = np.linspace(-1, 1, 20).reshape(4, 5).astype(ml_dtypes.bfloat16)
    save_file({"w": w}, str(tmp_path / "m.safetensors"))
    _, tensors = read(tmp_path / "m.safetensors")
    np.testing.assert_array_equal(tensors["w"].load().astype(np.float32), w.astype(np.float32))


def test_npz_read_back(tmp_path):
    want = flat(arrays())
    np.savez(tmp_path / "w.npz", **want)
    fmt, tensors = read(tmp_path / "w.npz")
    assert fmt == "npz"
    check_tensors(tensors, want)


def test_msgpack_read_back(tmp_path):
    from flax import serialization

    tree = {"params": arrays()}
    (tmp_path / "flax_model.msgpack").write_bytes(serialization.msgpack_serialize(tree))
    fmt, tensors = read(tmp_path / "flax_model.msgpack")
    assert fmt == "msgpack"
    check_tensors(tensors, flat(tree))


def test_orbax_read_back(tmp_path):
    import orbax.checkpoint as ocp

    tree = arrays()
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save((tmp_path / "ckpt").absolute(), tree)
    fmt, tensors = read(tmp_path / "ckpt")
    assert fmt == "orbax"
    check_tensors(tensors, flat(tree))
    # a CheckpointManager's root (lljax.store's layout): its newest step
    store.save(tmp_path / "managed", 3, tree)
    store.save(tmp_path / "managed", 7, arrays(1))
    assert read(tmp_path / "managed")[0] == "orbax"
    check_tensors(read(tmp_path / "managed")[1], flat(arrays(1)))


def fake_run(folder, config, groups):
    """A run folder as lljax.store writes one: config.json and each group's last checkpoint (a stacked member
    state; only its params are read)."""
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config.to_dict()))
    for g, params in groups.items():
        store.save(folder / "checkpoints" / f"group-{g}", config.epochs, {"params": params, "loss": np.zeros(2)})


def test_run_folder_every_member(tmp_path):
    config = Config.from_dict(dict(widths=(12, 16), lrs=(0.05,), batch_sizes=(32,), seeds=2, epochs=3))
    rng = np.random.default_rng(0)
    stacked = {g: {"Dense_0": {"kernel": rng.normal(size=(2, 8, w)).astype(np.float32),
                               "bias": np.zeros((2, w), np.float32)}} for g, w in enumerate((12, 16))}
    fake_run(tmp_path / "run", config, stacked)
    fmt, models = checkpoints.open_models(tmp_path / "run")
    assert fmt == "run" and len(models) == 4
    assert [(m.info["member"], m.info["width"], m.info["seed"]) for m in models] == \
        [(0, 12, 0), (1, 12, 1), (2, 16, 0), (3, 16, 1)]
    for m, model in enumerate(models):
        kernel = next(t for t in model.tensors if t.name == "Dense_0/kernel")
        assert kernel.shape == (8, 12 if m < 2 else 16)
        np.testing.assert_array_equal(kernel.load(), stacked[m // 2]["Dense_0"]["kernel"][m % 2])


def test_run_folder_without_checkpoints_is_an_error(tmp_path):
    config = Config.from_dict(dict(widths=(12,), lrs=(0.05,), batch_sizes=(32,), seeds=2, epochs=3))
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "config.json").write_text(json.dumps(config.to_dict()))
    with pytest.raises(LLJaxError, match="no trained checkpoint"):
        checkpoints.open_models(tmp_path / "run")


def one_line_error(path, match):
    with pytest.raises(LLJaxError, match=match) as e:
        checkpoints.open_models(path)
    assert "\n" not in str(e.value)


def test_bad_inputs_are_one_line_errors(tmp_path):
    from safetensors.numpy import save_file

    one_line_error(tmp_path / "missing.safetensors", "no such file")
    (tmp_path / "notes.txt").write_text("hello, not a model\n")
    one_line_error(tmp_path / "notes.txt", "unknown checkpoint format")
    (tmp_path / "empty").mkdir()
    one_line_error(tmp_path / "empty", "neither an lljax run folder nor an orbax checkpoint")
    save_file({"w": np.ones((64, 64), np.float32)}, str(tmp_path / "m.safetensors"))
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(data[:len(data) // 2])  # data cut short
    one_line_error(tmp_path / "truncated.safetensors", "corrupted safetensors file .*outside the file")
    (tmp_path / "header.safetensors").write_bytes(data[:20])  # the header itself cut
    one_line_error(tmp_path / "header.safetensors", "corrupted safetensors file")
    broken = bytearray(data)
    broken[8:9] = b"["  # not a JSON object any more
    (tmp_path / "broken.safetensors").write_bytes(bytes(broken))
    one_line_error(tmp_path / "broken.safetensors", "corrupted safetensors file")
    np.savez(tmp_path / "w.npz", w=np.ones((40, 40)))
    raw = (tmp_path / "w.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(raw[:len(raw) // 2])
    one_line_error(tmp_path / "cut.npz", "corrupted npz file")
    (tmp_path / "bad.msgpack").write_bytes(b"\x82\xa1a\xc1")
    one_line_error(tmp_path / "bad.msgpack", "corrupted msgpack file")
