"""The generative act of `vlmops demo`: the same loop for a model that answers in words.

`builtin:emoji-captioner` answers OpenAI chat requests ("Describe this emoji.") through the real gateway
app (TestClient, no sockets), every exchange logged with the image kept. Traffic: google/twitter test
emoji (what the captioner was trained on), then OpenMoji drawings (the shift). Before any human label,
`monitor.generative` compares the two windows: the judge (builtin:emoji-lit) sees answers drift away
from their images (grounding falls) and its hallucination estimate rise. People then correct the
answers through /v1/feedback; `retrain_captioner` fine-tunes the decoder on those corrections plus
replay; the generative gate pairs champion and challenger on held-out images (Wilcoxon on per-image
scores); the challenger answers half of new traffic as a canary and is promoted when people reject its
answers no more often than the champion's (`registry.canary.canary_check`). Last, a broken captioner
goes out as canary and is rolled back by the same check.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from vlmops.data.manifest import resolve_data
from vlmops.evaluate.text_metrics import caption_tokens, rouge_l
from vlmops.models import load_model
from vlmops.models.captioner import save_captioner
from vlmops.monitor.chat_frame import chat_windows
from vlmops.monitor.generative import GenerativeConfig, generative_section
from vlmops.registry.canary import canary_check
from vlmops.registry.evaluation import captioner_gate_tasks, generative_report
from vlmops.registry.gate import gate
from vlmops.registry.retrain_generative import CaptionRetrainConfig, retrain_captioner
from vlmops.registry.store import Registry
from vlmops.serve.archive import ImageArchive
from vlmops.serve.service import Gateway, ServeConfig
from vlmops.store.cache import EmbeddingCache
from vlmops.store.log import PredictionLog

PROMPT = "Describe this emoji."
WATCHED = ("grounding", "hallucination", "answer_embedding")


@dataclass(frozen=True)
class GenerativeSizes:
    """Exchanges per phase (the test uses smaller numbers)."""

    healthy: int = 120
    shifted: int = 120
    canary: int = 80
    gate_sample: int = 120
    replay: int = 512
    epochs: int = 4
    min_feedback: int = 15


class ChatAct:
    """Store, registry, data and the served traffic of the generative act."""

    def __init__(self, workdir: Path, sizes: GenerativeSizes, say: Callable[[str], None], seed: int = 0):
        self.workdir, self.sizes, self.say = workdir, sizes, say
        self.store = str(workdir / "store.sqlite")
        self.archive = workdir / "archive"
        self.registry = Registry(self.store, artifacts=workdir / "registry")
        self.log = PredictionLog(self.store)
        manifest = resolve_data("emoji")
        test = manifest[manifest["split"] == "test"]
        rng = np.random.default_rng(seed)
        old = test[test["vendor"].isin(["google", "twitter"])]
        new = test[test["vendor"] == "openmoji"]
        new = new.iloc[rng.permutation(len(new))]
        s = sizes
        self.rows = {
            "healthy": old.iloc[rng.permutation(len(old))[: s.healthy]],
            "shifted": new.iloc[: s.shifted],
            "canary": new.iloc[s.shifted : s.shifted + s.canary],
            "broken": new.iloc[s.shifted + s.canary : s.shifted + 2 * s.canary],
        }
        used = pd.concat(list(self.rows.values()))
        self.manifest = manifest
        # gate only: images no phase served (other skin-tone variants of a served concept may be among them,
        # so the gate's gain includes concepts people corrected, as returning users would see them)
        self.held_out = test[(test["vendor"] == "openmoji") & ~test["id"].isin(used["id"])]
        self.results: dict = {"phases": []}

    def gateway(self, model, canary=None) -> Gateway:
        config = ServeConfig(
            store=self.store, keep_images=str(self.archive), canary_share=0.5, follow_registry_s=0.3
        )
        gateway = Gateway(model, config, PredictionLog(self.store), {})
        if canary is not None:
            gateway.attach("canary", Gateway(canary, config, PredictionLog(self.store), {}))
        return gateway

    def send(self, client, rows: pd.DataFrame) -> list[dict]:
        """One chat request per emoji (greedy); what each answer was and who answered it."""
        answers = []
        for row in rows.itertuples():
            image = "data:image/png;base64," + base64.b64encode(Path(row.image).read_bytes()).decode()
            parts = [{"type": "text", "text": PROMPT}, {"type": "image_url", "image_url": {"url": image}}]
            body = {
                "model": "emoji-captioner",
                "messages": [{"role": "user", "content": parts}],
                "max_tokens": 16,
                "temperature": 0,
            }
            r = client.post("/v1/chat/completions", json=body, headers={"X-Route-Key": f"user-{row.id}"})
            r.raise_for_status()
            answers.append(
                {
                    "request_id": r.json()["id"],
                    "answer": r.json()["choices"][0]["message"]["content"],
                    "truth": row.name,
                    "model_version": r.headers["x-model-version"],
                }
            )
        return answers

    def correct(self, client, answers: list[dict]) -> int:
        """People's verdicts: an answer that says most of the emoji's name (ROUGE-L F >= 0.5) is accepted,
        any other is corrected with the name."""
        wrong = 0
        for a in answers:
            right = acceptable(a["answer"], a["truth"])
            verdict = {"accepted": True, "rating": 5} if right else {"answer": a["truth"], "rating": 1}
            wrong += not right
            body = {"request_id": a["request_id"], **verdict}
            client.post("/v1/feedback", json=body).raise_for_status()
        return wrong

    def monitor(self, name: str, version: str, shift_at: float, judge) -> dict:
        """The generative detectors on (healthy, current) windows of `version`; no human label needed."""
        reference, current = chat_windows(self.log, version, self.sizes.healthy, reference_until=shift_at)
        frame = pd.concat([self.rows["healthy"], self.rows["shifted"]])
        vocabulary = {caption_tokens(t): [] for tags in frame["tags"] for t in tags} or None
        config = GenerativeConfig(
            judge=judge, cache=EmbeddingCache(self.store), images=self.archive, vocabulary=vocabulary
        )
        metrics, results = generative_section(reference, current, config)
        detectors = {}
        for d in WATCHED:
            found = {k: metrics.get(f"generative.{d}.{k}") for k in ("p_value", "reference", "window")}
            detectors[d] = {k: v for k, v in found.items() if v is not None}
            if d in results["detectors"] and "skipped" in results["detectors"][d]:
                detectors[d]["skipped"] = results["detectors"][d]["skipped"]
        summary = {
            "phase": name,
            "n": len(current),
            "detectors": detectors,
            "drifted": sorted(
                d for d in results["detectors"] if metrics.get(f"generative.{d}.drifted") == 1.0
            ),
        }
        self.results["phases"].append(summary)
        return summary


def acceptable(answer: str, name: str) -> bool:
    """Whether a person would let `answer` stand for the emoji called `name`."""
    return float(rouge_l([caption_tokens(answer)], [[caption_tokens(name)]])[0]) >= 0.5


def broken_captioner(model, out: Path, seed: int = 0) -> None:
    """A bad build: the decoder's weights scrambled with noise, saved as a captioner."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.decoder.parameters():
            parameter.add_(
                torch.randn(parameter.shape, generator=generator) * parameter.std().clamp_min(0.05)
            )
    save_captioner(model.decoder, model.tokenizer, {**model.card, "note": "broken on purpose (demo)"}, out)


