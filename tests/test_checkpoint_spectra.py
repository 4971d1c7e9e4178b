"""lljax.checkpoint_spectra (`lljax spectra PATH --out DIR`): the metrics of a saved model equal
`spectra.layer_metrics` on the same parameters, whatever the format and layout; the output folder; bad input is
one line and exit status 2 with nothing written."""
import csv
import json

import jax
import numpy as np
import pytest

from lljax import checkpoint_spectra as cs
from lljax import cli, spectra
from lljax.errors import LLJaxError


def flax_params(seed=0):
    """A small model in Flax's layouts: Dense (in, out), Conv (kh, kw, in, out), an Embed, an attention query."""
    rng = np.random.default_rng(seed)
    return {"Embed_0": {"embedding": rng.standard_t(3, size=(40, 16))},
            "Conv_0": {"kernel": rng.normal(size=(3, 3, 4, 12)), "bias": np.zeros(12)},
            "attn": {"query": {"kernel": rng.normal(size=(16, 2, 8))}},
            "Dense_0": {"kernel": rng.standard_t(4, size=(48, 24)), "bias": np.zeros(24)},
            "LayerNorm_0": {"scale": np.ones(24)}}


def torch_state(params):
    """The same weights in PyTorch's layouts and names (Linear (out, in), Conv2d (out, in, kh, kw))."""
    return {"embed.weight": params["Embed_0"]["embedding"],
            "conv.weight": params["Conv_0"]["kernel"].transpose(3, 2, 0, 1).copy(),
            "conv.bias": params["Conv_0"]["bias"],
            "attn.query.weight": params["attn"]["query"]["kernel"].reshape(16, 16).T.copy(),
            "fc.weight": params["Dense_0"]["kernel"].T.copy(), "fc.bias": params["Dense_0"]["bias"],
            "norm.weight": params["LayerNorm_0"]["scale"]}


def rows_by_name(result):
    return {r["name"]: r for r in result["rows"]}


def write_msgpack(path, params):
    from flax import serialization

    path.write_bytes(serialization.msgpack_serialize({"params": params}))
    return path


def test_layer_kind_rule():
    kind = cs.layer_kind
    assert kind("h.0.mlp.c_fc.weight", (768, 3072)) == "torch_dense"  # GPT-2's Conv1D: a matrix either way
    assert kind("conv1.weight", (8, 3, 5, 5)) == "torch_conv"
    assert kind("params/Conv_0/kernel", (5, 5, 3, 8), default="torch") == "conv"
    assert kind("params/attn/query/kernel", (16, 2, 8)) == "attn_in"
    assert kind("params/attn/out/kernel", (2, 8, 16)) == "attn_out"
    assert kind("params/Embed_0/embedding", (40, 16)) == "embedding"
    assert kind("w_conv", (8, 3, 5, 5), default="torch") == "torch_conv"  # other names: the format's layout
    assert kind("w_conv", (5, 5, 3, 8), default="flax") == "conv"
    assert kind("w_conv", (5, 5, 3, 8), layout="torch") == "torch_conv"  # --layout overrides the names
    assert kind("conv1.weight", (5, 5, 3, 8), layout="flax") == "conv"
    for name, shape in (("h.0.attn.bias", (1, 1, 64, 64)), ("fc.bias", (8,)), ("ln.weight", (8,)),
                        ("bn.running_mean", (8,)), ("mha.in_proj_bias", (24,)), ("x/scale", (4, 4))):
        assert kind(name, shape) == "vector", name


def test_metrics_equal_layer_metrics(tmp_path):
    params = flax_params()
    result = cs.analyse(write_msgpack(tmp_path / "m.msgpack", params))
    with jax.enable_x64(True):
        want = jax.jit(spectra.layer_metrics)(params)
    rows = {name.rsplit("/", 1)[0]: row for name, row in rows_by_name(result).items()}  # module -> row
    assert set(rows) == {f"params/{layer}" for layer in want.metrics}
    for layer, metrics in want.metrics.items():
        row = rows[f"params/{layer}"]
        for name, value in metrics.items():
            np.testing.assert_allclose(row[cs.WW_NAMES.get(name, name)], float(value), rtol=1e-9, atol=1e-12,
                                       err_msg=f"{layer} {name}")
    assert rows["params/Conv_0"]["rf"] == 9 and rows["params/Dense_0"]["N"] == 48


