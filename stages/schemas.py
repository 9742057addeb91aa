"""The shard contract (DESIGN.md §3): the columns every stage writes and the next stage relies on.

Each kind lists its *required* columns. Producers may add more (score components, benchmark
fields); readers only check the required ones. Images use the Hugging Face ``Image`` layout, a
struct of ``bytes`` and ``path``, so ``datasets.load_dataset("parquet", ...)`` decodes them.
"""

from __future__ import annotations

import json

import pyarrow as pa

SCHEMA_VERSION = 1

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])

PROMPTS = pa.schema(
    [
        ("id", pa.string()),
        ("prompt", pa.string()),
        ("images", pa.list_(IMAGE)),
        ("answer", pa.string()),
        ("choices", pa.list_(pa.string())),
        ("source", pa.string()),
        ("meta", pa.string()),
    ]
)

ROLLOUTS = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("sample", pa.int32()),
        ("response", pa.string()),
        ("response_ids", pa.list_(pa.int32())),
        ("logprobs", pa.list_(pa.float32())),
        ("finish_reason", pa.string()),
        ("policy_step", pa.int32()),
    ]
)

SCORES = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("sample", pa.int32()),
        ("reward", pa.float32()),
        ("extracted", pa.string()),
    ]
)

EVAL = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("sample", pa.int32()),
        ("response", pa.string()),
        ("extracted", pa.string()),
        ("correct", pa.bool_()),
    ]
)

KINDS: dict[str, pa.Schema] = {
    "prompts": PROMPTS,
    "rollouts": ROLLOUTS,
    "scores": SCORES,
    "eval": EVAL,
}


def _feature(arrow_type: pa.DataType) -> dict:
    """The Hugging Face ``datasets`` feature description of one Arrow type."""
    if arrow_type.equals(IMAGE):
        return {"_type": "Image"}
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        return {"_type": "List", "feature": _feature(arrow_type.value_type)}
    if pa.types.is_struct(arrow_type):
        return {
            arrow_type.field(i).name: _feature(arrow_type.field(i).type)
            for i in range(arrow_type.num_fields)
        }
    dtype = {pa.string(): "string", pa.large_string(): "large_string", pa.bool_(): "bool"}.get(
        arrow_type, str(arrow_type)
    )
    return {"_type": "Value", "dtype": dtype}


def with_hf_features(schema: pa.Schema) -> pa.Schema:
    """Attach the metadata ``datasets`` reads to decode image structs as images."""
    features = {field.name: _feature(field.type) for field in schema}
    metadata = dict(schema.metadata or {})
    metadata[b"huggingface"] = json.dumps({"info": {"features": features}}).encode()
    return schema.with_metadata(metadata)


def check_columns(schema: pa.Schema, kind: str, where: str) -> None:
    """Raise a one-line error naming ``where`` and the first missing or mistyped column."""
    from stages.errors import MgpoError

    for field in KINDS[kind]:
        index = schema.get_field_index(field.name)
        if index < 0:
            raise MgpoError(f"{where}: missing column '{field.name}' required for {kind} shards")
        actual = schema.field(index).type
        if not _compatible(actual, field.type):
            raise MgpoError(
                f"{where}: column '{field.name}' has type {actual}, expected {field.type} ({kind} shards)"
            )


def _compatible(actual: pa.DataType, expected: pa.DataType) -> bool:
    """Loose type check: same family (a float64 reward or an int64 sample is fine)."""
    if actual.equals(expected) or pa.types.is_null(actual):
        return True
    families = (
        pa.types.is_string,
        pa.types.is_integer,
        pa.types.is_floating,
        pa.types.is_boolean,
        pa.types.is_binary,
    )
    for family in families:
        if family(expected):
            return family(actual) or (
                family is pa.types.is_string and pa.types.is_large_string(actual)
            )
    if pa.types.is_list(expected):
        return (pa.types.is_list(actual) or pa.types.is_large_list(actual)) and _compatible(
            actual.value_type, expected.value_type
        )
    if pa.types.is_struct(expected):
        return pa.types.is_struct(actual) and all(
            actual.get_field_index(f.name) >= 0
            and _compatible(actual.field(actual.get_field_index(f.name)).type, f.type)
            for f in expected
        )
    return False
