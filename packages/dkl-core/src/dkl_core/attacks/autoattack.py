"""AutoAttack evaluation (Croce and Hein, ICML 2020) on top of the official implementation, ``pyautoattack``.

``pyautoattack`` (an optional extra: ``pip install dkl-core[autoattack]``) is imported only when
an evaluation runs, so ``dkl_core`` itself needs torch alone.

What this wrapper adds to ``AutoAttack.run_standard_evaluation`` and why:

* eval mode and float32 are forced (pyautoattack never calls ``model.eval()``, and FAB writes
  ``1e10`` into tensors, which overflows fp16);
* a per-attack breakdown is returned (pyautoattack only logs it);
* an evaluation can be resumed from its own progress file (pyautoattack's ``state_path`` JSON
  cannot be read back: it stores the attack set as a string), written with ``torch.save`` after
  every chunk, atomically;
* the test set can be split across processes and the result gathered.

The unit of work is a *chunk* of ``batch_size`` consecutive samples: the clean pass and then each
attack of the version in order (APGD-CE, APGD-T, FAB-T, Square for "standard"), every attack on
the samples of the chunk still classified correctly, exactly as pyautoattack's cascade. The
pyautoattack attack objects re-seed with ``seed`` at every call, so a chunk's outcome depends
only on its samples and ``seed``: resumed, split or uninterrupted runs agree, and for a data set
of at most ``batch_size`` samples the result is that of ``run_standard_evaluation`` itself. For
larger sets pyautoattack regroups the survivors of all batches before each attack; we keep the
chunks, which costs some partly filled batches and gives a different (equally valid) random
draw.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from ._checks import check_budget, check_images_labels, warn_if_probabilities
from ._data import EvaluationData, gather_objects, shard, world
from ._evaluation import float32_eval, model_device

PROGRESS_FORMAT = 1
_NORMS = {"linf": "Linf", "l2": "L2"}


@dataclass(frozen=True)
class AutoAttackResult:
    """Outcome of :func:`autoattack_evaluation` (accuracies are fractions in [0, 1]).

    ``per_attack`` maps each attack, in the order run, to the robust accuracy *after* it (the
    cumulative figure pyautoattack logs: the last entry is ``robust_accuracy``). ``robust`` is the
    per-sample flag (correct on the clean image and on every attack).
    """

    clean_accuracy: float
    robust_accuracy: float
    per_attack: dict[str, float]
    num_samples: int
    robust: torch.Tensor = field(repr=False)


def _import_autoattack():  # noqa: ANN202 - the class of an optional dependency
    try:
        import pyautoattack
    except ImportError as error:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "AutoAttack evaluation needs the optional dependency pyautoattack: pip install 'dkl-core[autoattack]'"
        ) from error
    if getattr(pyautoattack, "__version__", None) != "0.2.0":
        warnings.warn(
            f"dkl_core.attacks.autoattack was written against pyautoattack 0.2.0, found "
            f"{getattr(pyautoattack, '__version__', 'unknown')}; check the attack names and attributes",
            UserWarning,
            stacklevel=3,
        )
    return pyautoattack.AutoAttack


def _run_attack(adversary: object, name: str, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """One attack of pyautoattack's cascade on one batch, configured as ``run_standard_evaluation`` does."""
    seed = adversary.get_seed()
    if name in ("apgd-ce", "apgd-dlr"):
        adversary.apgd.loss = "ce" if name == "apgd-ce" else "dlr"
        adversary.apgd.seed = seed
        return adversary.apgd.perturb(images, labels)
    if name == "apgd-t":
        adversary.apgd_targeted.seed = seed
        return adversary.apgd_targeted.perturb(images, labels)
    if name in ("fab", "fab-t"):
        adversary.fab.targeted = name == "fab-t"
        if name == "fab-t":
            adversary.fab.n_restarts = 1
        adversary.fab.seed = seed
        return adversary.fab.perturb(images, labels)
    if name == "square":
        adversary.square.seed = seed
        return adversary.square.perturb(images, labels)
    raise ValueError(f"unknown AutoAttack attack {name!r}")