def test_torch_and_flax_layouts_give_the_same_spectra(tmp_path):
    from safetensors.numpy import save_file

    params = flax_params()
    ours = rows_by_name(cs.analyse(write_msgpack(tmp_path / "m.msgpack", params), selection=False))
    save_file(torch_state(params), str(tmp_path / "m.safetensors"))
    theirs = rows_by_name(cs.analyse(tmp_path / "m.safetensors", selection=False))
    pairs = {"embed.weight": "Embed_0/embedding", "conv.weight": "Conv_0/kernel", "fc.weight": "Dense_0/kernel"}
    for torch_name, flax_name in pairs.items():
        for metric in ("alpha", "xmin", "D", "log_norm", "stable_rank", "num_evals"):
            np.testing.assert_allclose(theirs[torch_name][metric], ours[f"params/{flax_name}"][metric], rtol=1e-9)
    # an .npz with neutral names: Flax's layout unless --layout says otherwise
    np.savez(tmp_path / "w.npz", conv=torch_state(params)["conv.weight"])
    flax_read = cs.analyse(tmp_path / "w.npz")["rows"][0]
    torch_read = cs.analyse(tmp_path / "w.npz", layout="torch")["rows"][0]
    assert (flax_read["kind"], torch_read["kind"]) == ("conv", "torch_conv")
    np.testing.assert_allclose(torch_read["alpha"], ours["params/Conv_0/kernel"]["alpha"], rtol=1e-9)
    assert flax_read["alpha"] != pytest.approx(torch_read["alpha"], rel=1e-6)


