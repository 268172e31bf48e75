"""The closed loop on the embedded defaults: serve -> shift -> detect -> feedback -> retrain -> gate ->
canary -> promote, and a bad challenger rolled back by its own canary alert.

Everything runs in one process against the real gateway app (FastAPI's TestClient, no sockets), the
real prediction log, monitor, registry and retraining code, in a fresh work folder. Traffic replays
emoji test images in phases: google/twitter first (what the model was trained on), then
facebook/openmoji drawings plus low-contrast copies (the shift). Feedback comes from the known labels,
as a user correcting the model would give it; a tenth more arrives marked as a model's opinion and
must be refused by the retraining guard. Verdicts on the other phases' answers arrive at the end (after
the retrain, so the gate's held-out images never become training data), and the dashboard's realised
accuracy per monitoring pass is computed from them.

Lineage: every version the loop registers records the data version it was trained or retrained on
(from its model card), and the gate's eval reports, each naming the data version it measured, are
attached to the champion and the challenger.
"""

from __future__ import annotations

import base64
import copy
import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from fastapi.testclient import TestClient
from PIL import Image

from vlmops.data.images import load_image
from vlmops.data.manifest import resolve_data
from vlmops.evaluate.corruptions import corrupt
from vlmops.evaluate.task import build_task
from vlmops.models import load_model
from vlmops.monitor.alerts import AlertConfig, AlertRule, AlertStore, evaluate_rules
from vlmops.monitor.run import Reference, run_monitor
from vlmops.registry.evaluation import eval_report
from vlmops.registry.gate import gate
from vlmops.registry.retrain import RetrainConfig, retrain_from_feedback, save_retrained
from vlmops.registry.store import Registry
from vlmops.serve.app import create_app
from vlmops.serve.archive import ImageArchive
from vlmops.serve.decode import decode_and_describe
from vlmops.serve.limits import Limits
from vlmops.serve.resources import LabelSet
from vlmops.serve.service import Gateway, ServeConfig
from vlmops.store.log import PredictionLog

TEMPLATE = "an emoji of {}"


@dataclass(frozen=True)
class DemoSizes:
    """How much traffic each phase replays (the test uses smaller numbers)."""

    reference: int = 300
    healthy: int = 200
    shifted: int = 400
    corrupted: int = 100
    held_out: int = 400
    canary: int = 200
    replay: int = 512
    epochs: int = 3


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


