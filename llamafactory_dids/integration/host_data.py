"""LLaMA-Factory's data path called outside a training run: the repartition step's calls into the host.

Role: host layer (imports llamafactory), like the rest of `integration/`; `repartition/` reads its rows,
tokenizer and template through these functions only, so every host name it relies on is imported here
and listed in `integration.patch` (whose `check_host_versions` `run_repartition` calls first). Flat
arguments: nothing here knows the repartition config.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any


def data_arguments(**fields: Any) -> Any:
    """LLaMA-Factory's `DataArguments` with `fields` set (template, dataset, cutoff_len, ...)."""
    from llamafactory.hparams import DataArguments

    return DataArguments(**fields)


def tokenizer_and_template(
    model_name_or_path: str, trust_remote_code: bool, data_args: Any
) -> tuple[Any, Any]:
    """The tokenizer and the chat template a training run with `data_args` would use."""
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.hparams import ModelArguments
    from llamafactory.model import load_tokenizer

    model_args = ModelArguments(model_name_or_path=model_name_or_path, trust_remote_code=trust_remote_code)
    tokenizer = load_tokenizer(model_args)["tokenizer"]
    return tokenizer, get_template_and_fix_tokenizer(tokenizer, data_args)


def dataset_attrs(names: Sequence[str], dataset_dir: str) -> list[Any]:
    """The `DatasetAttr` of each name, read from `dataset_dir`/dataset_info.json as the host reads it."""
    from llamafactory.data.parser import get_dataset_list

    return get_dataset_list(list(names), dataset_dir)


def file_types() -> dict[str, str]:
    """File extension -> `datasets` loader name, for the local files the host accepts."""
    from llamafactory.extras.constants import FILEEXT2TYPE

    return FILEEXT2TYPE


def align_rows(dataset: Any, attr: Any, data_args: Any) -> Any:
    """`dataset` aligned to the host's `_prompt`/`_response`/... columns by its converter (one row per row).

    The converter reads two fields of TrainingArguments; a stand-in gives them, so no TrainingArguments
    (and no output_dir) is needed.
    """
    from llamafactory.data.converter import align_dataset

    training_args = SimpleNamespace(local_process_index=0, dataloader_num_workers=0)
    return align_dataset(dataset, attr, data_args, training_args)


def sft_row_encoder(template: Any, tokenizer: Any, data_args: Any) -> Callable[[dict[str, Any]], Any]:
    """Encode one aligned row as SFT training does (its supervised processor: prompt tokens masked, the
    template and `cutoff_len` applied) -> (input_ids, labels); keeps rows the host would drop."""
    from llamafactory.data.processor import SupervisedDatasetProcessor

    processor = SupervisedDatasetProcessor(
        template=template, tokenizer=tokenizer, processor=None, data_args=data_args
    )

    def encode(row: dict[str, Any]) -> Any:
        return processor._encode_data_example(
            prompt=row["_prompt"],
            response=row["_response"],
            system=row["_system"],
            tools=row["_tools"],
            images=row["_images"] or [],
            videos=row["_videos"] or [],
            audios=row["_audios"] or [],
        )

    return encode
