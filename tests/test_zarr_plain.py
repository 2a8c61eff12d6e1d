"""zarr_plain.group_document: a manifest-sized group document, RawJSON values written verbatim, keys sorted below."""

from __future__ import annotations

import json

from bundle_pipeline.zarr_plain import RawJSON, group_document


def test_raw_values_are_written_verbatim_and_nested_keys_sorted():
    program = '{"a":1,"ops":["Relu","Conv"]}'
    doc = group_document({"format_version": 2, "name": "b", "graphs": [{"program": RawJSON(program), "name": "é"}]})
    assert doc.startswith(b'{"attributes":{"format_version":2,"name":"b",')  # guard.is_bundle reads these first
    assert program.encode() in doc and "é".encode() in doc  # verbatim, UTF-8 (not \\u escapes)
    parsed = json.loads(doc)
    assert parsed["attributes"]["graphs"] == [{"name": "é", "program": {"a": 1, "ops": ["Relu", "Conv"]}}]
    assert list(parsed) == ["attributes", "zarr_format", "node_type"]
    assert doc.index(b'"name":"\xc3\xa9"') < doc.index(b'"program"')  # sorted below the top level


def test_values_orjson_refuses_take_json_and_mean_the_same():
    """An int beyond 64 bits or a non-string key: the document is written by json, with the same meaning."""
    attributes = {"format_version": 2, "big": 1 << 70, "keyed": {3: "x"}, "program": RawJSON('{"k":[1]}')}
    parsed = json.loads(group_document(attributes))["attributes"]
    assert parsed == {"format_version": 2, "big": 1 << 70, "keyed": {"3": "x"}, "program": {"k": [1]}}


def test_the_same_attributes_give_the_same_bytes():
    def attributes():
        return {"format_version": 2, "options": {"z": 1e-05, "a": [0.5, "s"]}, "p": RawJSON("[1,2]")}

    assert group_document(attributes()) == group_document(attributes())


def test_raw_values_may_be_the_stored_utf8_bytes():
    """Pack hands over a program as the cache holds it (bytes); both encoders write it as the str would be."""
    text = '{"name":"é","ops":[1]}'
    as_str = group_document({"format_version": 2, "p": RawJSON(text)})
    assert group_document({"format_version": 2, "p": RawJSON(text.encode())}) == as_str
    fallback = {"format_version": 2, "big": 1 << 70, "p": RawJSON(text.encode())}  # through json
    assert json.loads(group_document(fallback))["attributes"]["p"] == {"name": "é", "ops": [1]}