class Loop:
    """State shared by the phases: data, label set, store, registry, the current champion."""

    def __init__(self, workdir: Path, sizes: DemoSizes, say: Callable[[str], None], seed: int = 0) -> None:
        self.workdir, self.sizes, self.say = workdir, sizes, say
        self.store = str(workdir / "store.sqlite")
        self.archive = workdir / "archive"
        self.task = build_task(resolve_data("emoji"), "emoji", "all", "concept")
        frame = self.task.frame
        self.names = tuple(self.task.class_names)
        self.label_set = LabelSet("emoji", self.names, TEMPLATE)
        index = {c: i for i, c in enumerate(self.task.classes)}
        self.truth = np.array([index[label] for label in self.task.labels])
        rng = np.random.default_rng(seed)
        test = (frame["split"] == "test").to_numpy()
        vendor = frame["vendor"].to_numpy()
        old = rng.permutation(np.flatnonzero(test & np.isin(vendor, ["google", "twitter"])))
        new = rng.permutation(np.flatnonzero(test & np.isin(vendor, ["facebook", "openmoji"])))
        s = sizes
        self.rows = {
            "reference": old[: s.reference],
            "healthy": old[s.reference : s.reference + s.healthy],
            "corrupted": old[s.reference + s.healthy : s.reference + s.healthy + s.corrupted],
            "shifted": new[: s.shifted],
            "held_out": new[s.shifted : s.shifted + s.held_out],
        }
        self.registry = Registry(self.store, artifacts=workdir / "registry")
        self.alerts = AlertStore(self.store)
        self.log = PredictionLog(self.store)
        self.results: dict = {"phases": []}
        self.answered: list[dict] = []  # every classify answer, in order
        self.judged: set[str] = set()  # request ids a user has given feedback on

    # -- building blocks ---------------------------------------------------------------------------
    def gateway(self, model, canary=None, share: float = 0.5) -> Gateway:
        config = ServeConfig(
            store=self.store,
            keep_images=str(self.archive),
            template=TEMPLATE,
            canary_share=share,
            follow_registry_s=0.3,
        )
        gateway = Gateway(model, config, PredictionLog(self.store), {"emoji": self.label_set})
        if canary is not None:
            gateway.attach(
                "canary", Gateway(canary, config, PredictionLog(self.store), {"emoji": self.label_set})
            )
        return gateway

    def register_built(self, path: Path, parent):
        """Load the model trained into `path` and register it as a child of `parent`."""
        uri = f"builtin:emoji-lit@{path}"
        model = load_model(uri)
        self.registry.register(model.info.version, uri, model.info.weights_sha256, parent=parent.info.version)
        return model

    def image(self, row: int, corrupted: bool = False) -> bytes:
        image = load_image(self.task.frame["image"][row])
        return _png(corrupt(image, "contrast", 3, seed=row) if corrupted else image)

    def send(self, client: TestClient, rows, corrupted: bool = False) -> list[dict]:
        answers = []
        for row in rows:
            body = {"image": base64.b64encode(self.image(row, corrupted)).decode(), "label_set": "emoji"}
            # a route key per image: the canary's half of the traffic is the same on every run
            r = client.post("/v1/classify", json=body, headers={"X-Route-Key": f"user-{row}"})
            r.raise_for_status()
            answers.append({**r.json(), "row": int(row)})
        self.answered += answers
        return answers

    def give_feedback(self, client: TestClient, answers: list[dict], model_opinions: bool = False) -> int:
        """Users' verdicts (from the known labels) on answers not yet judged; with `model_opinions`, every
        tenth also gets an auto-labeller's acceptance (source "model"), which retraining must refuse."""
        given = 0
        for i, answer in enumerate(answers):
            if answer["request_id"] in self.judged:
                continue
            truth = self.names[self.truth[answer["row"]]]
            right = answer["label"] == truth
            body = {"request_id": answer["request_id"], "accepted": right, "label": None if right else truth}
            client.post("/v1/feedback", json=body).raise_for_status()
            self.judged.add(answer["request_id"])
            given += 1
            if model_opinions and i % 10 == 0:
                body = {"request_id": answer["request_id"], "accepted": True, "source": "model"}
                client.post("/v1/feedback", json=body).raise_for_status()
        return given

    def reference(self, model) -> Reference:
        rows = self.rows["reference"]
        emb = model.embed_images([load_image(self.task.frame["image"][i]) for i in rows])
        class_emb = model.embed_texts(self.label_set.prompts())
        # statistics of the images as the clients send them (re-encoded PNG), like the server logs them
        stats = [decode_and_describe(self.image(i), Limits())[1] for i in rows]
        return Reference(
            emb.astype(np.float64),
            self.truth[rows],
            class_emb.astype(np.float64),
            model.logit_scale,
            image_stats=stats,
        )

    def monitor(
        self, phase: str, model, reference: Reference, rules: AlertConfig, answers: list[dict]
    ) -> dict:
        """One monitoring pass over the requests this model answered in the phase."""
        scored = [a for a in answers if a["model_version"] == model.info.version]
        report = run_monitor(self.log, model.info.version, reference, len(scored))
        fired = evaluate_rules(rules, report.metrics, report.n, self.alerts, model.info.version)
        realised = (
            float(np.mean([a["label"] == self.names[self.truth[a["row"]]] for a in scored]))
            if scored
            else None
        )
        m = report.metrics
        summary = {
            "phase": phase,
            "model": model.info.version,
            "requests": len(scored),
            "mmd_p": m["drift.mmd.p_value"],
            "prediction_shift_p": m["drift.prediction_shift.p_value"],
            "image_stats_p": m.get("drift.image_stats.p_value"),
            "estimated_accuracy": m["estimate.atc"],
            "realised_accuracy": realised,
            "alerts": [a["rule"] for a in fired],
        }
        self.results["phases"].append(summary)
        est = "n/a" if realised is None else f"{realised:.3f}"
        self.say(
            f"  {phase}: MMD p = {summary['mmd_p']:.3g}, "
            f"estimated accuracy {summary['estimated_accuracy']:.3f} "
            f"(realised {est}), alerts: {', '.join(summary['alerts']) or 'none'}"
        )
        return summary

    def evaluate(self, model) -> dict:
        """Per-item outcomes and headline metrics on the held-out shifted images plus old-vendor images."""
        rows = np.concatenate([self.rows["held_out"], self.rows["healthy"]])
        frame = self.task.frame.iloc[rows].assign(split="test")
        return eval_report(model, build_task(frame, "emoji", "test", "concept"), ["vendor"], self.store)