def test_gram_eigenvalues_match_the_svd_and_fall_back_when_ill_conditioned():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(300, 40))
    np.testing.assert_allclose(cs.eigenvalues(w, "dense"), cs.eigenvalues(w, "dense", "svd"), rtol=1e-10)
    low_rank = rng.normal(size=(60, 3)) @ rng.normal(size=(3, 30))  # 27 zero singular values
    np.testing.assert_array_equal(cs.eigenvalues(low_rank, "dense"), cs.eigenvalues(low_rank, "dense", "svd"))
    with jax.enable_x64(True):
        layer = spectra.weight_layers({"Conv_0": {"kernel": np.zeros((3, 3, 4, 8))}})[0][0]
        conv = rng.normal(size=(3, 3, 4, 8))
        np.testing.assert_allclose(cs.eigenvalues(conv, "conv"), np.asarray(spectra.eigenvalues(conv, layer)),
                                   rtol=1e-10)


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_cli_writes_the_folder(tmp_path, capsys):
    params = flax_params()
    path = write_msgpack(tmp_path / "m.msgpack", params)
    out = tmp_path / "out"
    assert cli.main(["spectra", str(path), "--out", str(out), "--no-progress", "--layers", "*Dense_0*"]) == 0
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and line.startswith("4 layers") and "mean alpha" in line
    rows = read_csv(out / "details.csv")
    assert len(rows) == 4
    with jax.enable_x64(True):
        keys = spectra.spectrum_metrics(np.linspace(1, 2, 20), 20, 20).keys()
    columns = {"name", "shape", "N", "M", "rf", *(cs.WW_NAMES.get(k, k) for k in keys)}
    assert columns <= set(rows[0]) and {"D", "sigma"} <= set(rows[0])  # WeightWatcher's names
    assert read_csv(out / "summary.csv")[0]["layers"] == "4"
    meta = json.loads((out / "spectra.json").read_text())
    assert meta["figures"] == ["esd-params_Dense_0_kernel.png"] and (out / meta["figures"][0]).stat().st_size > 0
    # the same analysis again: nothing to do; another one into the same folder: refused
    assert cli.main(["spectra", str(path), "--out", str(out), "--no-progress", "--layers", "*Dense_0*"]) == 0
    assert "already holds this analysis" in capsys.readouterr().out
    assert cli.main(["spectra", str(path), "--out", str(out), "--no-progress"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.msgpack", "out"]  # no temporary folder left


def test_run_folder_one_row_per_member_and_layer(tmp_path):
    from test_checkpoints import fake_run

    from lljax.config import Config

    config = Config.from_dict(dict(widths=(12,), lrs=(0.05, 0.1), batch_sizes=(32,), seeds=1, epochs=2))
    rng = np.random.default_rng(0)
    stacked = {"Dense_0": {"kernel": rng.normal(size=(2, 16, 12))}, "Dense_1": {"kernel": rng.normal(size=(2, 12, 3))}}
    fake_run(tmp_path / "run", config, {0: stacked})
    result = cs.analyse(tmp_path / "run", selection=False)
    rows = [(r["member"], r["lr"], r["name"]) for r in result["rows"]]
    assert rows == [(0, 0.05, "Dense_0/kernel"), (1, 0.1, "Dense_0/kernel")]
    assert [(m, name) for m, name, _ in result["skipped"]] == [(0, "Dense_1/kernel"), (1, "Dense_1/kernel")]
    with jax.enable_x64(True):
        want = spectra.layer_metrics({"Dense_0": {"kernel": stacked["Dense_0"]["kernel"][1]}}).metrics["Dense_0"]
    np.testing.assert_allclose(result["rows"][1]["alpha"], float(want["alpha"]), rtol=1e-9)
    summary = cs.summaries(result)
    assert [(s["member"], s["layers"]) for s in summary] == [(0, 1), (1, 1)]


@pytest.mark.slow
def test_run_folder_of_a_real_run(tmp_path):
    from test_pipeline import tiny_config, tiny_dataset

    from lljax import pipeline

    pipeline.run(tiny_config(widths=(12,), lrs=(0.05,)), tmp_path / "run", progress=False, dataset=tiny_dataset())
    out = tmp_path / "spectra"
    assert cli.main(["spectra", str(tmp_path / "run"), "--out", str(out), "--no-progress", "--min-evals", "3"]) == 0
    rows = read_csv(out / "details.csv")
    assert sorted({r["member"] for r in rows}) == ["0", "1"] and all(np.isfinite(float(r["alpha"])) for r in rows)


def error_exit(tmp_path, capsys, *args):
    out = tmp_path / "never"
    try:
        code = cli.main(["spectra", *map(str, args), "--out", str(out), "--no-progress"])
    except SystemExit as e:  # argparse's own checks (a bad choice) exit from inside
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert not out.exists() and not list(tmp_path.glob(".never*"))
    return err


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    from safetensors.numpy import save_file

    assert "no such file" in error_exit(tmp_path, capsys, tmp_path / "missing.safetensors")
    (tmp_path / "notes.txt").write_text("not a model")
    assert "unknown checkpoint format" in error_exit(tmp_path, capsys, tmp_path / "notes.txt")
    save_file({"fc.bias": np.zeros(8, np.float32), "ln.weight": np.ones(8, np.float32)}, str(tmp_path / "b.st"))
    assert "no weight matrix" in error_exit(tmp_path, capsys, tmp_path / "b.st")
    save_file({"fc.weight": np.ones((32, 32), np.float32)}, str(tmp_path / "m.safetensors"))
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-100])
    assert "corrupted safetensors" in error_exit(tmp_path, capsys, tmp_path / "cut.safetensors")
    assert "--layout" in error_exit(tmp_path, capsys, tmp_path / "m.safetensors", "--layout", "keras")
    with pytest.raises(LLJaxError, match="eigensolver"):
        cs.analyse(tmp_path / "m.safetensors", eigensolver="lanczos")
