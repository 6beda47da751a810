"""INT8 post-training quantization: the layer math, the byte accounting and the callback in a real fit."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from qlit.callbacks import Int8Quantization
from qlit.data import IrisDataModule
from qlit.export.quantize import (
    Int8Linear,
    float_linear_bytes,
    int8_linear_bytes,
    quantize_linears,
    swap_modules,
    torchao_quantize,
)
from qlit.models import HybridClassifier, HybridNet

SCALARS = ("float_val_acc", "int8_val_acc", "float_linear_bytes", "int8_linear_bytes")  # never the test fold


@pytest.mark.parametrize("shape", [(4, 4), (4, 5), (4, 1), (7, 3)])
def test_int8_linear_computes_what_torchao_computes(shape):
    torch.manual_seed(sum(shape))
    linear = nn.Linear(*shape)
    layer = quantize_linears(nn.Sequential(linear))["0"]
    folded = torchao_quantize({"layer": linear})["layer"]
    x = torch.randn(33, shape[0])
    # qlit's plain-tensor layer must give bit-for-bit torchao's weight-only INT8 result
    assert torch.equal(layer(x), folded(torch.cat([x, torch.ones(33, 1)], 1)))
    assert layer.qweight.dtype == torch.int8 and layer.scale.numel() == 1
    full = torch.cat([linear.weight, linear.bias[:, None]], 1).detach()
    # torchao's symmetric scale maps the largest magnitude to 127.5 (stored clamped to 127)
    assert layer.scale.item() == pytest.approx(full.abs().max().item() / 127.5, rel=1e-6)
    assert layer.qweight.int().abs().max().item() in (127, 128)  # the whole int8 range is used
    weight, bias = layer.dequantized()
    assert (weight - linear.weight).abs().max() <= layer.scale.item() / 2 + 1e-7
    assert (bias - linear.bias).abs().max() <= layer.scale.item() / 2 + 1e-7
    assert (layer(x) - linear(x)).abs().max() < 0.05 * linear(x).abs().max()


def test_int8_linear_keeps_leading_dimensions_and_double_inputs():
    torch.manual_seed(0)
    linear = nn.Linear(4, 3)
    layer = quantize_linears(nn.Sequential(linear))["0"]
    x = torch.randn(2, 5, 4)
    assert layer(x).shape == (2, 5, 3)
    assert torch.allclose(layer(x.double()).float(), layer(x), atol=1e-6)


@pytest.mark.parametrize(
    ("num_classes", "core"), [(2, "quantum"), (5, "quantum"), (3, "classical")]
)
def test_bytes_include_biases_and_scales_and_shrink_at_least_3x(num_classes, core):
    net = HybridNet(4, num_classes, n_qubits=4, n_layers=2, backend="qlit", core=core)
    layers = quantize_linears(net)
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert set(layers) == {name for name, m in net.named_modules() if isinstance(m, nn.Linear)}
    params = sum(m.weight.numel() + m.bias.numel() for m in linears)
    assert float_linear_bytes(net) == 4 * params
    swap_modules(net, layers)
    # every weight and bias becomes one byte; each layer adds one float32 scale
    assert int8_linear_bytes(net) == params + 4 * len(linears)
    assert float_linear_bytes(net) == 0  # nothing classical left in float
    assert 4 * params / int8_linear_bytes(net) >= 3
    if core == "quantum":  # the circuit is not quantized
        assert net.core.weights.dtype == torch.float32 and isinstance(net.core.weights, nn.Parameter)


def test_rejects_a_net_without_linear_layers():
    from qlit.errors import QlitError

    with pytest.raises(QlitError, match="no nn.Linear"):
        quantize_linears(nn.Sequential(nn.Tanh()))
    with pytest.raises(QlitError, match="int8"):
        Int8Linear(torch.zeros(3, 5), torch.ones(1))


def _trainer(tmp_path: Path, callback: Int8Quantization, checkpointing: bool = True, epochs: int = 3) -> L.Trainer:
    callbacks: list[L.Callback] = [callback]
    if checkpointing:
        callbacks.insert(0, ModelCheckpoint(monitor="val_loss", mode="min", filename="best", save_last=True))
    return L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        deterministic=True,
        logger=TensorBoardLogger(tmp_path / "lightning_logs", name="iris"),
        callbacks=callbacks,
        enable_checkpointing=checkpointing,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )


def _model() -> HybridClassifier:
    return HybridClassifier(4, 2, ["setosa", "versicolor"], backend="qlit", lr=0.05)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """One short Iris fit through the Trainer API with the quantization callback."""
    tmp = tmp_path_factory.mktemp("quant")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        L.seed_everything(0)
        callback = Int8Quantization()
        model, dm = _model(), IrisDataModule(batch_size=16)
        trainer = _trainer(tmp, callback)
        trainer.fit(model, datamodule=dm)
    return trainer, model, dm, callback


def test_callback_saves_artifacts_and_logs_scalars(fitted):
    trainer, _, _, callback = fitted
    run = Path(trainer.log_dir)
    assert callback.artifact_path == run / "model_int8.pt" and callback.artifact_path.is_file()
    assert callback.state_dict_path == run / "model.pth" and callback.state_dict_path.is_file()
    events = EventAccumulator(str(run))
    events.Reload()
    for name in SCALARS:
        (scalar,) = events.Scalars(name)
        assert scalar.value == pytest.approx(callback.metrics[name])
    assert callback.metrics["float_linear_bytes"] / callback.metrics["int8_linear_bytes"] >= 3
    artifact = torch.load(callback.artifact_path, weights_only=True)
    assert artifact["metrics"]["source"] == trainer.checkpoint_callback.best_model_path
    assert {name: artifact["metrics"][name] for name in SCALARS} == callback.metrics


def test_callback_leaves_the_trained_model_alone(fitted, tmp_path):
    trainer, model, dm, callback = fitted
    assert isinstance(model.net.pre, nn.Linear) and isinstance(model.net.post, nn.Linear)
    last = torch.load(trainer.checkpoint_callback.last_model_path, weights_only=True)["state_dict"]
    for key, value in model.state_dict().items():
        assert torch.equal(value.cpu(), last[key]), key
    # Lightning's own validation of the best checkpoint agrees with the callback's float accuracy
    tester = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    (result,) = tester.validate(model, datamodule=dm, ckpt_path=trainer.checkpoint_callback.best_model_path)
    assert result["val_acc"] == pytest.approx(callback.metrics["float_val_acc"])


def test_callback_never_overwrites_and_keeps_the_newest_under_the_documented_name(fitted, capsys):
    trainer, model, _, callback = fitted
    first = callback.artifact_path.read_bytes(), callback.state_dict_path.read_bytes()
    epoch = torch.load(callback.artifact_path, weights_only=True)["epoch"]
    assert isinstance(epoch, int)
    callback.on_fit_end(trainer, model)
    run = Path(trainer.log_dir)
    assert (callback.artifact_path, callback.state_dict_path) == (run / "model_int8.pt", run / "model.pth")
    kept = run / f"model_int8_epoch{epoch}.pt", run / f"model_epoch{epoch}.pth"
    assert (kept[0].read_bytes(), kept[1].read_bytes()) == first
    out = capsys.readouterr().out
    for name in SCALARS:
        assert f"{name} " in out
    assert f"model_int8_epoch{epoch}.pt" in out


def test_a_resumed_fit_exports_its_newest_model_as_model_int8(in_tmp_path: Path):
    """Before: the resumed run's model went to model_int8_1.pt, and model_int8.pt kept the pre-resume one."""
    from qlit.cli import main
    from tests.conftest import CONFIGS, QUICK

    iris = ["fit", "--config", str(CONFIGS / "iris.yaml"), *QUICK]
    run = in_tmp_path / "lightning_logs" / "iris" / "version_0"
    main([*iris, "--trainer.max_epochs=2"])
    before = (run / "model_int8.pt").read_bytes()
    main([*iris, "--trainer.max_epochs=6", "--ckpt_path=last"])
    artifact = torch.load(run / "model_int8.pt", weights_only=True)
    best = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    assert artifact["metrics"]["source"].endswith("best.ckpt") and artifact["epoch"] == best["epoch"]
    (kept,) = run.glob("model_int8_epoch*.pt")
    assert kept.read_bytes() == before
    assert sorted(p.name for p in run.glob("model*")) == sorted(
        ["model_int8.pt", "model.pth", kept.name, kept.name.replace("model_int8", "model").replace(".pt", ".pth")]
    )


def test_without_checkpoint_quantizes_final_weights(tmp_path, capsys):
    L.seed_everything(1)
    callback = Int8Quantization(state_dict_filename=None)
    model = _model()
    trainer = _trainer(tmp_path, callback, checkpointing=False, epochs=1)
    trainer.fit(model, datamodule=IrisDataModule(batch_size=16))
    assert "no best checkpoint" in capsys.readouterr().out
    assert callback.state_dict_path is None and not list(Path(trainer.log_dir).glob("*.pth"))
    artifact = torch.load(callback.artifact_path, weights_only=True)
    assert artifact["metrics"]["source"] == "final weights"
    assert torch.equal(artifact["float_state_dict"]["net.core.circuit.weights"], model.net.core.weights.detach())
    assert artifact["datamodule"]["class_names"] == ["setosa", "versicolor"]
    assert not math.isnan(callback.metrics["int8_val_acc"])
