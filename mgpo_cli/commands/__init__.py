"""One module per CLI command; each holds a Typer function and nothing else of substance."""
