"""Whether a model's files are in the Hugging Face cache, without loading them (checkpoint files: weights.py)."""

from __future__ import annotations

from prh_bench.plugin import offline


def hub_file_status(repo: str, filenames: tuple[str, ...], revision: str | None = None) -> str:
    from huggingface_hub import try_to_load_from_cache

    for name in filenames:
        if isinstance(try_to_load_from_cache(repo, name, revision=revision), str):
            return "local"
    if not offline():
        return "download"
    return (
        f"unavailable: {repo} is not in the Hugging Face cache (HF_HOME) and the hub is off; run once with the "
        "network (the files are then cached), or point the manifest at local files"
    )