def bad_challenger(model, out: Path) -> None:
    """A broken model: the image tower's weights shuffled within each tensor (a botched export, say)."""
    generator = torch.Generator().manual_seed(0)
    tower = copy.deepcopy(model.tower)
    with torch.no_grad():
        for param in tower.parameters():
            flat = param.view(-1)
            flat.copy_(flat[torch.randperm(flat.numel(), generator=generator)])
    save_retrained(model, tower, out, {"note": "deliberately broken for the rollback demo"})


def run_loop(workdir: Path, sizes: DemoSizes = DemoSizes(), say: Callable[[str], None] = print) -> dict:
    """Every phase of the loop; returns the story's numbers (also the HTML report's context)."""
    started = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    loop = Loop(workdir, sizes, say)
    champion = load_model("builtin:emoji-lit")
    loop.registry.register(champion.info.version, "builtin:emoji-lit", champion.info.weights_sha256)
    loop.registry.promote(champion.info.version, reason="shipped model")
    reference = loop.reference(champion)
    ref_accuracy = float(
        (np.argmax(reference.image_emb @ reference.class_emb.T, 1) == reference.targets).mean()
    )
    accuracy_rule = AlertRule(
        "estimated accuracy drop", "estimate.atc", "<", round(0.75 * ref_accuracy, 4), 20
    )
    rules = AlertConfig(
        (
            AlertRule("embedding drift", "drift.mmd.p_value", "<", 0.01, 20),
            AlertRule("image statistics drift", "drift.image_stats.p_value", "<", 0.01, 20),
            accuracy_rule,
        )
    )
    # The world has shifted, so a canary is judged on estimated accuracy alone, at half the reference level:
    # a canary sees half of the users (route keys), so its estimate differs from the whole traffic's by a few
    # points, while a broken model's is near zero. At 0.75 a healthy canary (0.21-0.52 seen) came close.
    canary_rules = AlertConfig(
        (AlertRule("estimated accuracy drop", "estimate.atc", "<", round(0.5 * ref_accuracy, 4), 20),)
    )
    say(f"1. serving {champion.info.version} (reference accuracy {ref_accuracy:.3f} on google/twitter)")
    with TestClient(create_app(loop.gateway(champion))) as client:
        answers = loop.send(client, loop.rows["healthy"])
        loop.monitor("healthy traffic", champion, reference, rules, answers)
        say("2. the traffic shifts: facebook/openmoji drawings and low-contrast images")
        shifted = loop.send(client, loop.rows["shifted"]) + loop.send(client, loop.rows["corrupted"], True)
        loop.monitor("shifted traffic", champion, reference, rules, shifted)
        say("3. users correct the model's answers (and an auto-labeller sends its own guesses)")
        loop.give_feedback(client, shifted[: sizes.shifted], model_opinions=True)
    say("4. retrain on human-verified feedback plus replay of the training data")
    config = RetrainConfig(epochs=sizes.epochs)
    retrained = retrain_from_feedback(
        champion,
        loop.task,
        loop.log,
        ImageArchive(loop.archive),
        workdir / "challenger",
        config,
        sizes.replay,
    )
    challenger = loop.register_built(workdir / "challenger", parent=champion)
    loop.registry.set_alias("challenger", challenger.info.version, reason="retrained from feedback")
    loop.results["retrain"] = {k: retrained[k] for k in ("version", "feedback", "replay", "history")}
    say(f"   {challenger.info.version}: feedback {retrained['feedback']}, replay {retrained['replay']}")
    say("5. gate: challenger vs champion on held-out images (new vendors and old)")
    base_report, cand_report = loop.evaluate(champion), loop.evaluate(challenger)
    loop.registry.attach_eval(champion.info.version, base_report)  # model -> report lineage
    loop.registry.attach_eval(challenger.info.version, cand_report)
    decision = gate(cand_report, base_report, "top1_drop<=0.01,worst_slice_drop<=0.02,ece_increase<=0.05")
    loop.results["gate"] = {
        "passed": decision.passed,
        **decision.to_dict(),
        "champion_top1": base_report["headline"]["top1"],
        "challenger_top1": cand_report["headline"]["top1"],
    }
    say(
        f"   top-1 {base_report['headline']['top1']:.3f} -> {cand_report['headline']['top1']:.3f}; "
        f"gate {'passed' if decision.passed else 'FAILED'}"
    )
    if decision.passed:
        say("6. canary: the challenger answers half of the traffic")
        loop.registry.set_alias("canary", challenger.info.version, reason="gate passed")
        with TestClient(create_app(loop.gateway(champion, canary=challenger))) as client:
            answers = loop.send(client, loop.rows["held_out"][: sizes.canary])
        canary_ref = loop.reference(challenger)
        summary = loop.monitor("canary", challenger, canary_ref, canary_rules, answers)
        if not summary["alerts"]:
            loop.registry.promote(challenger.info.version, reason="canary healthy")
            loop.registry.clear_alias("canary", kind="promote", reason="promoted")
            champion = challenger
            say(f"   no alert: {challenger.info.version} promoted to champion")
    say("7. a bad challenger goes out as canary and is rolled back by its own alert")
    bad_challenger(champion, workdir / "bad")
    bad = loop.register_built(workdir / "bad", parent=champion)
    loop.registry.set_alias("canary", bad.info.version, reason="bad build (demo)")
    with TestClient(create_app(loop.gateway(champion, canary=bad))) as client:
        answers = loop.send(client, loop.rows["held_out"][: sizes.canary])
        summary = loop.monitor("bad canary", bad, loop.reference(bad), canary_rules, answers)
        if summary["alerts"]:
            loop.registry.clear_alias(
                "canary", kind="rollback", reason="alert: " + ", ".join(summary["alerts"])
            )
            time.sleep(1.0)  # the gateway follows the registry every 0.3 s
        after = loop.send(client, loop.rows["healthy"][:40])
    loop.results["rollback"] = {
        "alerts": summary["alerts"],
        "after": sorted({a["model_version"] for a in after}),
    }
    say(
        f"   alerts {summary['alerts']}; "
        f"afterwards every answer comes from {loop.results['rollback']['after']}"
    )
    say("8. the other users' verdicts arrive: realised accuracy for every monitoring pass")
    with TestClient(create_app(loop.gateway(champion))) as client:
        late = loop.give_feedback(client, loop.answered)
    loop.results["late_feedback"] = late
    loop.results["champion"] = champion.info.version
    loop.results["lineage"] = lineage(loop.registry)
    loop.results["history"] = loop.registry.history()
    loop.results["seconds"] = time.perf_counter() - started
    return loop.results


