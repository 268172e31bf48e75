"""Evaluation of VLMs: the tasks they are scored on and the metrics of `vlmops eval`.

Zero-shot and tiered accuracy, retrieval, calibration and conformal sets, slices with bootstrap
intervals, image and prompt robustness, adversarial and typographic attacks, membership inference and
efficiency; `suite.run_eval` runs the sections a suite asks for and collects one report.
"""
