"""Checks the ``qlit`` CLI runs before the Trainer starts, so bad input fails before any file is written.

Lightning creates the run's TensorBoard folder and saves the config before it reads the data or
restores a checkpoint. An error found only then would leave a half-started run behind, inside the
very run folder a resumed ``fit`` or a ``test --ckpt_path best`` points at. These checks read the
data and compare the checkpoint with the model first, and refuse to start a fresh ``fit`` in a run
folder that already holds checkpoints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qlit.errors import QlitError
from qlit.io.checkpoint_content import ARCHITECTURE, check_optimizer_fits
from qlit.io.runs import tensorboard_loggers
from qlit.models.circuit import check_noise
from qlit.models.classifier import RUN_CONDITIONS, RUN_CONDITIONS_KEY


def preflight(cli: Any, subcommand: str) -> None:
    """Validate the data, the checkpoint and the run folder of a parsed ``qlit`` command.

    Args:
        cli: The `QlitCLI`, with its model, data module and trainer instantiated.
        subcommand: ``fit``, ``validate``, ``test`` or ``predict``.

    Raises:
        QlitError: naming the data value, file or checkpoint at fault.
    """
    config = cli.config[subcommand]
    ckpt_path = config.get("ckpt_path")
    checkpoint = getattr(cli, "_checkpoint", None)
    if subcommand == "predict" and ckpt_path and checkpoint is not None and cli.datamodule is not None:
        restore_for_new_samples(checkpoint, Path(ckpt_path), cli.model, cli.datamodule)
    if cli.datamodule is not None:
        cli.datamodule.setup(subcommand)
    if ckpt_path and checkpoint is not None:
        check_checkpoint_fits(checkpoint, Path(ckpt_path), cli.model, cli.datamodule, subcommand)
        if cli.datamodule is not None:
            check_split(checkpoint, Path(ckpt_path), cli.datamodule, subcommand)
            # A data module that can only judge its predict file against the trained state (PLINK: shared SNPs).
            check_predict = getattr(cli.datamodule, "check_predict_file", None)
            if subcommand == "predict" and check_predict is not None:
                check_predict(checkpoint.get(type(cli.datamodule).__qualname__))
    if subcommand == "fit" and not ckpt_path:
        _check_fresh_run_folder(config)


def restore_for_new_samples(checkpoint: dict[str, Any], path: Path, model: Any, datamodule: Any) -> None:
    """Give a data module predicting a ``predict_file`` the checkpoint's fitted state before it reads the file.

    Lightning restores the data module's state only after ``setup("predict")``; restoring it first lets
    the predict file be checked against the columns, SNPs and imputation the model was trained with,
    before anything is written. Everything that shapes a new sample then comes from the checkpoint,
    never from this command's fold or training data (which may be gone). Nothing is done for predict
    on the test fold, or when the checkpoint holds no state of this data module (`check_checkpoint_fits`
    says so).

    Raises:
        QlitError: the model built for this command names other classes than the checkpoint's data
            (its config's data differ from those it was trained on), so its predictions would be mislabelled.
    """
    if not getattr(datamodule, "predict_file", None):
        return
    state = checkpoint.get(type(datamodule).__qualname__)
    if not isinstance(state, dict) or "preprocessing" not in state:
        return
    saved, current = state.get("class_names"), getattr(model, "class_names", None)
    if isinstance(saved, (list, tuple)) and current is not None and list(saved) != list(current):
        source = getattr(datamodule, "path", None) or type(datamodule).__name__
        raise QlitError(
            f"{path} was trained on classes {list(saved)}, but this config's data ({source}) gives {list(current)}; "
            "point the config at the data the model was trained on (a table that no longer exists is fine: "
            "predicting needs only the checkpoint and the new file)"
        )
    datamodule.load_state_dict(state)


def check_checkpoint_fits(checkpoint: dict[str, Any], path: Path, model: Any, datamodule: Any, subcommand: str) -> None:
    """Raise a `QlitError` unless ``checkpoint`` loads into ``model`` and matches ``datamodule``."""
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict):
        raise QlitError(f"{path} is not a Lightning checkpoint: it has no state_dict")
    expected = model.state_dict()
    problem = None
    for name, tensor in expected.items():
        if name not in state:
            problem = f"it has no {name}"
        elif not hasattr(state[name], "shape") or tuple(state[name].shape) != tuple(tensor.shape):
            found = tuple(getattr(state[name], "shape", ()))
            problem = f"{name} has shape {found} there but {tuple(tensor.shape)} in this model"
        if problem:
            break
    if problem is None:
        unexpected = sorted(set(state) - set(expected))
        problem = f"it has a parameter this model lacks, {unexpected[0]}" if unexpected else None
    if problem is not None:
        raise QlitError(f"{path} was trained with a different architecture{_hparam_diff(checkpoint, model)}: {problem}")
    if subcommand == "fit":
        check_optimizer_fits(checkpoint, path, model)
    if datamodule is None:
        return
    data_state = checkpoint.get(type(datamodule).__qualname__)
    if not isinstance(data_state, dict):
        saved = [key for key, value in checkpoint.items() if isinstance(value, dict) and "preprocessing" in value]
        raise QlitError(
            f"{path} was trained on {saved[0] if saved else 'other data'}, not {type(datamodule).__name__}; "
            "use the config the checkpoint was trained with"
        )
    raw = data_state.get("raw_features")
    if raw is not None and raw != getattr(datamodule, "raw_features", raw):
        raise QlitError(f"{path} was trained on data with {raw} raw features; this data has {datamodule.raw_features}")
    names = data_state.get("class_names")
    if subcommand != "predict" and names is not None and list(names) != list(datamodule.class_names):
        raise QlitError(f"{path} was trained on classes {list(names)}; this data has {list(datamodule.class_names)}")


_VERB = {"fit": "resumes training on", "validate": "validates on", "test": "tests on", "predict": "predicts"}


def check_split(checkpoint: dict[str, Any], path: Path, datamodule: Any, subcommand: str) -> None:
    """Refuse a checkpoint whose model was trained on another split than the one this command uses.

    A checkpoint records the identity of its split (`KFoldDataModule.split_identity`: hashes of the
    data and of each split's rows). ``validate``, ``test``, ``predict`` on the test fold and resumed
    ``fit`` need exactly that split: any other could score, or train on, rows the model was trained
    or tested on. ``predict --data.predict_file`` scores new samples, which is not a test, so it
    needs no match.

    Raises:
        QlitError: the split differs or the checkpoint records none; the message names both splits.
    """
    if subcommand == "predict" and getattr(datamodule, "predict_file", None):
        return
    state = checkpoint.get(type(datamodule).__qualname__)
    saved = state.get("split") if isinstance(state, dict) else None
    verb = _VERB.get(subcommand, subcommand)
    if not isinstance(saved, dict):
        raise QlitError(
            f"{path} does not record the split it was trained on (saved by an older qlit?), so qlit cannot "
            f"tell whether the rows this command {verb} were its training rows; retrain it with this qlit"
        )
    current = datamodule.split_identity()
    keys = ("data_sha256", "train_sha256", "val_sha256", "test_sha256")
    if all(saved.get(key) == current[key] for key in keys):
        if subcommand in ("test", "predict"):
            check_not_searched(saved.get("tuned_on"), current.get("tuned_on"), path, datamodule, verb)
        return
    if saved.get("data_sha256") != current["data_sha256"]:
        raise QlitError(
            f"{path} was trained on other data ({_describe_source(saved)}) than this command reads "
            f"({_describe_source(current)}); use the config it was trained with"
        )
    raise QlitError(
        f"{path} was trained on {_describe_split(saved)}, but this command {verb} {_describe_split(current)}, "
        f"whose rows include rows that model trained or was tested on; use the config it was trained with"
        + (f" (--data.fold {saved['fold']})" if saved.get("fold") != current["fold"] else "")
    )


def check_not_searched(
    saved: dict[str, Any] | None, current: dict[str, Any] | None, path: Path, datamodule: Any, verb: str
) -> None:
    """Refuse to score test rows that the ``qlit tune`` search behind the model's config trained or validated on.

    ``saved`` is the provenance the checkpoint recorded, ``current`` the command's config's (``data.tuned_on``):
    the test score of a config chosen with the test rows is optimistic, as a checkpoint's own training rows are.

    Raises:
        QlitError: naming the search's outer fold and how many test rows it saw.
    """
    from qlit.data.base import searched_rows_scored

    test = datamodule.indices["test"]
    for tuned_on in (saved, current):
        seen = searched_rows_scored(tuned_on, datamodule.data_sha256(), test)
        if len(seen):
            outer = tuned_on.get("outer_fold")
            search = f"outer fold {outer}" if outer is not None else "all rows"
            raise QlitError(
                f"{path}: its config was chosen by a qlit tune search on {search} of these data, which trained or "
                f"validated on {len(seen)} of the {len(test)} rows this command {verb} (fold {datamodule.fold}); "
                "a score there is optimistic: use the nested estimate in tune_summary, or the fold the config was "
                "tuned for (best_config_fold_<k>.yaml, --data.fold <k>)"
            )


def _describe_split(split: dict[str, Any]) -> str:
    return (
        f"fold {split.get('fold')} of {split.get('num_folds')} (split_seed {split.get('split_seed')}, "
        f"val_fraction {split.get('val_fraction')})"
    )


def _describe_source(split: dict[str, Any]) -> str:
    source = split.get("source") or {}
    details = ", ".join(f"{key}={value}" for key, value in source.items())
    return f"{split.get('data_module')}: {details}" if details else str(split.get("data_module"))


def _hparam_diff(checkpoint: dict[str, Any], model: Any) -> str:
    saved = checkpoint.get("hyper_parameters") or {}
    current = getattr(model, "hparams", {})
    diffs = [
        f"{key}={saved[key]!r} there, {current[key]!r} here"
        for key in ARCHITECTURE
        if key in saved and key in current and saved[key] != current[key]
    ]
    return f" ({'; '.join(diffs)})" if diffs else ""


def _check_fresh_run_folder(config: Any) -> None:
    """A new ``fit`` must not write its checkpoints over those of a run that is already there."""
    for args in tensorboard_loggers(config):
        version = args.get("version")
        if version is None:
            continue
        version_dir = version if isinstance(version, str) else f"version_{version}"
        folder = Path(args.save_dir) / (args.get("name") or "") / version_dir
        if any((folder / "checkpoints").glob("*.ckpt")):
            raise QlitError(
                f"{folder} already holds checkpoints of an earlier run; resume it with --ckpt_path last "
                "or leave trainer.logger.init_args.version unset for a new run"
            )


_LINKED = {"in_features", "num_classes", "class_names"}  # set from the data module, not by the user


def check_resume_overrides(checkpoint: dict[str, Any], path: Path, model_config: Any) -> None:
    """Refuse a resumed ``fit`` whose model settings differ from those the checkpoint was trained with.

    LightningCLI rebuilds a resumed model from the checkpoint's hyperparameters, and the optimizer
    and scheduler state it restores were made with them, so ``--ckpt_path last --model.lr 0.5``
    would silently keep the old ``lr``. Changing a model setting means a new run.

    Raises:
        QlitError: naming every setting that differs, with both values.
    """
    saved = checkpoint.get("hyper_parameters")
    if not isinstance(saved, dict) or model_config is None:
        return
    given = dict(model_config.items()) if hasattr(model_config, "items") else {}
    diffs = [
        f"model.{key}={given[key]!r} here but {saved[key]!r} in the checkpoint"
        for key in sorted(set(given) & set(saved) - _LINKED)
        if given[key] is not None and given[key] != saved[key]
    ]
    # Shots and noise may differ on test (a trained model under other conditions), never on a resume.
    conditions = checkpoint.get(RUN_CONDITIONS_KEY)
    if isinstance(conditions, dict):
        here = {key: given.get(key) for key in RUN_CONDITIONS if key in given}
        if "noise" in here:
            here["noise"] = dict(check_noise(here["noise"]))
        diffs += [
            f"model.{key}={value!r} here but {conditions.get(key)!r} in the checkpoint"
            for key, value in here.items()
            if value != conditions.get(key)
        ]
    if diffs:
        raise QlitError(
            f"resuming {path} keeps the settings it was trained with, so {'; '.join(diffs)}: "
            "drop the override to resume, or start a new run (without --ckpt_path) to change it"
        )
