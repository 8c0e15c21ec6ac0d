#!/usr/bin/env python3
"""Writes the safetensors parser corpus: malformed and valid files, each with the error
fragment the parser must report (EXPECTED.json). The files are committed; rerun this
after changing the cases. They also seed the libFuzzer targets."""
import json
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "corpus")


def st(header, data_bytes, length=None):
    """A safetensors file: u64 LE header length, header text, data."""
    h = header if isinstance(header, bytes) else json.dumps(header, separators=(",", ":")).encode()
    n = len(h) if length is None else length
    return struct.pack("<Q", n) + h + b"\x5a" * data_bytes


def t(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


CASES = {
    "good_single.safetensors": (st({"a": t("F32", [2, 2], 0, 16)}, 16), "ok"),
    "good_metadata.safetensors": (
        st({"__metadata__": {"format": "pt"}, "w": t("BF16", [3], 0, 6), "b": t("U8", [1], 6, 7)}, 7), "ok"),
    "good_empty.safetensors": (st({}, 0), "ok"),
    "bad_truncated_prefix.safetensors": (b"\x10\x00\x00", "too short"),
    "bad_truncated_header.safetensors": (st({"a": t("U8", [4], 0, 4)}, 4)[:20], "runs past the end"),
    "bad_truncated_data.safetensors": (st({"a": t("U8", [64], 0, 64)}, 10), "data section has 10 bytes"),
    "bad_huge_header_length.safetensors": (st({}, 0, length=2**63), "exceeds the limit"),
    "bad_header_past_end.safetensors": (st({}, 0, length=4096), "runs past the end"),
    "bad_not_object.safetensors": (st(b"[1, 2, 3]", 0), "does not start with '{'"),
    "bad_json.safetensors": (st(b'{"a": {"dtype": "U8", "shape": [1]', 0), "invalid JSON"),
    "bad_unknown_dtype.safetensors": (st({"a": t("Q4_0", [2], 0, 2)}, 2), 'unknown dtype "Q4_0"'),
    "bad_overlap.safetensors": (st({"a": t("U8", [4], 0, 4), "b": t("U8", [4], 2, 6)}, 6), "overlap"),
    "bad_gap.safetensors": (st({"a": t("U8", [4], 0, 4), "b": t("U8", [4], 8, 12)}, 12), "gap"),
    "bad_shape_size.safetensors": (st({"a": t("F16", [3, 3], 0, 16)}, 16), "needs 18 bytes"),
    "bad_metadata_value.safetensors": (st({"__metadata__": {"n": 1}}, 0), "is not a string"),
    "bad_metadata_type.safetensors": (st({"__metadata__": ["x"]}, 0), "is not an object"),
    "bad_duplicate.safetensors": (
        st(b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
           b'"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}', 2), 'duplicate key "a"'),
    "bad_negative_dim.safetensors": (st({"a": t("U8", [-1], 0, 1)}, 1), "not a non-negative integer"),
    "bad_offsets_reversed.safetensors": (st({"a": t("U8", [0], 5, 1)}, 5), "end before they begin"),
    "bad_overflow.safetensors": (st({"a": t("F64", [2**40, 2**40], 0, 8)}, 8), "overflows"),
    "bad_tensor_not_object.safetensors": (st({"a": [1, 2]}, 0), "is not an object"),
}

INDEX_SEEDS = {
    "index_good.json": {"metadata": {"total_size": 10}, "weight_map": {"a": "model-00001-of-00002.safetensors",
                                                                       "b": "model-00002-of-00002.safetensors"}},
    "index_traversal.json": {"weight_map": {"a": "../../etc/passwd"}},
}


def main():
    os.makedirs(OUT, exist_ok=True)
    expected = {}
    for name, (data, want) in sorted(CASES.items()):
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)
        expected[name] = want
    with open(os.path.join(OUT, "EXPECTED.json"), "w") as f:
        json.dump(expected, f, indent=1, sort_keys=True)
        f.write("\n")
    index_dir = os.path.join(HERE, "index_corpus")
    os.makedirs(index_dir, exist_ok=True)
    for name, value in INDEX_SEEDS.items():
        with open(os.path.join(index_dir, name), "w") as f:
            json.dump(value, f)
    print(f"wrote {len(CASES)} safetensors cases and {len(INDEX_SEEDS)} index seeds", file=sys.stderr)


if __name__ == "__main__":
    main()
