"""Pure checks of the server's safety rules (no model, no sockets)."""

from __future__ import annotations

import pytest

from medgemma_toolkit.errors import BadInput
from medgemma_toolkit.serve.config import ServeConfig, host_allowed, is_loopback
from medgemma_toolkit.serve.errors import APIError
from medgemma_toolkit.serve.images import decode_data_uri
from medgemma_toolkit.serve.middleware import is_json, key_matches, route_label
from medgemma_toolkit.serve.schemas import ChatCompletionRequest, parse_body


@pytest.mark.parametrize(
    "host,expected",
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("192.168.1.5", False),
        ("example.org", False),
    ],
)
def test_loopback_detection(host, expected):
    assert is_loopback(host) is expected


@pytest.mark.parametrize(
    "header,extra,expected",
    [
        ("localhost:8000", (), True),
        ("127.0.0.1", (), True),
        ("[::1]:8000", (), True),
        ("LocalHost.", (), True),
        ("", (), True),  # HTTP/1.0 without Host: no browser sends that
        ("evil.example", (), False),
        ("evil.example:8000", (), False),
        ("localhost.evil.example", (), False),
        ("127.0.0.1.nip.io", (), False),
        ("[::ffff:8.8.8.8]:80", (), False),
        ("proxy.internal", ("proxy.internal",), True),
        ("proxy.internal:443", ("proxy.internal",), True),
        ("proxy.internal:443", ("proxy.internal:8443",), False),
        ("proxy.internal:8443", ("proxy.internal:8443",), True),
        ("anything.example", ("*",), True),
    ],
)
def test_host_allow_list(header, extra, expected):
    assert host_allowed(header, extra) is expected


@pytest.mark.parametrize(
    "ctype,expected",
    [
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ("Application/JSON", True),
        ("application/merge-patch+json", True),
        ("text/plain", False),
        ("application/x-www-form-urlencoded", False),
        ("multipart/form-data; boundary=x", False),
        ("", False),
        ("text/json", False),
    ],
)
def test_json_content_types(ctype, expected):
    assert is_json(ctype) is expected


def test_public_bind_needs_a_real_key():
    with pytest.raises(BadInput, match="refusing to bind"):
        ServeConfig(host="0.0.0.0").check()
    with pytest.raises(BadInput, match="at least 8"):
        ServeConfig(host="0.0.0.0", api_key="short").check()
    ServeConfig(host="0.0.0.0", api_key="long-enough-key").check()
    ServeConfig(host="127.0.0.1").check()


def test_key_compare():
    assert key_matches("s3cret-key", "s3cret-key")
    assert not key_matches("s3cret-kez", "s3cret-key") and not key_matches("", "s3cret-key")
    assert not key_matches("s3cret-key-and-more", "s3cret-key")
    assert not key_matches("ключ", "s3cret-key")  # non-ASCII input must not raise


def test_log_labels_never_echo_unknown_paths():
    assert route_label("/v1/chat/completions") == "/v1/chat/completions"
    assert route_label("/patients/Doe^Jane") == "<other>"
    assert route_label("/v1/models/anything") == "/v1/models/{id}"


def test_data_uri_parsing():
    assert decode_data_uri("data:image/png;base64,aGk=", "image 1") == (b"hi", "image 1.png")
    assert decode_data_uri("data:application/dicom;base64,aGk=", "image 2")[1] == "image 2.dcm"
    for bad, code in [
        ("data:image/png,hi", "invalid_image"),
        ("data:image/png;base64", "invalid_image"),
        ("data:image/png;base64,!!", "invalid_image"),
        ("data:text/html;base64,aGk=", "unsupported_image_type"),
    ]:
        with pytest.raises(APIError) as e:
            decode_data_uri(bad, "image 1")
        assert e.value.code == code


def test_request_schema():
    ok = parse_body(
        b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "stop": "", "user": "x"}',
        ChatCompletionRequest,
    )
    assert ok.stop_list == [] and ok.n == 1 and not ok.stream
    for raw, needle in [
        (b"{", "not valid JSON"),
        (b"[" * 100000, "nested more than 64 levels deep"),
        (b'"x"', "JSON object"),
        (b'{"model": "m", "messages": []}', "messages"),
        (b'{"model": "m", "messages": [{"role": "user", "content": 5}]}', "content"),
        (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "top_p": 0}', "top_p"),
    ]:
        with pytest.raises(APIError) as e:
            parse_body(raw, ChatCompletionRequest)
        assert e.value.status == 400 and needle in e.value.message