def lineage(registry: Registry) -> list[dict]:
    """Per registered version: the data it was trained on, its parent, and the data its report measured."""
    rows = []
    for version in registry.list():
        report = registry.get(version["version"])["eval_report"]
        rows.append(
            {
                "version": version["version"],
                "parent": version["parent"],
                "data_version": version["data_version"],
                "eval_data_version": (report or {}).get("data", {}).get("dataset_version"),
                "eval_top1": (report or {}).get("headline", {}).get("top1"),
            }
        )
    return rows


def write_story(
    results: dict,
    store: str,
    path: Path,
    generative: dict | None = None,
    generative_skipped: str = "the generative act was not run (vlmops demo --no-generative)",
) -> Path:
    """The demo's HTML story: what happened per phase, the gate, the rollback, the generative act
    (`run_generative_act`'s results, or why it did not run), and the dashboard."""
    from vlmops.demo.story_generative import generative_story
    from vlmops.monitor.dashboard import dashboard_context
    from vlmops.report.html import render, write_html

    context = dashboard_context(store)
    context["title"] = "vlmops demo: the closed loop"
    context["subtitle"] = "serve, detect a shift, retrain from feedback, gate, canary, promote, roll back"
    story = [{"id": "story", "title": "Story"}, {"id": "generative-act", "title": "Generative act"}]
    context["sections"] = [*story, *context["sections"]]
    act = generative_story(generative, generative_skipped)
    return write_html(render("demo.html.j2", story=results, generative_act=act, **context), path)
