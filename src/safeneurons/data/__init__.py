"""Prompt sets and the named public datasets."""

from safeneurons.data.datasets import (
    DATASETS,
    MULTIJAIL_LANGUAGES,
    RESOURCE_GROUPS,
    dataset_file,
    load_prompts,
    read_jsonl_file,
    read_text_file,
)
from safeneurons.data.paths import find_data_dir
from safeneurons.data.prompts import (
    EVAL_SPLITS,
    Prompt,
    PromptSet,
    dedupe,
    eval_split,
    item_key,
    load_prompt_file,
    normalise,
    overlap,
    remove_overlap,
    split,
    split_hash,
    split_of,
)

__all__ = [
    "DATASETS", "EVAL_SPLITS", "MULTIJAIL_LANGUAGES", "RESOURCE_GROUPS", "Prompt", "PromptSet",
    "dataset_file", "dedupe", "eval_split", "find_data_dir", "item_key", "load_prompt_file", "load_prompts",
    "normalise", "overlap", "read_jsonl_file", "read_text_file", "remove_overlap", "split", "split_hash",
    "split_of",
]
