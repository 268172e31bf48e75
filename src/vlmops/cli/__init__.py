"""The `vlmops` command: typer sub-apps composed here; each group lives in its own module."""

from __future__ import annotations

import typer

from vlmops.cli import audit, data, demo, embed, evaluate, export, models, monitor, registry, serve, train

app = typer.Typer(
    name="vlmops",
    help="Run a vision-language model in production without flying blind.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
app.add_typer(data.app, name="data")
app.add_typer(models.app, name="models")
app.add_typer(audit.app, name="audit")
app.command("train")(train.train)
app.command("embed")(embed.embed)
app.command("demo")(demo.demo)
app.command("eval")(evaluate.evaluate)
app.command("export")(export.export)
app.command("serve")(serve.serve)
app.command("calibrate")(serve.calibrate)
app.add_typer(serve.keys_app, name="keys")
app.add_typer(serve.index_app, name="index")
app.add_typer(registry.app, name="registry")
app.command("gate")(registry.gate)
app.command("retrain")(registry.retrain)
app.add_typer(monitor.app, name="monitor")


def main() -> None:
    """Console-script entry point."""
    app()