def _checksum(images: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
    """Cheap fingerprint of a chunk, so a progress file cannot be resumed against other data."""
    return float(images.double().sum()), int((labels.long() * (torch.arange(labels.numel()) % 7 + 1)).sum())


def _rank_path(path: Path, rank: int, world_size: int) -> Path:
    return path if world_size == 1 else path.with_name(f"{path.name}.rank{rank}")


def _load_progress(path: Path, settings: dict) -> dict[int, dict]:
    """Chunk records from ``path`` and any ``path.rank*`` siblings (written by runs with several processes)."""
    records: dict[int, dict] = {}
    candidates = [path, *sorted(path.parent.glob(f"{path.name}.rank*"))] if path.parent.exists() else []
    for candidate in candidates:
        if not candidate.is_file():
            continue
        saved = torch.load(candidate, map_location="cpu", weights_only=True)
        if saved.get("format") != PROGRESS_FORMAT or saved.get("settings") != settings:
            raise ValueError(
                f"the AutoAttack progress file {candidate} was written for other settings "
                f"({saved.get('settings')}), not {settings}; delete it or choose another progress_path"
            )
        records.update(saved["chunks"])
    return records


def _save_progress(path: Path, settings: dict, records: dict[int, dict]) -> None:
    """``torch.save`` to a temporary file, then ``os.replace``: a crash never leaves a half-written file.

    The file is flushed to disk before the rename and the folder after it, so a power cut does not
    either (what ``dkl_train.atomic`` does; dkl-core depends on torch alone).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.tmp{os.getpid()}")
    torch.save({"format": PROGRESS_FORMAT, "settings": settings, "chunks": records}, temporary)
    with open(temporary, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    try:
        folder = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(folder)
    except OSError:
        pass  # some file systems cannot sync a directory; the rename is still atomic
    finally:
        os.close(folder)


def autoattack_evaluation(
    model: nn.Module,
    data: torch.Tensor | Dataset,
    labels: torch.Tensor | None = None,
    *,
    eps: float,
    norm: str = "Linf",
    version: str = "standard",
    batch_size: int = 250,
    seed: int = 0,
    progress_path: str | os.PathLike | None = None,
    attacks: list[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> AutoAttackResult:
    """Clean accuracy, AutoAttack robust accuracy and the per-attack breakdown of ``model``.

    Standard version: APGD-CE, APGD-T (9 target classes), FAB-T (9 targets), Square (5,000
    queries), for L-inf or L2, exactly as configured by ``pyautoattack.AutoAttack(version=...)``.
    The model runs in eval mode and float32 with autocast off (restored afterwards; a half
    precision model is evaluated through a float32 copy). Batches go to the model's device.

    Split across processes: with ``torch.distributed`` initialised, each process takes a
    contiguous block of chunks; the per-sample flags are gathered, so every process returns the
    single-process result. Every process must call this function (it is a collective).

    Resume: with ``progress_path`` the outcome of every finished chunk is saved there (one file
    per process, ``<path>.rank<r>``, when several run); calling again with the same settings and
    data skips the finished chunks. Settings that differ (eps, norm, version, seed, batch size,
    number of samples) or chunks whose data changed raise a ``ValueError``. Delete the file to
    start afresh.

    Args:
        model: returns logits for inputs in ``[0, 1]`` (a model that returns probabilities gets a
            warning, as AutoAttack's own checks give). Pass the unwrapped model
            (``accelerator.unwrap_model``), not a DDP wrapper: the processes evaluate independently.
        data: images ``[N, ...]`` in ``[0, 1]`` (with ``labels``) or a dataset of ``(image, label)``.
        labels: ``[N]`` class indices when ``data`` is a tensor.
        eps: radius, e.g. ``8/255`` (L-inf) or ``0.5`` (L2).
        norm: ``"Linf"`` or ``"L2"`` (case-insensitive).
        version: pyautoattack version, ``"standard"`` (or ``"plus"``/``"rand"``).
        batch_size: samples per chunk and attack batch.
        seed: seed of every attack (pyautoattack's default, the wall clock, would make runs
            irreproducible and resuming inexact).
        progress_path: file to save progress to and resume from (``None``: no file).
        attacks: only with ``version="custom"``: the attacks to run, in order, from
            ``apgd-ce``, ``apgd-dlr``, ``apgd-t``, ``fab``, ``fab-t``, ``square`` (pyautoattack's
            defaults for each); for quick checks, never for reported numbers.
        progress: called with one line after each attack on each chunk of this process (the
            chunk, the attack, the samples still robust, the time spent), and for each chunk
            taken from ``progress_path``; e.g. ``print``. ``None``: silent (AutoAttack's own
            output stays off either way).

    Example:
        >>> result = autoattack_evaluation(model, x_test, y_test, eps=8 / 255)  # doctest: +SKIP
        >>> result.robust_accuracy, result.per_attack  # doctest: +SKIP
        (0.5713, {'apgd-ce': 0.6012, 'apgd-t': 0.5731, 'fab-t': 0.5714, 'square': 0.5713})
    """
    auto_attack_class = _import_autoattack()
    check_budget(eps)
    if str(norm).lower() not in _NORMS:
        raise ValueError(f"norm must be 'Linf' or 'L2', got {norm!r}")
    norm = _NORMS[str(norm).lower()]
    if (version == "custom") != (attacks is not None):
        raise ValueError("pass attacks=[...] exactly when version='custom'")
    source = EvaluationData(data, labels, batch_size)
    rank, world_size = world()
    device = model_device(model)
    settings = {
        "eps": float(eps), "norm": norm, "version": version, "seed": int(seed),
        "batch_size": source.batch_size, "num_samples": source.length,
        "attacks": None if attacks is None else list(attacks),
    }  # fmt: skip
    path = None if progress_path is None else Path(progress_path)
    records = {} if path is None else _load_progress(path, settings)
    mine = shard(source.num_chunks, rank, world_size)
    records = {index: record for index, record in records.items() if index in mine}

    with float32_eval(model) as net:
        options = {} if attacks is None else {"attacks": list(attacks)}
        adversary = auto_attack_class(
            net, eps=float(eps), norm=norm, version=version, device=device, seed=int(seed), **options
        )
        names = list(adversary.attacks_to_run)
        checked = False
        start = time.perf_counter()
        for done, index in enumerate(mine, start=1):
            where = f"chunk {done}/{len(mine)}"
            images, targets = source.chunk(index)
            images, targets = images.to(device=device, dtype=torch.float32), targets.to(device).long()
            checksum = _checksum(images.cpu(), targets.cpu())
            if index in records:
                if records[index]["checksum"] != checksum:
                    raise ValueError(
                        f"chunk {index} of the data differs from the one recorded in {path}; "
                        "delete the progress file to evaluate these data"
                    )
                if progress is not None:
                    progress(f"{where}: done before, taken from {path}")
                continue
            check_images_labels(images, targets)
            if not checked:
                _run_checks(net, images, targets, names, adversary)
                checked = True
            report = None
            if progress is not None:

                def report(name: str, robust: int, total: int, where: str = where) -> None:
                    elapsed = time.perf_counter() - start
                    progress(f"{where}: after {name}, {robust}/{total} still robust ({elapsed:.0f} s so far)")

            records[index] = _evaluate_chunk(net, adversary, names, images, targets, eps, norm, report)
            records[index]["checksum"] = checksum
            if path is not None:
                _save_progress(_rank_path(path, rank, world_size), settings, records)

    merged: dict[int, dict] = {}
    for part in gather_objects(records):
        merged.update(part)
    order = range(source.num_chunks)
    clean = torch.cat([merged[i]["clean"] for i in order])
    after = {name: torch.cat([merged[i]["after"][name] for i in order]) for name in names}
    n = source.length
    return AutoAttackResult(
        clean_accuracy=int(clean.sum()) / n,
        robust_accuracy=int(after[names[-1]].sum()) / n,
        per_attack={name: int(flags.sum()) / n for name, flags in after.items()},
        num_samples=n,
        robust=after[names[-1]].clone(),
    )


def _run_checks(
    net: nn.Module, images: torch.Tensor, labels: torch.Tensor, attacks: list[str], adversary: object
) -> None:
    """AutoAttack's own sanity checks (randomised/dynamic defences, class count) plus our logits check, as warnings."""
    from pyautoattack import checks

    with torch.no_grad():
        warn_if_probabilities(net(images))
    checks.check_randomized(net, images, labels, bs=images.shape[0])
    checks.check_dynamic(net, images, False)
    with torch.no_grad():
        num_classes = net(images[:1]).shape[-1]
    checks.check_n_classes(
        num_classes, attacks, adversary.apgd_targeted.n_target_classes, adversary.fab.n_target_classes
    )


def _evaluate_chunk(
    net: nn.Module,
    adversary: object,
    attacks: list[str],
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    norm: str,
    report: Callable[[str, int, int], None] | None = None,
) -> dict:
    """Clean pass, then each attack on the still-robust samples of the chunk; flags after each step (on CPU).

    ``report(stage, robust, samples)`` after the clean pass and after each attack.
    """
    with torch.no_grad():
        robust = net(images).argmax(dim=1) == labels
        record = {"clean": robust.cpu().clone(), "after": {}}
        if report is not None:
            report("the clean pass", int(robust.sum()), labels.numel())
        for name in attacks:
            remaining = robust.nonzero().flatten()
            if remaining.numel() > 0:
                adv = _run_attack(adversary, name, images[remaining], labels[remaining])
                _check_perturbation(adv, images[remaining], eps, norm, name)
                fooled = net(adv).argmax(dim=1) != labels[remaining]
                robust[remaining[fooled]] = False
            record["after"][name] = robust.cpu().clone()
            if report is not None:
                report(name, int(record["after"][name].sum()), labels.numel())
    return record


def _check_perturbation(adv: torch.Tensor, images: torch.Tensor, eps: float, norm: str, name: str) -> None:
    """Refuse adversarial images outside the threat model (the check AutoAttack only logs)."""
    delta = (adv - images).flatten(1)
    size = delta.abs().amax(dim=1) if norm == "Linf" else delta.norm(dim=1)
    if bool(torch.isnan(adv).any()) or float(size.max()) > eps * (1 + 1e-4) + 1e-6:
        raise RuntimeError(f"{name} returned images outside the {norm} ball of radius {eps} (max {float(size.max())})")
    if float(adv.min()) < 0 or float(adv.max()) > 1:
        raise RuntimeError(f"{name} returned images outside [0, 1]")
