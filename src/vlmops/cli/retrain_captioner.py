"""`vlmops retrain` for captioners: corrected chat answers + replay -> challenger, registered and gated."""

from __future__ import annotations

from pathlib import Path

import typer

from vlmops.cli._common import EXIT_FAILED_CHECK, results_console, write_json
from vlmops.errors import VlmopsError


def _image_source(archive: Path | None, images: str | None):
    from vlmops.data.manifest import resolve_data
    from vlmops.registry.retrain_generative import FirstOf, ManifestImages
    from vlmops.serve.archive import ImageArchive

    sources = []
    if archive is not None:
        sources.append(ImageArchive(archive))
    if images is not None:
        sources.append(ManifestImages(resolve_data(images)))
    if not sources:
        raise VlmopsError(
            "retraining a captioner needs the chat images: pass --archive (vlmops serve --keep-images) "
            "and/or --images (data whose sha256 column names the files, e.g. emoji)"
        )
    return FirstOf(sources)


def retrain_captioner_command(
    vlm,
    model: str,
    archive: Path | None,
    images: str | None,
    out: Path,
    *,
    data: str,
    replay: int,
    epochs: int,
    lr: float,
    seed: int,
    register_as: str | None,
    gate_split: str | None,
    gate_sample: int,
    rules: str | None,
    feedback_from: str,
    store: str | None,
    json_out: Path | None,
) -> None:
    """Fine-tune, register (parent, data version), gate on captions and questions; exit 1 on a fail."""
    from vlmops.data.manifest import resolve_data
    from vlmops.registry.retrain_generative import CaptionRetrainConfig, retrain_captioner
    from vlmops.registry.store import Registry
    from vlmops.store.log import PredictionLog

    source = _image_source(archive, images)
    manifest = resolve_data(data)
    config = CaptionRetrainConfig(epochs=epochs, lr=lr, seed=seed)
    summary = retrain_captioner(
        vlm, manifest, PredictionLog(store), source, out, config, replay, feedback_from
    )
    uri = f"builtin:emoji-captioner@{out}"
    counts = summary["feedback"]
    if register_as:
        registry = Registry(store)
        if registry.find(vlm.info.version) is None:
            registry.register(vlm.info.version, model, vlm.info.weights_sha256)
        registry.register(
            summary["version"],
            uri,
            summary["weights_sha256"],
            parent=vlm.info.version,
            notes=f"retrained on {counts.get('used', 0)} corrected answers",
        )
        registry.set_alias(register_as, summary["version"], reason="retrained from feedback", evidence=counts)
    results_console.print(
        f"retrained {vlm.info.version} -> {summary['version']} on {counts.get('used', 0)} corrected answers "
        f"+ {summary['replay']} replay questions; feedback: {counts}"
    )
    if gate_split:
        summary["gate"] = _gate(
            vlm, uri, summary, manifest, gate_split, gate_sample, rules, seed, store, register_as
        )
    write_json(summary, json_out)
    if gate_split and not summary["gate"]["passed"]:
        raise typer.Exit(EXIT_FAILED_CHECK)


def _gate(parent, uri, summary, manifest, split, sample, rules, seed, store, attach) -> dict:
    """Captions and questions of the same held-out images, both models, paired gates; both must pass.

    The caption reports are attached to the registry versions, so `vlmops gate --candidate challenger`
    repeats the caption gate from the registry.
    """
    from vlmops.models import load_model
    from vlmops.registry.evaluation import captioner_gate_tasks, generative_report
    from vlmops.registry.gate import gate
    from vlmops.registry.store import Registry

    challenger = load_model(uri)
    decisions, reports = {}, {}
    for task_name, task in captioner_gate_tasks(manifest, split, sample, seed).items():
        base = generative_report(parent, task, store)
        candidate = generative_report(challenger, task, store)
        reports[task_name] = (base, candidate)
        decisions[task_name] = gate(candidate, base, rules or None).to_dict()
        paired = decisions[task_name]["paired"]
        verdict = "[green]passed" if decisions[task_name]["passed"] else "[red]FAILED"
        results_console.print(
            f"gate on {split} ({task_name}, {paired['n']} items, per-item {paired['metric']}): "
            f"{paired['worse']} worse, {paired['better']} better, p_worse {paired['p_worse']:.3g}; {verdict}"
        )
    if attach:
        registry = Registry(store)
        registry.attach_eval(parent.info.version, reports["caption"][0])
        registry.attach_eval(summary["version"], reports["caption"][1])
    return {"passed": all(d["passed"] for d in decisions.values()), **decisions}