def run_generative_act(
    workdir: Path, sizes: GenerativeSizes = GenerativeSizes(), say: Callable[[str], None] = print
) -> dict:
    """Serve -> shift -> detect without labels -> corrections -> retrain -> gate -> canary -> promote, and a
    broken canary rolled back; returns the numbers of the story."""
    from fastapi.testclient import TestClient

    from vlmops.serve.app import create_app

    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    act = ChatAct(workdir, sizes, say)
    act.results["traffic"] = {phase: len(rows) for phase, rows in act.rows.items()}
    judge = load_model("builtin:emoji-lit")
    champion = load_model("builtin:emoji-captioner")
    act.registry.register(champion.info.version, "builtin:emoji-captioner", champion.info.weights_sha256)
    act.registry.promote(champion.info.version, reason="shipped captioner")
    act.results["shipped"] = champion.info.version
    say(f"G1. serving {champion.info.version} on /v1/chat/completions (google/twitter emoji)")
    with TestClient(create_app(act.gateway(champion))) as client:
        act.send(client, act.rows["healthy"])
        shift_at = time.time()
        say("G2. the traffic shifts to OpenMoji drawings")
        shifted = act.send(client, act.rows["shifted"])
        summary = act.monitor("shifted chat traffic", champion.info.version, shift_at, judge)
        flagged = ", ".join(summary["drifted"]) or "nothing"
        say(f"    before any label, the generative monitor flags: {flagged}")
        for d, r in summary["detectors"].items():
            if "reference" in r:
                say(f"    {d}: {r['reference']:.3f} -> {r['window']:.3f} (p {r['p_value']:.3g})")
        say("G3. people correct the wrong answers through /v1/feedback")
        corrected = act.correct(client, shifted)
    act.results["corrected"] = corrected
    say(f"    {corrected} of {len(shifted)} answers corrected")
    say("G4. retrain the captioner's decoder on the corrections plus replay")
    out = workdir / "challenger"
    retrained = retrain_captioner(
        champion,
        act.manifest,
        act.log,
        ImageArchive(act.archive),
        out,
        CaptionRetrainConfig(epochs=sizes.epochs),
        sizes.replay,
        feedback_from="any",  # the demo's gateway runs without keys; every verdict is a person's
    )
    challenger = load_model(f"builtin:emoji-captioner@{out}")
    act.registry.register(
        challenger.info.version, f"builtin:emoji-captioner@{out}", challenger.info.weights_sha256,
        parent=champion.info.version,
    )  # fmt: skip
    act.results["retrain"] = {k: retrained[k] for k in ("version", "feedback", "replay")}
    say("G5. gate: challenger vs champion on held-out OpenMoji images (paired, per image)")
    task = captioner_gate_tasks(act.held_out, "all", sizes.gate_sample)["caption"]
    base, cand = generative_report(champion, task, act.store), generative_report(challenger, task, act.store)
    decision = gate(cand, base).to_dict()
    paired = decision["paired"]
    act.results["gate"] = {
        "passed": decision["passed"],
        "champion_cider": base["headline"]["cider_d"],
        "challenger_cider": cand["headline"]["cider_d"],
        "better": paired["better"],
        "worse": paired["worse"],
        "p_worse": paired["p_worse"],
        "p_better": paired.get("p_better"),
    }
    say(
        f"    CIDEr-D {base['headline']['cider_d']:.3f} -> {cand['headline']['cider_d']:.3f}; "
        f"{paired['better']} images better, {paired['worse']} worse; "
        f"gate {'passed' if decision['passed'] else 'FAILED'}"
    )
    if decision["passed"]:
        say("G6. canary: the challenger answers half of the new traffic; people judge both sides")
        act.registry.set_alias("canary", challenger.info.version, reason="gate passed")
        since = time.time()
        with TestClient(create_app(act.gateway(champion, canary=challenger))) as client:
            act.correct(client, act.send(client, act.rows["canary"]))
        check = canary_check(
            act.log, challenger.info.version, champion.info.version, min_feedback=sizes.min_feedback,
            since=since,
        ).to_dict()  # fmt: skip
        act.results["canary"] = check
        say(f"    rejected: {check['rejected']} of {check['judged']}")
        if check["enough"] and not check["worse"]:
            act.registry.promote(challenger.info.version, reason="canary no worse than the champion")
            act.registry.clear_alias("canary", kind="promote", reason="promoted")
            champion = challenger
            say(f"    {challenger.info.version} promoted to champion")
    say("G7. a broken captioner goes out as canary and is rolled back by the same check")
    broken_captioner(load_model(champion.info.uri), workdir / "broken")
    bad = load_model(f"builtin:emoji-captioner@{workdir / 'broken'}")
    act.registry.register(
        bad.info.version, bad.info.uri, bad.info.weights_sha256, parent=champion.info.version
    )
    act.registry.set_alias("canary", bad.info.version, reason="bad build (demo)")
    since = time.time()
    with TestClient(create_app(act.gateway(champion, canary=bad))) as client:
        act.correct(client, act.send(client, act.rows["broken"]))
        check = canary_check(
            act.log, bad.info.version, champion.info.version, min_feedback=sizes.min_feedback, since=since
        ).to_dict()
        if check["worse"]:
            act.registry.clear_alias("canary", kind="rollback", reason="people reject its answers more often")
            time.sleep(1.0)  # the gateway follows the registry every 0.3 s
        after = act.send(client, act.rows["healthy"][:20])
    act.results["rollback"] = {
        "check": check,
        "rolled_back": bool(check["worse"]),
        "after": sorted({a["model_version"] for a in after}),
    }
    say(f"    rejected {check['rejected']} of {check['judged']}; afterwards answers come from "
        f"{act.results['rollback']['after']}")  # fmt: skip
    act.results["champion"] = champion.info.version
    act.results["seconds"] = time.perf_counter() - started
    return act.results
